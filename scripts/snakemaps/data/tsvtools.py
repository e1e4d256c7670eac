"""ClinicaDL's table options: ``diagnoses``, ``baseline``, and its tsvtool split folders.

- ``keep_diagnoses``: the rows whose diagnosis is one of ``data.diagnoses``
  (ClinicaDL filters its tables the same way before training).
- ``first_sessions``: each participant's first session, ClinicaDL's rule
  (``tsvtools_utils.first_session``): the smallest session ID in
  lexicographic order (``ses-M000`` before ``ses-M006``; note that
  ``ses-M12`` sorts before ``ses-M6``, as in ClinicaDL).
- ``refuse_split_folder``: ClinicaDL 1.6.1 trains on the folders that
  ``clinicadl tsvtools split`` and ``kfold`` write (``train.tsv``,
  ``validation_baseline.tsv``, ``split-<i>/``, ...). snakemaps draws its own
  participant-level splits (``split.n_splits``, ``split.seed``) and records
  them in the MAPS, so it takes the one table those folders were cut from;
  a folder is refused with a message naming that table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import UserError

logger = logging.getLogger("snakemaps.data.tsvtools")


def diagnosis_column(frame: pd.DataFrame) -> str:
    """The column ``data.diagnoses`` filters: ``diagnosis``, else the label column."""
    return "diagnosis" if "diagnosis" in frame.columns else "label"


def keep_diagnoses(
    frame: pd.DataFrame, diagnoses: Sequence[str] | None, source: str
) -> pd.DataFrame:
    """Rows whose diagnosis is in ``diagnoses`` (all rows when None); logs the count dropped."""
    if not diagnoses:
        return frame
    column = diagnosis_column(frame)
    kept = frame[frame[column].isin(list(diagnoses))].reset_index(drop=True)
    found = sorted(frame[column].unique())
    if kept.empty:
        raise UserError(
            f"data.diagnoses: none of {list(diagnoses)} occurs in {source} (its "
            f"{'diagnosis' if column == 'diagnosis' else 'label'} column holds {found}); "
            "fix data.diagnoses or the table"
        )
    absent = sorted(set(diagnoses) - set(frame[column]))
    if absent:
        logger.warning("data.diagnoses: %s do not occur in %s", absent, source)
    logger.info(
        "data.diagnoses %s: kept %d of %d sessions of %s (%d dropped, labels found: %s)",
        list(diagnoses),
        len(kept),
        len(frame),
        source,
        len(frame) - len(kept),
        ", ".join(map(str, found)),
    )
    return kept


def first_sessions(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Each participant's first session (lexicographic session_id); logs the count dropped."""
    kept = (
        frame.sort_values(["participant_id", "session_id"], kind="stable")
        .drop_duplicates("participant_id")
        .reset_index(drop=True)
    )
    logger.info(
        "data.baseline: kept the first session of each of %d participants of %s (%d of %d "
        "sessions dropped)",
        len(kept),
        source,
        len(frame) - len(kept),
        len(frame),
    )
    return kept


def split_folder_kind(folder: Path) -> str | None:
    """Which tsvtool wrote ``folder`` (``split``, ``kfold``, ``split (ClinicaDL <= 1.0)``)."""
    if (folder / "kfold.json").is_file() or any(folder.glob("split-*/train*.tsv")):
        return "kfold"
    if (folder / "split.json").is_file() or (folder / "train.tsv").is_file():
        return "split"
    if any(folder.glob("train*/*.tsv")) or any(folder.glob("train_splits-*/split-*/*.tsv")):
        return "split (ClinicaDL <= 1.0)"
    return None


def refuse_split_folder(path: str | Path, key: str = "data.tsv") -> None:
    """UserError if ``path`` is a folder (a tsvtool split folder or any other one)."""
    path = Path(path)
    if not path.is_dir():
        return
    kind = split_folder_kind(path)
    tables = sorted(p.name for p in path.parent.glob("*.tsv"))
    candidates = (
        f" Candidates beside it in {path.parent}: {', '.join(tables[:10])}." if tables else ""
    )
    if kind is None:
        raise UserError(
            f"{key}: {path} is a folder; give one table (a TSV with participant_id, "
            f"session_id and the label column).{candidates}"
        )
    raise UserError(
        f"{key}: {path} is a folder written by ClinicaDL's `tsvtools {kind.split()[0]}`. "
        "snakemaps draws its own participant-level splits (split.n_splits, split.seed; every "
        "session of a participant on one side) and records them in the MAPS, so give it the "
        "one table the folder was cut from (the DATA_TSV given to tsvtools, e.g. labels.tsv, "
        f"which tsvtools leaves beside its folder).{candidates} data.baseline keeps each "
        "participant's first session (train_baseline.tsv), split.longitudinal: false validates "
        "on baseline sessions (validation_baseline.tsv)."
    )
