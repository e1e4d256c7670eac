"""Analyse a random search: which runs trained, and how well (``clinicadl random-search analysis``).

``write_analysis`` writes three TSVs into the launch directory of a
classification search:

- ``analysis_balanced_accuracy.tsv``: the best-BalancedAccuracy model of each
  split of each run.
- ``analysis_loss.tsv``: the best-loss model of each split. Like ClinicaDL,
  it also counts validation *balanced accuracy* thresholds; only the model
  selection differs.
- ``ranked_runs.tsv``: one row per run with its sampled options and the mean
  and std over splits of every validation metric of its best-BalancedAccuracy
  models, best balanced accuracy first.

A search of another task (``data.task: reconstruction``, an autoencoder per
run, or ``regression``) has no balanced accuracy: it writes ``ranked_runs.tsv``
alone, from each split's best-loss model, lowest mean loss first
(``selection_metrics``, ``analysis_files``).

The threshold tables resolve an ambiguity of ClinicaDL's documentation (its
first column is called ``run`` but holds the job name, while the text says
``run`` tells whether the job ran). Here the columns are:

- ``job``: the job name (``job-0``, ``job-1``, ..., in natural order);
- ``run``: 1 when at least one split result was found, else 0;
- ``>0.5`` ... ``>0.95``: 1 when the mean over splits of the selected models'
  validation balanced accuracy is strictly higher than the threshold;
- ``folds``: how many splits have a result;
- a last row ``total`` sums every numeric column.

A job whose MAPS is missing, or whose ``<launch_dir>/<job>/failed.txt``
exists, counts as not run. Standard deviations are sample ones (``ddof=1``),
empty when a run has fewer than two splits.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from ..io import read_tsv, write_tsv

THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * index, 2) for index in range(10))
BALANCED_ACCURACY = "BalancedAccuracy"
FAILED_MARKER = "failed.txt"
ANALYSIS_FILES = {
    "balanced_accuracy": "analysis_balanced_accuracy.tsv",
    "loss": "analysis_loss.tsv",
    "ranked": "ranked_runs.tsv",
}


def analysis_files(task: str) -> dict[str, str]:
    """Kind -> file name of what ``write_analysis`` writes for a search of ``task``."""
    if task == "classification":
        return dict(ANALYSIS_FILES)
    return {"ranked": ANALYSIS_FILES["ranked"]}


def selection_metrics(task: str) -> list[str]:
    """The best models whose validation the analysis of a ``task`` search reads."""
    return [BALANCED_ACCURACY, "loss"] if task == "classification" else ["loss"]


# Columns of a validation aggregated.tsv that index rows rather than hold metrics.
_INDEX_COLUMNS = {"epoch", "iteration", "batch", "split"}
_SPLIT_DIR = re.compile(r"split-(\d+)")


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``job-2`` before ``job-10``."""
    parts = re.split(r"(\d+)", name)
    return [int(part) if index % 2 else part for index, part in enumerate(parts)]


def threshold_label(threshold: float) -> str:
    return f">{threshold:g}"


def _finite(values: Sequence[float] | None) -> list[float]:
    return [float(v) for v in (values or []) if v is not None and math.isfinite(float(v))]


def analysis_table(
    results: Mapping[str, Sequence[float] | None],
    thresholds: Sequence[float] = THRESHOLDS,
) -> pd.DataFrame:
    """Threshold counts per job (see the module docstring), with a ``total`` row.

    ``results`` maps each job to the validation balanced accuracy of its
    selected model in each split found, or ``None`` when it did not run.
    """
    labels = [threshold_label(t) for t in thresholds]
    columns = ["job", "run", *labels, "folds"]
    rows = []
    for job in sorted(results, key=natural_key):
        values = list(results[job] or [])
        finite = _finite(values)
        mean = float(np.mean(finite)) if finite else math.nan
        row: dict[str, Any] = {"job": job, "run": int(bool(values))}
        for label, threshold in zip(labels, thresholds, strict=True):
            row[label] = int(mean > threshold)
        row["folds"] = len(values)
        rows.append(row)
    total = {"job": "total", **{c: sum(row[c] for row in rows) for c in columns[1:]}}
    return pd.DataFrame([*rows, total], columns=columns)


