"""The report figure of ``interpret``: class-average saliency maps over the mean image.

One row per method and class (every image for a regression): the mean of
that class's input images in grey, the class-average map of the method in
colour on top (inside the brain, where the mean image is above
``BRAIN_LEVEL``), in three orthogonal slices through the map's peak. Reads
the NIfTI maps and the tensor cache (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import io
from ..errors import UserError
from ..interpret import method_dir
from ..maps import Maps
from . import _new_figure, _save_figure, model_description

METHOD_LABELS = {"gradients": "gradients (|∂ score / ∂ input|)", "grad-cam": "Grad-CAM"}
VIEWS = (("sagittal", 0), ("coronal", 1), ("axial", 2))
# Map values below this share of the map's 99.5th percentile are left transparent.
SHOWN_FROM = 0.25
# The brain: where the class's mean image (min-max normalised tensors) is above this.
BRAIN_LEVEL = 0.05


def _peak(volume: np.ndarray) -> tuple[int, int, int]:
    """The voxel where the smoothed map is highest (robust to single noisy voxels)."""
    from scipy import ndimage

    smoothed = ndimage.gaussian_filter(volume, sigma=1.0)
    return tuple(int(i) for i in np.unravel_index(np.argmax(smoothed), volume.shape))


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    # Transposed, shown with origin="lower": the second remaining axis points up.
    return np.take(volume, index, axis=axis).T


def _mean_images(folder: Path, maps: Maps, group: str, labels: Sequence[str]) -> dict:
    """The mean input image of each class (key None: every image), from the tensor cache."""
    from ..data.prepare import read_manifest

    details = io.read_tsv(folder / "details.tsv")
    manifest = io.read_json(maps.test_group(group).dataset_json)["cache_manifest"]
    frame = read_manifest(manifest).set_index(["participant_id", "session_id"])
    images = {}
    for label in [None, *labels]:
        rows = details if label is None else details[details["label"].astype(str) == label]
        tensors = frame.loc[list(zip(rows["participant_id"], rows["session_id"])), "tensor"]
        images[label] = np.mean([np.load(t)[0] for t in tensors], axis=0)
    return images


def interpretation_figure(
    maps_dir: str | Path,
    group: str,
    split: int,
    model: str,
    methods: Sequence[str],
    out: str | Path,
) -> Path:
    """Class-average maps of each method on the mean image of the class, for one model."""
    import nibabel as nib

    maps = Maps(maps_dir)
    result = maps.test_group(group).results.splits[split].models[model]
    panels = []
    for method in methods:
        folder = result.path / method_dir(method)
        info_path = folder / "interpretation.json"
        if not info_path.is_file():
            raise UserError(f"missing {info_path}: run rule interpret first")
        info = io.read_json(info_path)
        labels = list(info["n_images_per_class"])
        means = _mean_images(folder, maps, group, labels)
        for label in labels or [None]:
            name = info["mean_maps"]["all" if label is None else label]
            image = nib.load(str(folder / name.replace(".pt", ".nii.gz")))
            count = info["n_images"] if label is None else info["n_images_per_class"][label]
            volume = np.asarray(image.get_fdata())
            panels.append((method, label, count, volume, image.affine, means[label]))

    fig = _new_figure(11.0, 2.9 * len(panels) + 0.9)
    axes = np.atleast_2d(fig.subplots(len(panels), 3))
    for row, (method, label, count, volume, affine, mean) in zip(axes, panels):
        brain = mean > BRAIN_LEVEL
        if brain.any():
            volume = np.where(brain, volume, 0.0)
        peak = _peak(volume)
        top = float(np.percentile(volume[brain], 99.5)) if brain.any() else 0.0
        top = top or float(volume.max()) or 1.0
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        world = affine[:3, :3] @ np.array(peak) + affine[:3, 3]
        for ax, (view, axis) in zip(row, VIEWS):
            rest = [a for a in range(3) if a != axis]
            shown = np.ma.masked_less(_slice(volume, axis, peak[axis]) / top, SHOWN_FROM)
            ax.imshow(_slice(mean, axis, peak[axis]), cmap="gray", origin="lower")
            overlay = ax.imshow(
                shown,
                cmap="hot",
                vmin=0,
                vmax=1,
                alpha=0.75,
                origin="lower",
                interpolation="nearest",
            )
            ax.set_aspect(zooms[rest[1]] / zooms[rest[0]])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{view}, {'xyz'[axis]} = {world[axis]:.0f} mm", fontsize=9)
        who = "every image" if label is None else f"class {label}"
        row[0].set_ylabel(f"{METHOD_LABELS.get(method, method)}\n{who} (n = {count})", fontsize=9)
        fig.colorbar(overlay, ax=list(row), shrink=0.8, label="map / its 99.5th percentile")
    fig.suptitle(
        f"Class-average saliency maps on the mean image: test group '{group}', split {split}, "
        f"model {model_description(model)}\nMAPS {maps.path}",
        fontsize=11,
    )
    return _save_figure(fig, out)
