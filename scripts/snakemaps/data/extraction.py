"""ClinicaDL's modes: image, patch, slice and roi sub-samples cut on the fly from the tensor cache.

An ``Extraction`` says how each cached image ``(1, X, Y, Z)`` is cut into
parts, with ClinicaDL 1.x's definitions (clinicadl 1.6.1
``prepare_data/prepare_data_utils.py`` and ``utils/caps_dataset/data.py``):

- ``image``: one part, the image itself (``image_id`` 0).
- ``patch``: cubes of ``patch_size`` every ``stride_size`` voxels, as
  ``tensor.unfold`` cuts them: ``floor((D - L) / S) + 1`` per axis, flat
  index ``(ix * ny + iy) * nz + iz`` (``patch_id``).
- ``slice``: 2D slices along ``slice_direction`` (0 sagittal, 1 coronal,
  2 axial), without the first and last ``discarded_slices``; ``slice_id`` is
  the slice's position in the volume; ``rgb`` repeats the slice on 3 channels.
- ``roi``: regions of interest (``roi_id`` = index in ``roi_list``): the
  image times a binary mask, cropped to the mask's bounding box. Without
  masks, the two hippocampus boxes of ClinicaDL's default roi (50 mm cubes
  around each hippocampus, right then left) are placed in the images' MNI
  space through their affine.

Nothing is written per part: ``snakemaps.data.subsamples.SubSamples`` cuts
the parts of a batch from the images ``CachedImages`` holds (in memory, or memory-mapped from the
cache), so memory stays that of the cache, not parts x images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

MODES = ("image", "patch", "roi", "slice")
DIRECTIONS = {0: "sagittal", 1: "coronal", 2: "axial"}
# ClinicaDL's default roi: a 50 mm box around each hippocampus, roi_id 0 right, 1 left.
# Centres are the hippocampi of the MNI152NLin2009cSym template (mm): ClinicaDL 0.2 cut
# them at voxels (109, 96, 68) and (61, 96, 68) of the 1 mm cropped t1-linear image,
# 48 mm apart, on either side of the midline.
HIPPOCAMPUS_BOXES = {
    "rightHippocampusBox": (25.0, -20.0, -15.0),
    "leftHippocampusBox": (-25.0, -20.0, -15.0),
}
BOX_SIDE_MM = 50.0
MODE_KEYS = (
    "mode",
    "patch_size",
    "stride_size",
    "slice_direction",
    "slice_mode",
    "discarded_slices",
    "roi_list",
    "roi_masks",
    "uncropped_roi",
    "selection_threshold",
)


@dataclasses.dataclass(frozen=True)
class Region:
    """One roi: a voxel box ``(start, stop)`` per axis, and optionally a mask file."""

    name: str
    box: tuple[tuple[int, int], ...]
    mask: str | None = None


@dataclasses.dataclass(frozen=True)
class Extraction:
    """How each image ``(C, X, Y, Z)`` of ``image_shape`` is cut into parts."""

    mode: str
    image_shape: tuple[int, ...]  # (C, X, Y, Z)
    patch_size: int = 50
    stride_size: int = 50
    slice_direction: int = 0
    slice_mode: str = "rgb"
    discarded_slices: tuple[int, int] = (0, 0)
    regions: tuple[Region, ...] = ()
    uncropped_roi: bool = False

    # Counts and shapes ---------------------------------------------------------
    @property
    def id_column(self) -> str:
        return f"{self.mode}_id"

    @property
    def grid(self) -> tuple[int, int, int]:
        """Patches per axis (patch mode)."""
        return tuple(
            (size - self.patch_size) // self.stride_size + 1 for size in self.image_shape[1:]
        )

    @property
    def n_parts(self) -> int:
        if self.mode == "patch":
            return int(np.prod(self.grid))
        if self.mode == "slice":
            begin, end = self.discarded_slices
            return self.image_shape[1 + self.slice_direction] - begin - end
        if self.mode == "roi":
            return len(self.regions)
        return 1

    def part_ids(self) -> list[int]:
        """The id of each part, as ClinicaDL names them (slices: their position)."""
        if self.mode == "slice":
            return [self.discarded_slices[0] + k for k in range(self.n_parts)]
        return list(range(self.n_parts))

    @property
    def part_shape(self) -> tuple[int, ...]:
        """The shape of one part, channel first; every part of a mode has the same."""
        channels, *spatial = self.image_shape
        if self.mode == "patch":
            return (channels, *(self.patch_size,) * 3)
        if self.mode == "slice":
            kept = [s for axis, s in enumerate(spatial) if axis != self.slice_direction]
            return (3 if self.slice_mode == "rgb" else channels, *kept)
        if self.mode == "roi":
            sizes = {self._roi_shape(r) for r in self.regions}
            if len(sizes) > 1:
                raise UserError(
                    f"data.roi_list: the regions have different sizes {sorted(sizes)}; one "
                    "network needs one input size: give masks whose bounding boxes match, or "
                    "set data.uncropped_roi: true"
                )
            return (channels, *next(iter(sizes)))
        return tuple(self.image_shape)

    def _roi_shape(self, region: Region) -> tuple[int, ...]:
        if self.uncropped_roi:
            return tuple(self.image_shape[1:])
        return tuple(stop - start for start, stop in region.box)

    @property
    def dimension(self) -> int:
        """2 for slices (2D networks), 3 otherwise."""
        return 2 if self.mode == "slice" else 3

    # Cutting ---------------------------------------------------------------------
    def cut(self, image: Any, part: int, masks: Sequence[Any] | None = None) -> Any:
        """Part number ``part`` (0 .. n_parts-1) of one image ``(C, X, Y, Z)`` (tensor or array)."""
        if self.mode == "patch":
            _nx, ny, nz = self.grid
            ix, rest = divmod(part, ny * nz)
            iy, iz = divmod(rest, nz)
            L, S = self.patch_size, self.stride_size
            return image[:, ix * S : ix * S + L, iy * S : iy * S + L, iz * S : iz * S + L]
        if self.mode == "slice":
            position = self.discarded_slices[0] + part
            index = [slice(None)] * 4
            index[1 + self.slice_direction] = position
            cut = image[tuple(index)]
            if self.slice_mode == "rgb":
                cut = (
                    np.repeat(cut, 3, axis=0)
                    if isinstance(cut, np.ndarray)
                    else cut.repeat(3, 1, 1)
                )
            return cut
        if self.mode == "roi":
            region = self.regions[part]
            if masks is not None and masks[part] is not None:
                image = image * masks[part]
            if self.uncropped_roi:
                return image
            (x0, x1), (y0, y1), (z0, z1) = region.box
            return image[:, x0:x1, y0:y1, z0:z1]
        return image

    def describe(self) -> dict[str, Any]:
        """The extraction block of ``dataset.json`` (ClinicaDL 2.0's names, 1.x's beside them)."""
        block: dict[str, Any] = {
            "name_": f"{self.mode.capitalize()}Config" if self.mode != "roi" else "ROIConfig",
            "extract_method": self.mode,
            "n_parts": self.n_parts,
            "part_shape": list(self.part_shape),
            "id_column": self.id_column,
        }
        if self.mode == "patch":
            block |= {
                "patch_size": self.patch_size,
                "stride_size": self.stride_size,
                "stride": [self.stride_size] * 3,
                "grid": list(self.grid),
            }
        elif self.mode == "slice":
            begin, end = self.discarded_slices
            block |= {
                "slice_direction": self.slice_direction,
                "slice_mode": self.slice_mode,
                "discarded_slices": [begin, end],
                "borders": [begin, end],
                "slices": self.part_ids(),
                "squeeze": True,
            }
        elif self.mode == "roi":
            block |= {
                "roi_list": [r.name for r in self.regions],
                "masks": [r.mask for r in self.regions],
                "boxes": [[list(axis) for axis in r.box] for r in self.regions],
                "crop": not self.uncropped_roi,
                "uncropped_roi": self.uncropped_roi,
            }
        return block


def _as_pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    values = list(value)
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise UserError(
        f"data.discarded_slices: give one number or two (begin, end), got {list(values)}"
    )


def check_mode_settings(modes: Mapping[str, Any]) -> None:
    """Checks that need no image: mode and network type agree (UserError names the key).

    ``modes`` is what ``settings(config)`` returns.
    """
    mode = modes.get("mode", "image")
    if mode not in MODES:
        raise UserError(f"data.mode: unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if modes.get("network_type", "cnn") == "multicnn" and mode not in ("patch", "roi", "slice"):
        raise UserError(
            "model.network_type: multicnn trains one network per patch, slice or roi, but "
            f"data.mode is {mode!r}; set data.mode to patch, roi or slice, or use cnn"
        )


def check_config(config: Mapping[str, Any]) -> None:
    """What an experiment config's mode keys must satisfy before any job runs."""
    modes = settings(config)
    check_mode_settings(modes)
    mode = modes.get("mode", "image")
    distributed = config.get("train", {}).get("distributed", {})
    ranks = distributed.get("processes", 1) * distributed.get("nodes", 1)
    if modes["network_type"] == "multicnn" and ranks > 1:
        raise UserError(
            "model.network_type: multicnn routes each sample to its part's network, which "
            "DistributedDataParallel cannot synchronise (networks without a sample in a batch); "
            "set train.distributed.processes and nodes to 1, or use cnn"
        )
    if modes["network_type"] == "autoencoder" and mode != "image":
        raise UserError(
            "model.network_type: autoencoder reconstructs whole images (its decoder mirrors the "
            f"3D convolutions), but data.mode is {mode!r}; set data.mode: image, or use cnn"
        )
    interpret = config.get("interpret", {})
    if mode != "image" and interpret.get("enabled"):
        raise UserError(
            f"interpret.enabled: saliency maps are written in the image's space, data.mode is "
            f"{mode!r}; set interpret.enabled: false or data.mode: image"
        )


