"""Report figure of an autoencoder: input and reconstruction slices of a test image.

Unlike the other figures (``snakemaps.report``), this one runs the model: it
loads each split's saved model, reconstructs the first image of the test
group, and draws the middle sagittal, coronal and axial slices of the input,
of the reconstruction and of their absolute difference, with that image's
MSE, PSNR and SSIM from the test step's ``details.tsv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import io
from ..errors import UserError
from ..maps import Maps
from . import _new_figure, _save_figure, _test_details

MAX_SPLITS = 3
PLANES = ("sagittal", "coronal", "axial")


def _middle_slices(volume: np.ndarray) -> list[np.ndarray]:
    d, h, w = volume.shape
    return [volume[d // 2].T, volume[:, h // 2].T, volume[:, :, w // 2].T]


def reconstruct_first_image(
    maps: Maps, group: str, split: int, model: str
) -> tuple[str, np.ndarray, np.ndarray]:
    """(participant_session, input volume, its reconstruction) for the group's first image."""
    import torch

    from ..data.prepare import read_manifest
    from ..models.network import build_network
    from ..train.runtime import load_maps_weights

    description = io.read_json(maps.model_json)
    if description.get("task") != "reconstruction":
        raise UserError(
            f"{maps.model_json}: the reconstruction figure is for autoencoders "
            f"(data.task: reconstruction), this MAPS's task is {description.get('task')!r}"
        )
    weights = maps.split(split).models.get(model).model_pt
    if not weights.is_file():
        raise UserError(f"missing model {weights}: train split-{split} first")
    dataset = io.read_json(maps.test_group(group).dataset_json)
    row = read_manifest(dataset["cache_manifest"]).iloc[0]
    image = np.load(row["tensor"]).astype(np.float32)
    network = load_maps_weights(build_network(description["network"]), weights).eval()
    with torch.inference_mode():
        output = network(torch.from_numpy(image)[None]).float().numpy()[0]
    name = f"{row['participant_id']}_{row['session_id']}"
    return name, image[0], output[0]


def reconstruction_slices(
    maps_dir: str | Path,
    group: str,
    model: str,
    out: str | Path,
    splits: Sequence[int] | None = None,
) -> Path:
    """Input, reconstruction and |difference| slices, one block of rows per split."""
    maps = Maps(maps_dir)
    details = _test_details(maps, group, model, splits, columns=("MSE", "PSNR", "SSIM"))
    shown = list(details)[:MAX_SPLITS]
    fig = _new_figure(9.5, 2.3 * 3 * len(shown))
    axes = fig.subplots(3 * len(shown), 3, squeeze=False)
    for block, split in enumerate(shown):
        name, image, output = reconstruct_first_image(maps, group, split, model)
        frame = details[split]
        participant, session = name.split("_", 1)
        match = frame[(frame["participant_id"] == participant) & (frame["session_id"] == session)]
        scores = (
            ", ".join(f"{m} {match.iloc[0][m]:.3g}" for m in ("MSE", "PSNR", "SSIM"))
            if len(match)
            else ""
        )
        low, high = float(image.min()), float(image.max())
        rows = (
            ("input", image, "gray", (low, high)),
            ("reconstruction", output, "gray", (low, high)),
            ("|difference|", np.abs(output - image), "magma", (0.0, high - low or 1.0)),
        )
        for r, (label, volume, cmap, (vmin, vmax)) in enumerate(rows):
            for c, (plane, section) in enumerate(zip(PLANES, _middle_slices(volume))):
                ax = axes[3 * block + r, c]
                ax.imshow(section, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"split {split}\n{label}", fontsize=9)
                if r == 0:
                    ax.set_title(f"{plane}" + (f"\n{name}: {scores}" if c == 1 else ""), fontsize=9)
    fig.suptitle(f"{model} on group {group}: input and reconstruction", fontsize=11)
    return _save_figure(fig, out)
