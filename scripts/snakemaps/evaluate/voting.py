"""Image-level predictions from sub-sample predictions: ClinicaDL's soft voting.

For each part index ``k`` (a patch, slice or roi position), its weight is its
balanced accuracy on a reference set: the predictions being voted on for the
validation set, the validation predictions of the same split and model for a
test group. Parts whose balanced accuracy is below ``selection_threshold``
get weight 0; the others are normalised to sum to 1. The probability of class
``c`` for an image is ``P_c = sum_k w_k * p_c,k`` and its prediction is
``argmax_c P_c`` (clinicadl 1.6.1 ``task_manager/classification.py``
``ensemble_prediction``). ClinicaDL 1.6.1 weighs parts by their plain accuracy;
seed 002 (``random-search``) says balanced accuracy, and the seed wins.

If every part falls below the threshold, all parts get equal weights (the mean
of the parts, ClinicaDL's "hard" method) and a warning is logged: there is no
weighted vote to take. The image-level loss is the cross-entropy of the voted
probabilities, ``-log P_true``. A regression takes the mean of the parts'
predictions (ClinicaDL always does "hard" voting for a regression), with the
mean of the parts' losses as its loss.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger("snakemaps.evaluate.voting")

KEYS = ["participant_id", "session_id"]


def part_weights(reference: pd.DataFrame, id_column: str, threshold: float = 0.0) -> pd.Series:
    """Normalised weight of each part id: its balanced accuracy, 0 below ``threshold``.

    ``reference`` holds part-level rows with ``label`` and ``prediction``.
    """
    from sklearn.metrics import balanced_accuracy_score

    scores = {
        part: float(balanced_accuracy_score(rows["label"], rows["prediction"]))
        for part, rows in reference.groupby(id_column, sort=True)
    }
    accuracy = pd.Series(scores, dtype=float)
    kept = accuracy.where(accuracy >= threshold, 0.0)
    if kept.sum() <= 0:
        logger.warning(
            "soft voting: no part reaches a balanced accuracy of %g (best %.3f); every part "
            "gets the same weight",
            threshold,
            accuracy.max(),
        )
        kept = pd.Series(1.0, index=accuracy.index)
    return kept / kept.sum()


def soft_vote(
    parts: pd.DataFrame,
    classes: Sequence[str],
    id_column: str,
    weights: pd.Series,
) -> pd.DataFrame:
    """Image-level rows (participant_id, session_id, label, prediction, loss, proba<c>).

    ``parts`` holds the part-level rows of every image, with ``proba<c>``
    columns; images keep the order of their first part.
    """
    proba = [f"proba{c}" for c in classes]
    w = parts[id_column].map(weights).fillna(0.0).to_numpy()
    weighted = parts[proba].to_numpy(dtype=float) * w[:, None]
    frame = pd.DataFrame(weighted, columns=proba)
    frame[KEYS] = parts[KEYS].to_numpy()
    frame["_w"] = w
    grouped = frame.groupby(KEYS, sort=False)
    summed = grouped[proba].sum()
    total = grouped["_w"].sum().to_numpy()
    probs = summed.to_numpy() / np.where(total > 0, total, 1.0)[:, None]
    labels = parts.groupby(KEYS, sort=False)["label"].first().to_numpy()
    index = {c: i for i, c in enumerate(classes)}
    true = np.array([index[label] for label in labels])
    out = summed.reset_index()[KEYS]
    out["label"] = labels
    out["prediction"] = [classes[i] for i in probs.argmax(axis=1)]
    out["loss"] = -np.log(np.clip(probs[np.arange(len(true)), true], 1e-12, None))
    for i, column in enumerate(proba):
        out[column] = probs[:, i]
    return out


def mean_vote(parts: pd.DataFrame) -> pd.DataFrame:
    """Image-level rows of a regression: the mean prediction and loss over the parts."""
    grouped = parts.groupby(KEYS, sort=False)
    out = grouped[["label", "prediction", "loss"]].mean().reset_index()
    return out


def image_level(
    parts: pd.DataFrame,
    classes: Sequence[str] | None,
    id_column: str,
    threshold: float = 0.0,
    reference: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.Series | None]:
    """Image-level rows from part-level rows, and the part weights used (None: regression).

    ``reference`` gives the weights (default: ``parts`` themselves).
    """
    if classes is None:
        return mean_vote(parts), None
    weights = part_weights(parts if reference is None else reference, id_column, threshold)
    return soft_vote(parts, classes, id_column, weights), weights


def image_metrics(
    images: pd.DataFrame, classes: Sequence[str] | None, metric_names: Sequence[str]
) -> dict[str, float]:
    """The metrics of image-level rows (as ``soft_vote`` or ``mean_vote`` give them)."""
    from ..train import metrics as M

    losses = images["loss"].to_numpy(dtype=float)
    if classes is None:
        labels = images["label"].to_numpy(dtype=float)
        return M.compute(metric_names, labels, images["prediction"].to_numpy(float), losses)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[v] for v in images["label"]])
    probs = images[[f"proba{c}" for c in classes]].to_numpy(dtype=float)
    return M.compute(metric_names, labels, probs, losses)


def evaluate(
    data: Any,
    indices: np.ndarray,
    labels: np.ndarray,
    outputs: np.ndarray,
    losses: np.ndarray,
    metric_names: Sequence[str],
    threshold: float = 0.0,
    reference: pd.DataFrame | None = None,
) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame | None]:
    """Metrics, image-level details and part-level details (None for whole images).

    ``data`` is the evaluated data set: whole images (``CachedImages``), whose
    rows are the images, or parts (``SubSamples``), whose rows are voted into
    images. Part rows carry the part's ``<mode>_id`` and its voting ``weight``.
    """
    from ..train import metrics as M

    parts = M.details_frame(data.frame, indices, labels, outputs, losses, data.classes)
    extraction = getattr(data, "extraction", None)
    if extraction is None:
        return M.compute(metric_names, labels, outputs, losses), parts, None
    id_column = extraction.id_column
    parts.insert(2, id_column, data.frame[id_column].to_numpy()[indices])
    images, weights = image_level(parts, data.classes, id_column, threshold, reference)
    parts["weight"] = (
        1.0 / extraction.n_parts if weights is None else parts[id_column].map(weights).fillna(0.0)
    )
    return image_metrics(images, data.classes, metric_names), images, parts


def part_details_tsv(files: Any, mode: str) -> Path:
    """``details_<mode>.tsv`` beside a ``details.tsv``: one row per patch, slice or roi."""
    return Path(files.path) / f"details_{mode}.tsv"


def part_logs(files: Any, data: Any, index: Sequence[str] = ("epoch",)) -> list[Any]:
    """The trainer's part-level validation log for sub-sample data (none for whole images).

    ``index``: the columns that say when each validation ran (epoch, and batch
    with train.evaluation_steps), as in the image-level details.
    """
    from ..train.callbacks import TableLog

    extraction = getattr(data, "extraction", None)
    if extraction is None:
        return []
    return [TableLog(part_details_tsv(files, extraction.mode), list(index))]


def prune_part_log(log: Any, callbacks: Sequence[Any]) -> None:
    """Keep the part rows of the epochs a saved model may come from, and the last one.

    A validation has one row per image and part (129 sagittal slices of a
    t1-linear image): kept for every epoch, the log rewritten at each flush
    would grow with epochs squared. The validation at the end of the train job
    reads the rows of the best-<metric>, epoch-<e> and final models' epochs only.
    """
    from ..train.callbacks import ModelCheckpoint

    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    if checkpoint is None or not log.rows:
        return
    keep = {best["epoch"] for best in checkpoint.best.values()}
    keep |= set(checkpoint.save_epochs) | {log.rows[-1]["epoch"]}
    log.rows = [row for row in log.rows if row["epoch"] in keep]
