"""Compute saliency maps with Captum and write them into the MAPS (see ``snakemaps.interpret``)."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import io
from ..errors import UserError
from ..maps import Maps
from . import MODE, check_methods, method_dir

logger = logging.getLogger("snakemaps.interpret")


def mean_map_name(label: str | None = None) -> str:
    """``mean_image-0_map`` (every image) or ``mean_label-<class>_image-0_map``."""
    return f"mean_{MODE}_map" if label is None else f"mean_label-{label}_{MODE}_map"


def image_map_name(participant: str, session: str) -> str:
    return f"{participant}_{session}_{MODE}_map"


def target_index(target_node: str | None, classes: Sequence[str] | None) -> int | None:
    """The output explained for every image: a class's index, or None (each one's prediction)."""
    if target_node is None:
        return None
    if not classes:
        raise UserError(
            f"interpret.target_node: {target_node!r} names a class, but the model is a "
            "regression (one output); set interpret.target_node: null"
        )
    if target_node not in classes:
        raise UserError(
            f"interpret.target_node: unknown class {target_node!r}; the model's classes are "
            f"{', '.join(classes)} (or null for each image's predicted class)"
        )
    return list(classes).index(target_node)


def grad_cam_layer(network: nn.Module, level: int | None) -> tuple[nn.Module, int]:
    """The convolution block whose output Grad-CAM explains (``level`` 1-based; None: the last)."""
    blocks = list(network.convolutions)
    level = len(blocks) if level is None else int(level)
    if not 1 <= level <= len(blocks):
        raise UserError(
            f"interpret.level_grad_cam: {level} is not a convolution block of this network, "
            f"which has {len(blocks)}; use 1 to {len(blocks)} or null for the last"
        )
    return blocks[level - 1], level


class Attributions:
    """One network, one Captum attribution per method; ``__call__`` maps a batch."""

    def __init__(self, network: nn.Module, methods: Sequence[str], level: int | None) -> None:
        from captum.attr import LayerGradCam, Saliency

        self.network = network
        self.methods = check_methods(methods)
        self.level: int | None = None
        self.explainers: dict[str, Any] = {}
        for method in self.methods:
            if method == "gradients":
                self.explainers[method] = Saliency(network)
            else:
                layer, self.level = grad_cam_layer(network, level)
                self.explainers[method] = LayerGradCam(network, layer)

    def __call__(self, images: torch.Tensor, target: torch.Tensor | None) -> dict[str, np.ndarray]:
        from captum.attr import LayerAttribution

        found = {}
        for method, explainer in self.explainers.items():
            if method == "gradients":
                inputs = images.detach().clone().requires_grad_(True)
                maps = explainer.attribute(inputs, target=target, abs=True)
            else:
                coarse = explainer.attribute(images, target=target, relu_attributions=True)
                maps = LayerAttribution.interpolate(
                    coarse, tuple(images.shape[2:]), interpolate_mode="trilinear"
                )
            found[method] = maps.detach().float().cpu().numpy()
        return found


def prepared_network(network: nn.Module) -> nn.Module:
    """An evaluation-mode copy without in-place activations (Captum's hooks need the outputs)."""
    network = copy.deepcopy(network).eval()
    for module in network.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def write_map(folder: Path, name: str, array: np.ndarray, affine: np.ndarray | None) -> None:
    """``<name>.pt`` (a float32 tensor of the input's shape) and ``<name>.nii.gz`` (affine kept)."""
    import nibabel as nib

    array = np.asarray(array, dtype=np.float32)
    torch.save(torch.from_numpy(array.copy()), folder / f"{name}.pt")
    image = nib.Nifti1Image(
        array.reshape(array.shape[-3:]), np.eye(4) if affine is None else affine
    )
    image.header.set_xyzt_units("mm")
    nib.save(image, str(folder / f"{name}.nii.gz"))


def _publish(staging: Path, target: Path) -> None:
    """Move a finished folder into place: readers see the old one or the new one, whole."""
    for path in sorted(staging.iterdir()):
        io.fsync_file(path)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def interpret_group(
    maps_dir: str | Path,
    group: str,
    split: int,
    model: str,
    methods: Sequence[str],
    *,
    target_node: str | None = None,
    level_grad_cam: int | None = None,
    device: str = "auto",
    batch_size: int = 8,
    threads: int = 1,
) -> list[Path]:
    """Write ``interpret-<method>/`` for one test group, split and saved model; return them."""
    import captum

    from ..data.dataset import CachedImages
    from ..data.prepare import read_manifest, source_affines
    from ..models.network import build_network
    from ..train.runtime import load_maps_weights, resolve_device

    methods = check_methods(methods)
    torch.set_num_threads(threads)
    maps = Maps(maps_dir)
    group_dir = maps.test_group(group)
    if not group_dir.dataset_json.exists():
        raise UserError(
            f"interpret.groups: {group!r} is not a registered test group of {maps.path} "
            f"(no {group_dir.dataset_json}); add it to test.groups and run its test first"
        )
    weights = maps.split(split).models.get(model).model_pt
    if not weights.exists():
        raise UserError(
            f"interpret.models: no model {model} in split-{split} ({weights} is missing); "
            "train the split first, or choose a model training keeps"
        )
    manifest = io.read_json(group_dir.dataset_json)["cache_manifest"]
    frame = read_manifest(manifest)
    affines = source_affines(manifest, frame)
    description = io.read_json(maps.model_json)
    classes = description.get("classes")
    fixed = target_index(target_node, classes)
    dev = resolve_device(device)
    network = load_maps_weights(build_network(description["network"]), weights)
    network = prepared_network(network).to(dev)
    explain = Attributions(network, methods, level_grad_cam)
    data = CachedImages(frame, classes)

    folders = {
        m: group_dir.results.splits[split].models[model].path / method_dir(m) for m in methods
    }
    staging = {}
    for method, folder in folders.items():
        folder.parent.mkdir(parents=True, exist_ok=True)
        for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging[method] = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging[method], ignore_errors=True)
        staging[method].mkdir()

    labels = [str(v) for v in frame["label"]]
    groups = sorted(set(labels), key=lambda c: classes.index(c)) if classes else []
    sums = {m: {None: 0.0, **{c: 0.0 for c in groups}} for m in methods}
    rows: list[dict[str, Any]] = []
    logger.info(
        "interpreting %d images of group %s with split-%d %s: %s",
        len(data),
        group,
        split,
        model,
        ", ".join(methods),
    )
    try:
        for start in range(0, len(data), batch_size):
            indices = list(range(start, min(start + batch_size, len(data))))
            images = torch.stack([data[i][0] for i in indices]).to(dev)
            with torch.no_grad():
                output = network(images)
            predicted = output.argmax(1) if classes else None
            if classes is None:
                target = None
            elif fixed is None:
                target = predicted
            else:
                target = torch.full_like(predicted, fixed)
            found = explain(images, target)
            for j, i in enumerate(indices):
                row = frame.iloc[i]
                name = image_map_name(row["participant_id"], row["session_id"])
                for method in methods:
                    array = found[method][j]
                    write_map(staging[method], name, array, affines[i])
                    sums[method][None] = sums[method][None] + array
                    if classes:
                        sums[method][labels[i]] = sums[method][labels[i]] + array
                rows.append(
                    {
                        "participant_id": row["participant_id"],
                        "session_id": row["session_id"],
                        "label": labels[i],
                        "prediction": classes[int(predicted[j])] if classes else "",
                        "target": classes[int(target[j])] if classes else "",
                        "map": f"{name}.pt",
                    }
                )
        counts = {c: labels.count(c) for c in groups}
        affine, same = _common_affine(affines)
        written = []
        for method in methods:
            for label, total in sums[method].items():
                n = len(data) if label is None else counts[label]
                write_map(staging[method], mean_map_name(label), total / n, affine)
            io.write_tsv(staging[method] / "details.tsv", pd.DataFrame(rows))
            io.write_json(
                staging[method] / "interpretation.json",
                {
                    "name_": "InterpretConfig",
                    "method": method,
                    "library": f"captum {captum.__version__}",
                    "group": group,
                    "split": int(split),
                    "model": model,
                    "target_node": target_node,
                    "explained": "the predicted class" if fixed is None else target_node,
                    "level_grad_cam": explain.level if method == "grad-cam" else None,
                    "absolute": method == "gradients",
                    "classes": classes,
                    "n_images": len(data),
                    "n_images_per_class": counts,
                    "mean_maps": {
                        "all": f"{mean_map_name()}.pt",
                        **{c: f"{mean_map_name(c)}.pt" for c in groups},
                    },
                    "affine": None if affine is None else affine.tolist(),
                    "affines_differ": not same,
                },
            )
            _publish(staging[method], folders[method])
            written.append(folders[method])
            logger.info("wrote %s", folders[method])
    finally:
        for folder in staging.values():
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(folder)
    if not same:
        logger.warning(
            "the images of group %s have different affines; the mean maps carry the first "
            "image's affine (they are averages in voxel space)",
            group,
        )
    return written


def _common_affine(affines: Sequence[np.ndarray | None]) -> tuple[np.ndarray | None, bool]:
    """The first image's affine, and whether every image has the same one."""
    first = affines[0]
    same = all(
        (a is None and first is None)
        or (a is not None and first is not None and np.allclose(a, first, atol=1e-5))
        for a in affines
    )
    return first, same