def from_config(
    data: Mapping[str, Any],
    image_shape: Sequence[int],
    affine: Sequence[Sequence[float]] | None = None,
) -> Extraction:
    """The extraction ``data`` asks for on images of ``image_shape`` ``(C, X, Y, Z)``.

    Raises UserError, naming the key, when the parts do not fit the images.
    """
    mode = data.get("mode", "image")
    if mode not in MODES:
        raise UserError(f"data.mode: unknown mode {mode!r}; use one of {', '.join(MODES)}")
    shape = tuple(int(s) for s in image_shape)
    spatial = shape[1:]
    if mode == "image":
        return Extraction("image", shape)
    if mode == "patch":
        size, stride = int(data.get("patch_size", 50)), int(data.get("stride_size", 50))
        if size > min(spatial):
            raise UserError(
                f"data.patch_size: {size} is larger than the images ({' x '.join(map(str, spatial))}"
                " voxels); choose a patch_size of at most "
                f"{min(spatial)}"
            )
        return Extraction("patch", shape, patch_size=size, stride_size=stride)
    if mode == "slice":
        direction = int(data.get("slice_direction", 0))
        if direction not in DIRECTIONS:
            raise UserError(
                f"data.slice_direction: {direction} is out of range; use 0 (sagittal), "
                "1 (coronal) or 2 (axial)"
            )
        slice_mode = data.get("slice_mode", "rgb")
        if slice_mode not in ("rgb", "single"):
            raise UserError(f"data.slice_mode: {slice_mode!r}; use rgb or single")
        begin, end = _as_pair(data.get("discarded_slices", 0))
        length = spatial[direction]
        if begin < 0 or end < 0 or begin + end >= length:
            raise UserError(
                f"data.discarded_slices: discarding {begin} + {end} slices leaves none of the "
                f"{length} along slice_direction {direction}; discard fewer"
            )
        return Extraction(
            "slice",
            shape,
            slice_direction=direction,
            slice_mode=slice_mode,
            discarded_slices=(begin, end),
        )
    return Extraction(
        "roi",
        shape,
        regions=tuple(_regions(data, spatial, affine)),
        uncropped_roi=bool(data.get("uncropped_roi", False)),
    )


