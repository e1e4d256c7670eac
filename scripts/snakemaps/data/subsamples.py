"""Torch data sets of sub-samples: the parts of cached images, cut per batch.

``SubSamples`` wraps ``CachedImages`` (``snakemaps.data.dataset``) and an
``Extraction`` (``snakemaps.data.extraction``): nothing is stored per part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .extraction import Extraction, load_mask


class SubSamples:
    """The parts of every image of a ``CachedImages``: one sample per (image, part).

    Sample ``i`` is part ``i % n`` of image ``i // n`` (ClinicaDL's order), with
    ``n`` parts per image, or only part ``part`` of each image. ``frame`` has
    one row per sample with its ``<mode>_id``; ``batch(indices)`` cuts a whole
    batch at once. ``id_channel`` appends a constant channel holding the part
    number, which a multicnn network reads to pick the part's own network.
    """

    def __init__(
        self,
        images: Any,
        extraction: Extraction,
        part: int | None = None,
        id_channel: bool = False,
    ) -> None:
        import torch

        self.source, self.extraction, self.id_channel = images, extraction, id_channel
        parts = list(range(extraction.n_parts)) if part is None else [part]
        n_images = len(images)
        self.image_index = np.repeat(np.arange(n_images), len(parts))
        self.part_index = np.tile(np.asarray(parts, dtype=int), n_images)
        ids = np.asarray(extraction.part_ids())[self.part_index]
        frame = images.frame.iloc[self.image_index].reset_index(drop=True)
        frame.insert(2, extraction.id_column, ids)
        self.frame, self.classes = frame, images.classes
        self.labels = images.labels[torch.from_numpy(self.image_index)]
        self.images = None  # no whole-tensor fast path: parts are cut per batch
        self.masks = None
        if extraction.mode == "roi" and any(r.mask for r in extraction.regions):
            self.masks = [
                None
                if r.mask is None
                else torch.from_numpy(load_mask(r.mask, f"data.roi_masks.{r.name}")[None]).to(
                    images.images.dtype if images.images is not None else torch.float32
                )
                for r in extraction.regions
            ]

    def __len__(self) -> int:
        return len(self.image_index)

    def _image(self, index: int) -> Any:
        if self.source.images is not None:
            return self.source.images[index]
        # Memory-mapped: only the part's voxels are read from the cache.
        return np.load(self.source.frame["tensor"].iloc[index], mmap_mode="r")

    def sample(self, i: int) -> Any:
        import torch

        part = int(self.part_index[i])
        image = self._image(int(self.image_index[i]))
        if isinstance(image, np.ndarray) and self.masks is not None:
            image = torch.from_numpy(np.array(image))
        cut = self.extraction.cut(image, part, self.masks)
        if isinstance(cut, np.ndarray):
            cut = torch.from_numpy(np.array(cut, dtype=np.float32))
        if self.id_channel:
            cut = torch.cat([cut, torch.full_like(cut[:1], float(part))])
        return cut

    def batch(self, indices: Sequence[int]) -> tuple[Any, Any]:
        import torch

        indices = list(indices)
        if self.source.images is None or self.extraction.mode == "roi":
            return torch.stack([self.sample(int(i)) for i in indices]), self.labels[indices]
        # In memory: one gather for the whole batch (patches from an unfold view, no copy).
        images = torch.from_numpy(self.image_index[indices])
        parts = torch.from_numpy(self.part_index[indices])
        extraction = self.extraction
        if extraction.mode == "patch":
            L, S = extraction.patch_size, extraction.stride_size
            _, ny, nz = extraction.grid
            view = self.source.images.unfold(2, L, S).unfold(3, L, S).unfold(4, L, S)
            cut = view[images, :, parts // (ny * nz), (parts // nz) % ny, parts % nz]
        else:
            position = parts + extraction.discarded_slices[0]
            index: list[Any] = [images, slice(None), slice(None), slice(None), slice(None)]
            index[2 + extraction.slice_direction] = position
            cut = self.source.images[tuple(index)]  # (N, C, H, W)
            if extraction.slice_mode == "rgb":
                cut = cut.repeat(1, 3, 1, 1)
        if self.id_channel:
            ids = parts.to(cut.dtype).view(-1, 1, *([1] * (cut.dim() - 2)))
            cut = torch.cat([cut, ids.expand(-1, 1, *cut.shape[2:])], dim=1)
        return cut.contiguous(), self.labels[indices]

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        return self.sample(int(i)), self.labels[i], int(i)


def dataset(
    frame: Any,
    classes: Sequence[str] | None,
    extraction: Extraction | None,
    network_type: str = "cnn",
) -> Any:
    """The torch data set of ``frame``: whole images, or their parts."""
    from .dataset import CachedImages

    images = CachedImages(frame, classes)
    if extraction is None or extraction.mode == "image":
        return images
    return SubSamples(images, extraction, id_channel=network_type == "multicnn")
