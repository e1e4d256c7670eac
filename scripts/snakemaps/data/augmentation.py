"""Data augmentation of training samples: ClinicaDL's ``data_augmentation`` names.

The names and parameters are ClinicaDL 1.6's (``get_transforms`` in
``clinicadl/utils/caps_dataset/data.py``):

- ``Noise``: add N(0, sigma) noise, sigma ~ U(0, 0.1) per sample.
- ``Erasing``: torchvision's ``RandomErasing()`` with its defaults (p 0.5, area
  0.02-0.33 of the last two axes, aspect ratio 0.3-3.3, value 0), written here
  after torchvision's algorithm (torchvision is not a dependency): the
  rectangle is cut through every leading axis, as torchvision does on a 3D
  tensor.
- ``CropPad``: a random integer shift in [-10, 10) along each spatial axis
  (``pad(-c, +c)``: a translation that keeps the size).
- ``Smoothing``: scipy's ``gaussian_filter`` with sigma ~ U(0, 1).
- TorchIO's ``Motion`` (RandomMotion degrees (2, 4), translation (2, 4), 2
  transforms), ``Ghosting`` (RandomGhosting num_ghosts (4, 10)), ``Spike``
  (RandomSpike 1 spike, intensity (1, 3)), ``BiasField`` (RandomBiasField
  coefficients 0.5), ``RandomBlur`` (std (0, 2)), ``RandomSwap`` (patch 15,
  100 iterations; the patch is cut to half the sample's size when larger).

They apply in the order given, to training samples only. A sample is a
tensor ``(channels, *spatial)`` with 2 (slices) or 3 spatial axes (images,
patches, ROIs); TorchIO gets a 2D sample with a depth of 1.

Every sample's draw is seeded from (seed, rank, epoch, position of the sample
in the epoch), inside a forked random state: the same sample at the same
place gets the same augmentation whatever ran before it, on any worker, and a
resumed run redraws exactly what the unbroken run drew. The global random
states (dropout) are left as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UserError

# ClinicaDL's names, with the parameters recorded in dataset.json.
TRANSFORMS: dict[str, dict[str, Any]] = {
    "Noise": {"sigma": 0.1},
    "Erasing": {"p": 0.5, "scale": [0.02, 0.33], "ratio": [0.3, 3.3], "value": 0.0},
    "CropPad": {"length": 10},
    "Smoothing": {"sigma": 1.0},
    "Motion": {"degrees": [2, 4], "translation": [2, 4], "num_transforms": 2},
    "Ghosting": {"num_ghosts": [4, 10]},
    "Spike": {"num_spikes": 1, "intensity": [1, 3]},
    "BiasField": {"coefficients": 0.5},
    "RandomBlur": {"std": [0, 2]},
    "RandomSwap": {"patch_size": 15, "num_iterations": 100},
}
TORCHIO = {
    "Motion": "RandomMotion",
    "Ghosting": "RandomGhosting",
    "Spike": "RandomSpike",
    "BiasField": "RandomBiasField",
    "RandomBlur": "RandomBlur",
    "RandomSwap": "RandomSwap",
}


def check_names(names: Sequence[str], key: str = "train.data_augmentation") -> list[str]:
    """The names, or a UserError naming the unknown ones and listing the known ones."""
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown:
        raise UserError(
            f"{key}: unknown augmentation {', '.join(map(repr, unknown))}; the known ones are "
            f"{', '.join(TRANSFORMS)} (ClinicaDL's names, case-sensitive)"
        )
    duplicated = sorted({name for name in names if list(names).count(name) > 1})
    if duplicated:
        raise UserError(f"{key}: {', '.join(duplicated)} listed twice; list each name once")
    return list(names)


def describe(names: Sequence[str]) -> list[dict[str, Any]]:
    """What dataset.json records under transforms.augmentations."""
    return [
        {
            "name": name,
            "library": "torchio" if name in TORCHIO else "snakemaps",
            **({"class": f"torchio.{TORCHIO[name]}"} if name in TORCHIO else {}),
            **TRANSFORMS[name],
        }
        for name in check_names(names)
    ]


def sample_seed(seed: int, rank: int, epoch: int, position: int) -> int:
    """The seed of one sample's draw (a 63-bit integer)."""
    sequence = np.random.SeedSequence([seed % 2**63, rank, epoch, position])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class Augmentation:
    """The augmentations ``names`` of one run, applied sample by sample.

    ``augmentation(images, epoch, positions)`` returns the augmented batch:
    ``images`` is ``(batch, channels, *spatial)``, ``positions`` the place of
    each sample in the epoch's order.
    """

    def __init__(
        self, names: Sequence[str], seed: int, rank: int = 0, keep_last_channel: bool = False
    ) -> None:
        self.names, self.seed, self.rank = check_names(names), seed, rank
        # multicnn: the last channel holds the sample's part index, not image data.
        self.keep_last_channel = keep_last_channel
        self._torchio: dict[str, Any] = {}

    def __bool__(self) -> bool:
        return bool(self.names)

    def __call__(self, images: Any, epoch: int, positions: Sequence[int]) -> Any:
        import torch

        samples = [
            self.one(image, epoch, position)
            for image, position in zip(images, positions, strict=True)
        ]
        return torch.stack(samples).to(images.dtype)

    def one(self, image: Any, epoch: int, position: int) -> Any:
        """One sample, at ``position`` of ``epoch``'s order, augmented."""
        seed = sample_seed(self.seed, self.rank, epoch, position)
        if self.keep_last_channel:
            import torch

            augmented = self.sample(image[:-1], seed)
            return torch.cat([augmented.to(image.dtype), image[-1:]])
        return self.sample(image, seed)

    def sample(self, image: Any, seed: int) -> Any:
        """One sample ``(channels, *spatial)`` augmented with the draw of ``seed``."""
        import random

        import torch

        python, numpy = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                generator = torch.Generator().manual_seed(seed)
                out = image.float()
                for name in self.names:
                    out = self._apply(name, out, generator)
        finally:
            random.setstate(python)
            np.random.set_state(numpy)
        return out

    def _apply(self, name: str, image: Any, generator: Any) -> Any:
        import torch

        spatial = image.dim() - 1
        if spatial not in (2, 3):
            raise ValueError(f"augmentation {name}: a sample must be 2D or 3D, got {spatial}D")
        if name == "Noise":
            sigma = float(torch.rand((), generator=generator)) * TRANSFORMS[name]["sigma"]
            return image + torch.randn(image.shape, generator=generator) * sigma
        if name == "Erasing":
            return _erase(image, generator)
        if name == "CropPad":
            length = TRANSFORMS[name]["length"]
            crop = torch.randint(-length, length, (spatial,), generator=generator).tolist()
            pads = [p for c in crop for p in (-c, c)]
            return torch.nn.functional.pad(image, pads)
        if name == "Smoothing":
            from scipy.ndimage import gaussian_filter

            sigma = float(torch.rand((), generator=generator)) * TRANSFORMS[name]["sigma"]
            return torch.from_numpy(gaussian_filter(image.numpy(), sigma)).float()
        return self._torchio_apply(name, image)

    def _torchio_apply(self, name: str, image: Any) -> Any:
        flat = image.dim() == 3  # a 2D slice (channels, H, W): TorchIO wants a depth
        volume = image.unsqueeze(-1) if flat else image
        transform = self._torchio_transform(name, tuple(volume.shape[1:]))
        return transform(volume.contiguous()).squeeze(-1) if flat else transform(volume)

    def _torchio_transform(self, name: str, shape: tuple[int, ...]) -> Any:
        key = f"{name}{shape}"
        if key not in self._torchio:
            import torchio as tio

            options = dict(TRANSFORMS[name])
            if name == "RandomSwap":
                # At most half of each axis, so that two patches that do not overlap fit.
                size = options["patch_size"]
                options["patch_size"] = tuple(max(1, min(size, s // 2)) for s in shape)
            for option in ("degrees", "translation", "num_ghosts", "intensity", "std"):
                if isinstance(options.get(option), list):
                    options[option] = tuple(options[option])
            self._torchio[key] = getattr(tio, TORCHIO[name])(**options)
        return self._torchio[key]


def _erase(image: Any, generator: Any) -> Any:
    """torchvision's RandomErasing with its defaults, on the last two axes."""
    import math

    import torch

    options = TRANSFORMS["Erasing"]
    if float(torch.rand((), generator=generator)) >= options["p"]:
        return image
    height, width = image.shape[-2:]
    area = height * width
    log_ratio = torch.log(torch.tensor(options["ratio"]))
    for _ in range(10):
        erase_area = area * float(torch.empty(1).uniform_(*options["scale"], generator=generator))
        ratio = math.exp(float(torch.empty(1).uniform_(*log_ratio.tolist(), generator=generator)))
        h = round(math.sqrt(erase_area * ratio))
        w = round(math.sqrt(erase_area / ratio))
        if h < height and w < width:
            i = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            j = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            out = image.clone()
            out[..., i : i + h, j : j + w] = options["value"]
            return out
    return image