def _regions(
    data: Mapping[str, Any], spatial: Sequence[int], affine: Sequence[Sequence[float]] | None
) -> list[Region]:
    masks: Mapping[str, str] = data.get("roi_masks") or {}
    names = list(data.get("roi_list") or (list(masks) if masks else list(HIPPOCAMPUS_BOXES)))
    regions = []
    for name in names:
        if name in masks:
            regions.append(_mask_region(name, masks[name], spatial))
        elif name in HIPPOCAMPUS_BOXES:
            regions.append(_box_region(name, spatial, affine))
        else:
            raise UserError(
                f"data.roi_list: no mask for region {name!r}; give its mask file in "
                f"data.roi_masks ({name}: /path/to/mask.nii.gz), or use the default regions "
                f"{', '.join(HIPPOCAMPUS_BOXES)}"
            )
    if not regions:
        raise UserError("data.roi_list: empty; give at least one region, or null for the default")
    return regions


def _box_region(
    name: str, spatial: Sequence[int], affine: Sequence[Sequence[float]] | None
) -> Region:
    if affine is None:
        raise UserError(
            f"data.roi_list: the default region {name} is placed in MNI space through the images' "
            "affine, but the images are not NIfTI (no affine); give NIfTI images registered to "
            "MNI space, or masks in data.roi_masks"
        )
    matrix = np.asarray(affine, dtype=float)
    centre = np.linalg.solve(matrix, [*HIPPOCAMPUS_BOXES[name], 1.0])[:3]
    voxel_mm = np.linalg.norm(matrix[:3, :3], axis=0)
    box = []
    for axis, size in enumerate(spatial):
        side = max(1, round(BOX_SIDE_MM / voxel_mm[axis]))
        start = math.floor(centre[axis] - side / 2 + 0.5)
        start = min(max(start, 0), max(size - side, 0))
        box.append((start, min(start + side, size)))
    return Region(name, tuple(box))


