"""Read and check a table of images (participant_id, session_id, label, image, ...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError

REQUIRED_COLUMNS = ("participant_id", "session_id", "image")
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".npy", ".pt")


def read_table(
    path: str | Path, label: str = "label", key: str = "data.tsv", images: bool = True
) -> pd.DataFrame:
    """Load ``path`` and check it; image paths are made absolute.

    ``images`` False: the table has no image column (a CAPS says where each
    session's image is). Raises UserError naming the file, the column or the
    rows at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{key}: table not found: {path}. Set {key} to an existing TSV file "
            "(columns participant_id, session_id, label, image)."
        )
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise UserError(f"{key}: cannot parse {path} as a tab-separated table: {error}") from None
    required = REQUIRED_COLUMNS if images else REQUIRED_COLUMNS[:2]
    missing = [c for c in (*required, label) if c not in frame.columns]
    if missing:
        needed = ", ".join([*required[:2], label, *required[2:]])
        hint = (
            " ClinicaDL's label column is diagnosis: set data.label: diagnosis."
            if label in missing and "diagnosis" in frame.columns
            else ""
        )
        raise UserError(
            f"{path}: missing required column(s) {', '.join(missing)}; found columns "
            f"{', '.join(frame.columns)}. The table needs {needed} (separated by tabs).{hint}"
        )
    if not images and "image" in frame.columns:
        raise UserError(
            f"{path}: has an image column, and data.caps_directory is set too; the images "
            "come from one of them: remove the column, or set data.caps_directory: null"
        )
    if frame.empty:
        raise UserError(f"{path}: the table has no rows")
    for column in (*required, label):
        empty = frame.index[frame[column].str.strip() == ""]
        if len(empty):
            rows = ", ".join(str(i + 2) for i in empty[:5])
            raise UserError(f"{path}: empty {column!r} on line(s) {rows}; fill them in")
    duplicated = frame[frame.duplicated(["participant_id", "session_id"], keep=False)]
    if not duplicated.empty:
        pairs = sorted(
            {f"{p}/{s}" for p, s in zip(duplicated.participant_id, duplicated.session_id)}
        )
        raise UserError(
            f"{path}: duplicate (participant_id, session_id) pair(s): {', '.join(pairs[:10])}; "
            "each session must appear once"
        )
    if label != "label":
        # The target becomes "label"; a column already named so stays, as "original_label".
        frame = frame.rename(columns={"label": "original_label", label: "label"})
    if images:
        frame["image"] = [str(resolve_image(path.parent, image)) for image in frame["image"]]
    return frame.sort_values(["participant_id", "session_id"], kind="stable").reset_index(drop=True)


def resolve_image(folder: Path, image: str) -> Path:
    image_path = Path(image)
    return image_path if image_path.is_absolute() else (folder / image_path).resolve()


def numeric_labels(labels: pd.Series, source: str = "the table") -> np.ndarray:
    """Labels as float64 for regression; UserError naming the values that are not numbers."""
    values = pd.to_numeric(labels, errors="coerce")
    bad = labels[values.isna() | ~np.isfinite(values)]
    if len(bad):
        shown = ", ".join(repr(v) for v in bad.unique()[:5])
        raise UserError(
            f"{source}: data.task is regression but the label column holds value(s) that are "
            f"not finite numbers: {shown}. Fix those rows, or set data.task: classification."
        )
    return values.to_numpy(dtype=np.float64)
