"""Turn each image into a float tensor once (the tensor cache), like ClinicaDL's extract.

Training then reads small ``.npy`` files (float32, channel first, min-max
normalised) instead of decoding NIfTI every epoch; this step needs no torch.
The cache is reused across runs: an image is converted again only when its
source file is newer than its cached tensor.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import io
from ..errors import UserError
from .caps import CapsQuery, find_images
from .table import read_table
from .tsvtools import first_sessions, keep_diagnoses, refuse_split_folder

logger = logging.getLogger("snakemaps.data.prepare")

# In the tensor folder: each cached tensor's source file and normalisation.
INDEX_NAME = "index.json"


def load_image(path: str | Path) -> np.ndarray:
    """Load a 3D (or 4D with one channel) image as float32; raise UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path} (check the image column of your table)")
    name = path.name
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            array = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
        elif name.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        elif name.endswith(".pt"):
            import torch

            array = torch.load(path, map_location="cpu", weights_only=True).numpy()
        else:
            raise UserError(f"unsupported image format: {path}; use .nii, .nii.gz, .npy or .pt")
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure means an unreadable image
        raise UserError(f"cannot read image {path}: {type(error).__name__}: {error}") from None
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise UserError(f"image {path} has shape {array.shape}; expected a 3D volume")
    if not np.isfinite(array).all():
        raise UserError(f"image {path} contains NaN or infinite values")
    return array