def _mask_region(name: str, path: str, spatial: Sequence[int]) -> Region:
    mask = load_mask(path, f"data.roi_masks.{name}")
    if tuple(mask.shape) != tuple(spatial):
        raise UserError(
            f"data.roi_masks.{name}: {path} has shape {mask.shape} but the images have "
            f"{tuple(spatial)}; give a mask on the images' grid"
        )
    if not mask.any():
        raise UserError(f"data.roi_masks.{name}: {path} is empty (no voxel is 1)")
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append((int(present[0]), int(present[-1]) + 1))
    return Region(name, tuple(box), str(Path(path).resolve()))


def load_mask(path: str | Path, key: str) -> np.ndarray:
    """A binary mask (0/1) from a NIfTI or .npy file; UserError naming ``key`` otherwise."""
    from .prepare import load_image

    try:
        mask = load_image(path)
    except UserError as error:
        raise UserError(f"{key}: {error}") from None
    if not np.isin(mask, (0, 1)).all():
        raise UserError(f"{key}: {path} is not a binary mask (values other than 0 and 1)")
    return mask.astype(bool)


def from_description(block: Mapping[str, Any], image_shape: Sequence[int]) -> Extraction:
    """The extraction a ``dataset.json`` block records (see ``Extraction.describe``)."""
    mode = block["extract_method"]
    shape = tuple(int(s) for s in image_shape)
    if mode == "patch":
        return Extraction("patch", shape, block["patch_size"], block["stride_size"])
    if mode == "slice":
        return Extraction(
            "slice",
            shape,
            slice_direction=block["slice_direction"],
            slice_mode=block["slice_mode"],
            discarded_slices=tuple(block["discarded_slices"]),
        )
    if mode == "roi":
        regions = tuple(
            Region(name, tuple(tuple(axis) for axis in box), mask)
            for name, box, mask in zip(block["roi_list"], block["boxes"], block["masks"])
        )
        return Extraction("roi", shape, regions=regions, uncropped_roi=block["uncropped_roi"])
    return Extraction("image", shape)


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The mode keys of an experiment config (``data.<key>`` and ``model.network_type``)."""
    data, model = config.get("data", {}), config.get("model", {})
    found = {key: data[key] for key in MODE_KEYS if key in data}
    found["network_type"] = model.get("network_type", "cnn")
    return found


def plan(modes: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """What ``dataset.json`` records of the modes, for the cache ``info`` (its ``manifest.json``).

    Raises UserError (naming the key) when the parts do not fit the images.
    """
    check_mode_settings(modes)
    shape = list(info["shape"])
    affine = None
    if modes.get("mode") == "roi":
        affines = list((info.get("affines") or {}).values())
        if affines and all(a is not None for a in affines):
            first = np.asarray(affines[0])
            if any(not np.allclose(first, a, atol=1e-3) for a in affines):
                raise UserError(
                    "data.mode roi: the images do not share one affine, so one box cannot be "
                    "placed in all of them; register them to one grid (t1-linear does)"
                )
            affine = first.tolist()
    extraction = from_config(modes, shape, affine)
    return {
        "extraction": extraction.describe(),
        "image_shape": shape,
        "network_type": modes.get("network_type", "cnn"),
        "voting": {
            "method": "soft",
            "weights": "BalancedAccuracy",
            "selection_threshold": float(modes.get("selection_threshold") or 0.0),
        },
    }


def recorded(maps_dir: str | Path) -> tuple[Extraction, dict[str, Any]]:
    """The extraction a MAPS's training data records, and that record.

    A MAPS written before modes existed records none: image mode.
    """
    from .. import io
    from ..maps import Maps

    path = Maps(maps_dir).training.data.train.splits[0].dataset_json
    block = io.read_json(path) if path.exists() else {}
    if "extraction" not in block:
        return Extraction("image", tuple(block.get("image_shape") or ())), {
            "network_type": "cnn",
            "voting": {"selection_threshold": 0.0},
        }
    return from_description(block["extraction"], block["image_shape"]), block