def _flat_value(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if value is None:
        return "None"
    return value


def ranked_table(
    options_by_run: Mapping[str, Mapping[str, Any]],
    metrics_by_run: Mapping[str, Mapping[str, Sequence[float]] | None],
    rank_by: str = BALANCED_ACCURACY,
) -> pd.DataFrame:
    """One row per run, ranked by the mean validation ``rank_by`` (best first).

    Balanced accuracy ranks highest first; ``loss`` lowest first.

    Columns: ``job``, ``rank`` (empty for runs that did not run), ``status``
    (``done`` / ``not run``), ``<metric>_mean`` and ``<metric>_std`` for every
    metric, ``n_splits``, then the sampled options (lists as JSON strings,
    ``None`` as ``"None"``). Runs without results come last, in job order.
    """
    jobs = sorted(set(options_by_run) | set(metrics_by_run), key=natural_key)
    metric_names: list[str] = []
    for job in jobs:
        for name in metrics_by_run.get(job) or {}:
            if name not in metric_names:
                metric_names.append(name)
    if rank_by in metric_names:
        metric_names.remove(rank_by)
        metric_names.insert(0, rank_by)
    sign = 1.0 if rank_by == "loss" else -1.0
    metric_columns = [f"{name}_{stat}" for name in metric_names for stat in ("mean", "std")]
    reserved = {"job", "rank", "status", "n_splits", *metric_columns}

    option_columns: list[str] = []
    rows = []
    for job in jobs:
        metrics = metrics_by_run.get(job) or {}
        n_splits = max((len(values) for values in metrics.values()), default=0)
        row: dict[str, Any] = {"job": job, "status": "done" if n_splits else "not run"}
        for name in metric_names:
            values = _finite(metrics.get(name))
            row[f"{name}_mean"] = float(np.mean(values)) if values else math.nan
            row[f"{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        row["n_splits"] = n_splits
        for key, value in (options_by_run.get(job) or {}).items():
            column = f"option_{key}" if key in reserved else key
            if column not in option_columns:
                option_columns.append(column)
            row[column] = _flat_value(value)
        rows.append(row)

    def order(row: dict[str, Any]) -> tuple[Any, ...]:
        score = row.get(f"{rank_by}_mean", math.nan)
        return (row["status"] != "done", sign * score if math.isfinite(score) else math.inf)

    rows.sort(key=order)  # stable: ties keep natural job order
    rank = 0
    for row in rows:
        if row["status"] == "done":
            rank += 1
            row["rank"] = rank
        else:
            row["rank"] = None
    columns = ["job", "rank", "status", *metric_columns, "n_splits", *option_columns]
    frame = pd.DataFrame(rows, columns=columns)
    frame["rank"] = frame["rank"].astype("Int64")
    return frame


def _aggregated_tsvs(maps_dir: Path, selection_metric: str) -> list[Path]:
    training = Path(maps_dir) / "training"
    if not training.is_dir():
        return []
    splits = []
    for child in training.iterdir():
        match = _SPLIT_DIR.fullmatch(child.name)
        if match and child.is_dir():
            splits.append((int(match.group(1)), child))
    tsvs = []
    for _, split in sorted(splits):
        tsv = (
            split
            / "models"
            / "best_models"
            / f"best-{selection_metric}"
            / "validation_metrics"
            / "aggregated.tsv"
        )
        if tsv.is_file():
            tsvs.append(tsv)
    return tsvs


def collect_validation_metrics(maps_dir: Path, selection_metric: str) -> dict[str, list[float]]:
    """Every validation metric of each split's ``best-<selection_metric>`` model.

    Reads the last row of
    ``training/split-*/models/best_models/best-<metric>/validation_metrics/aggregated.tsv``
    in split order; non-numeric columns and ``epoch`` are skipped. Empty when
    no split has the file.
    """
    metrics: dict[str, list[float]] = {}
    for tsv in _aggregated_tsvs(maps_dir, selection_metric):
        try:
            frame = read_tsv(tsv)
        except pd.errors.EmptyDataError:
            continue
        if frame.empty:
            continue
        last = frame.iloc[-1]
        for column in frame.columns:
            if column in _INDEX_COLUMNS:
                continue
            try:
                value = float(last[column])
            except (TypeError, ValueError):
                continue
            metrics.setdefault(str(column), []).append(value)
    return metrics


def collect_run_metrics(maps_dir: Path, selection_metric: str) -> list[float] | None:
    """Validation balanced accuracy of each split's ``best-<selection_metric>`` model.

    ``None`` when no split has a result.
    """
    tsvs = _aggregated_tsvs(maps_dir, selection_metric)
    metrics = collect_validation_metrics(maps_dir, selection_metric)
    if not metrics:
        return None
    if BALANCED_ACCURACY not in metrics:
        raise UserError(
            f"{tsvs[0]}: no '{BALANCED_ACCURACY}' column; random-search analysis needs it, "
            f"so keep {BALANCED_ACCURACY} in train.metrics"
        )
    return metrics[BALANCED_ACCURACY]


def _has_run(launch_dir: Path, job: str, maps_dir: Path | None) -> bool:
    if maps_dir is None or not Path(maps_dir).is_dir():
        return False
    return not (launch_dir / job / FAILED_MARKER).exists()


def write_analysis(
    launch_dir: Path,
    job_maps: Mapping[str, Path],
    options_by_run: Mapping[str, Mapping[str, Any]],
    task: str = "classification",
) -> dict[str, Path]:
    """Write the analysis TSVs into ``launch_dir``; return their paths by kind.

    Kinds are the keys of ``analysis_files(task)``: ``balanced_accuracy``,
    ``loss`` and ``ranked`` for classification, ``ranked`` alone otherwise.
    """
    launch_dir = Path(launch_dir)
    jobs = sorted(set(job_maps) | set(options_by_run), key=natural_key)
    if task != "classification":
        return {"ranked": _write_ranked_by_loss(launch_dir, jobs, job_maps, options_by_run)}
    by_accuracy: dict[str, list[float] | None] = {}
    by_loss: dict[str, list[float] | None] = {}
    metrics: dict[str, dict[str, list[float]]] = {}
    for job in jobs:
        maps_dir = job_maps.get(job)
        if maps_dir is None or not _has_run(launch_dir, job, maps_dir):
            by_accuracy[job], by_loss[job], metrics[job] = None, None, {}
            continue
        by_accuracy[job] = collect_run_metrics(maps_dir, BALANCED_ACCURACY)
        by_loss[job] = collect_run_metrics(maps_dir, "loss")
        metrics[job] = collect_validation_metrics(maps_dir, BALANCED_ACCURACY)
    paths = {kind: launch_dir / name for kind, name in ANALYSIS_FILES.items()}
    write_tsv(paths["balanced_accuracy"], analysis_table(by_accuracy))
    write_tsv(paths["loss"], analysis_table(by_loss))
    write_tsv(paths["ranked"], ranked_table(options_by_run, metrics))
    return paths


def _write_ranked_by_loss(
    launch_dir: Path,
    jobs: Sequence[str],
    job_maps: Mapping[str, Path],
    options_by_run: Mapping[str, Mapping[str, Any]],
) -> Path:
    """``ranked_runs.tsv`` of a search without balanced accuracy: best-loss models, lowest first."""
    metrics: dict[str, dict[str, list[float]]] = {}
    for job in jobs:
        maps_dir = job_maps.get(job)
        ran = maps_dir is not None and _has_run(launch_dir, job, maps_dir)
        metrics[job] = collect_validation_metrics(maps_dir, "loss") if ran else {}
        if ran and metrics[job] and "loss" not in metrics[job]:
            raise UserError(
                f"{maps_dir}: the validation of its best-loss models has no 'loss' column; "
                "the random-search analysis ranks runs by it"
            )
    path = launch_dir / ANALYSIS_FILES["ranked"]
    write_tsv(path, ranked_table(options_by_run, metrics, rank_by="loss"))
    return path