def min_max(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def read_source_table(
    table: str | Path,
    label: str = "label",
    key: str = "data.tsv",
    caps: Mapping[str, Any] | None = None,
    diagnoses: Sequence[str] | None = None,
    baseline: bool = False,
) -> pd.DataFrame:
    """The sessions to prepare: ``image`` (shown, and its affine) and ``source`` (decoded).

    ``caps`` (the ``data`` keys caps_directory, preprocessing, ...) finds each
    session's image in a Clinica CAPS; the table then has no image column.
    ``diagnoses`` and ``baseline`` select rows first (see ``tsvtools``), so
    dropped sessions need no image.
    """
    refuse_split_folder(table, key)
    query = CapsQuery.from_settings(caps) if caps else None
    frame = read_table(table, label=label, key=key, images=query is None)
    frame = keep_diagnoses(frame, diagnoses, str(table))
    if baseline:
        frame = first_sessions(frame, str(table))
    if query is None:
        frame["source"] = frame["image"]
    else:
        frame["image"], frame["source"] = find_images(
            query, list(frame.participant_id), list(frame.session_id), str(table)
        )
    return frame


def prepare_cache(
    table: str | Path,
    cache_dir: str | Path,
    manifest: str | Path,
    label: str = "label",
    key: str = "data.tsv",
    caps: Mapping[str, Any] | None = None,
    diagnoses: Sequence[str] | None = None,
    baseline: bool = False,
    unnormalize: bool = False,
) -> Path:
    """Convert every image of ``table`` to ``cache_dir/<participant>_<session>.npy``.

    Writes ``manifest`` (the table plus a ``tensor`` column relative to the
    manifest's folder) and ``manifest.json`` (the shape, how the rows and
    images were chosen, the normalisation, and each NIfTI image's affine, so that maps
    computed on the tensors can be written back in the image's space). All
    images must share one shape. Tensors are min-max normalised unless
    ``unnormalize`` (ClinicaDL's option of that name). ``caps``,
    ``diagnoses``, ``baseline``: see ``read_source_table``.
    """
    frame = read_source_table(table, label, key, caps, diagnoses, baseline)
    cache_dir, manifest = Path(cache_dir), Path(manifest)
    names = [f"{p}_{s}" for p, s in zip(frame.participant_id, frame.session_id)]
    for row in frame.itertuples(index=False):
        if not Path(row.source).is_file():
            raise UserError(
                f"{table}: image not found for {row.participant_id} {row.session_id}: {row.source}"
            )
    # What each cached tensor was made from; a tensor is reused only if made the same way.
    index_path = cache_dir / INDEX_NAME
    index = io.read_json(index_path) if index_path.is_file() else None
    made = {name: [str(source), unnormalize] for name, source in zip(names, frame["source"])}

    def reusable(name: str) -> bool:
        target, source = cache_dir / f"{name}.npy", Path(made[name][0])
        if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
            return False
        # A cache without an index was written min-max normalised from the same paths.
        return not unnormalize if index is None else index.get(name) == made[name]

    stale = {name for name in names if not reusable(name)}
    if stale:  # first forget them: a crash below must not leave them looking reusable
        kept = {k: v for k, v in (index or {}).items() if k not in stale}
        io.write_json(index_path, kept)
    tensors, shape, started = [], None, time.monotonic()
    affines: dict[str, list[list[float]] | None] = {}
    for i, (name, row) in enumerate(zip(names, frame.itertuples(index=False))):
        target, source = cache_dir / f"{name}.npy", Path(row.source)
        if name in stale:
            array = load_image(source)
            if not unnormalize:
                array = min_max(array)
            tensor_shape = array.shape
            io.atomic_write(target, lambda handle, a=array: np.save(handle, a[None]), fsync=False)
        else:
            tensor_shape = tuple(np.load(target, mmap_mode="r").shape[1:])
        if shape is None:
            shape = tensor_shape
        elif tensor_shape != shape:
            raise UserError(
                f"image {source} has shape {tensor_shape} but earlier images have {shape}; "
                "all images of a data set must share one shape (resample them first)"
            )
        affines[name] = image_affine(row.image)
        tensors.append(os.path.relpath(target.resolve(), manifest.parent.resolve()))
        if (i + 1) % 50 == 0:
            logger.info("prepared %d/%d images", i + 1, len(frame))
    io.write_json(index_path, {**(index or {}), **made})
    frame = frame.drop(columns="source")
    frame["tensor"] = tensors
    io.write_json(
        info_path(manifest),
        {
            "shape": [1, *shape],
            "n_images": len(frame),
            "caps": dict(caps) if caps else None,
            "diagnoses": list(diagnoses) if diagnoses else None,
            "baseline": baseline,
            "unnormalize": unnormalize,
            "affines": affines,
        },
    )
    io.write_tsv(manifest, frame)
    logger.info(
        "tensor cache ready: %d images of shape %s (%d reused) in %.1f s -> %s",
        len(frame),
        shape,
        len(frame) - len(stale),
        time.monotonic() - started,
        manifest,
    )
    return manifest


def info_path(manifest: str | Path) -> Path:
    """``<manifest>.json``: the cached tensors' shape (channel first), count and affines."""
    return Path(manifest).with_suffix(".json")


def image_affine(path: str | Path) -> list[list[float]] | None:
    """The voxel-to-world affine of a NIfTI image (its header only), None for .npy / .pt."""
    if not Path(path).name.endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib

    try:
        return np.asarray(nib.load(str(path)).affine, dtype=float).tolist()
    except Exception as error:  # noqa: BLE001 - any header failure means an unreadable image
        raise UserError(f"cannot read image {path}: {type(error).__name__}: {error}") from None


def source_affines(manifest: str | Path, frame: pd.DataFrame) -> list[np.ndarray | None]:
    """The affine of each row's source image (None: not a NIfTI image).

    Read from ``manifest.json``; a cache written before affines were recorded
    there falls back to the source images' headers.
    """
    recorded = io.read_json(info_path(manifest)).get("affines")
    found = []
    for row in frame.itertuples(index=False):
        key = f"{row.participant_id}_{row.session_id}"
        affine = (
            recorded[key] if recorded is not None and key in recorded else image_affine(row.image)
        )
        found.append(None if affine is None else np.asarray(affine, dtype=float))
    return found


def read_manifest(manifest: str | Path) -> pd.DataFrame:
    """A prepared table with absolute ``tensor`` paths."""
    manifest = Path(manifest)
    frame = pd.read_csv(manifest, sep="\t", dtype=str, keep_default_na=False)
    frame["tensor"] = [str((manifest.parent / t).resolve()) for t in frame["tensor"]]
    return frame
