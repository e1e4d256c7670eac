"""Metrics (scikit-learn) with MAPS-safe names, directions and tasks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import UserError
from ..maps.names import validate_metric_name
from . import reconstruction

C, R, X = "classification", "regression", "reconstruction"
# name -> (higher is better, description for metrics.json, tasks it applies to)
METRICS: dict[str, tuple[bool, str, tuple[str, ...]]] = {
    "loss": (
        False,
        (
            "mean cross-entropy (classification), mean squared error on the standardized "
            "target (regression), or mean squared error per voxel between the input and its "
            "reconstruction (reconstruction)"
        ),
        (C, R, X),
    ),
    "Accuracy": (True, "sklearn.metrics.accuracy_score", (C,)),
    "BalancedAccuracy": (True, "sklearn.metrics.balanced_accuracy_score", (C,)),
    "Sensitivity": (
        True,
        "recall of the positive class (macro over classes if more than 2)",
        (C,),
    ),
    "Specificity": (
        True,
        "recall of the negative class (macro over classes if more than 2)",
        (C,),
    ),
    "RocAuc": (True, "sklearn.metrics.roc_auc_score (one-vs-rest if more than 2 classes)", (C,)),
    "F1": (True, "sklearn.metrics.f1_score (macro if more than 2 classes)", (C,)),
    "MSE": (
        False,
        (
            "sklearn.metrics.mean_squared_error, in the label's units squared (regression); "
            "torchmetrics mean_squared_error of each reconstruction, averaged over images "
            "(reconstruction)"
        ),
        (R, X),
    ),
    "MAE": (False, "sklearn.metrics.mean_absolute_error, in the label's units", (R,)),
    "R2": (True, "sklearn.metrics.r2_score (coefficient of determination)", (R,)),
    "PSNR": (
        True,
        (
            "torchmetrics peak_signal_noise_ratio of each reconstruction (data range: the "
            "input's), averaged over images"
        ),
        (X,),
    ),
    "SSIM": (
        True,
        (
            "torchmetrics structural_similarity_index_measure of each reconstruction (3D "
            "Gaussian window), averaged over images"
        ),
        (X,),
    ),
}


def check_metric_names(names: Sequence[str], key: str, task: str = C) -> list[str]:
    usable = [name for name, (_, _, tasks) in METRICS.items() if task in tasks]
    for name in names:
        validate_metric_name(name, where=key)
        if name not in usable:
            raise UserError(
                f"{key}: {name!r} is not a {task} metric; choose among {', '.join(usable)}"
                + (" (or set data.task)" if name in METRICS else "")
            )
    return list(names)


def higher_is_better(name: str) -> bool:
    return METRICS[name][0]


def metrics_json(names: Sequence[str]) -> dict:
    return {
        "metrics": {
            name: {
                "name_": f"{name}Metric",
                "higher_is_better": METRICS[name][0],
                "description": METRICS[name][1],
                "pred_key": "output",
                "label_key": "label",
            }
            for name in names
        }
    }


def compute(
    names: Sequence[str], labels: np.ndarray, outputs: np.ndarray, losses: np.ndarray
) -> dict[str, float]:
    """Every requested metric from labels, outputs and per-image losses.

    ``outputs`` are class probabilities (n, classes) for classification, or
    predictions (n,) for regression.
    """
    if reconstruction.is_reconstruction(outputs):
        return reconstruction.compute(names, outputs, losses)
    if outputs.ndim == 1:
        return _regression(names, labels, outputs, losses)
    from sklearn import metrics as skm  # imported here: 1.5-2 s that steps without metrics skip

    probs = outputs
    predictions = probs.argmax(axis=1)
    n_classes = probs.shape[1]
    binary = n_classes == 2
    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            if name == "loss":
                value = float(losses.mean())
            elif name == "Accuracy":
                value = skm.accuracy_score(labels, predictions)
            elif name == "BalancedAccuracy":
                value = skm.balanced_accuracy_score(labels, predictions)
            elif name in ("Sensitivity", "Specificity"):
                recalls = skm.recall_score(
                    labels, predictions, labels=range(n_classes), average=None, zero_division=0
                )
                if binary:
                    value = recalls[1] if name == "Sensitivity" else recalls[0]
                else:
                    value = (
                        _specificity(labels, predictions, n_classes)
                        if name == "Specificity"
                        else recalls.mean()
                    )
            elif name == "RocAuc":
                value = _roc_auc(labels, probs)
            elif name == "F1":
                value = skm.f1_score(
                    labels, predictions, average="binary" if binary else "macro", zero_division=0
                )
            else:
                raise KeyError(f"{name} is not a classification metric")
            out[name] = float(value)
    return out


def _regression(
    names: Sequence[str], labels: np.ndarray, predictions: np.ndarray, losses: np.ndarray
) -> dict[str, float]:
    from sklearn import metrics as skm

    functions = {
        "loss": lambda: losses.mean(),
        "MSE": lambda: skm.mean_squared_error(labels, predictions),
        "MAE": lambda: skm.mean_absolute_error(labels, predictions),
        "R2": lambda: skm.r2_score(labels, predictions) if len(labels) > 1 else float("nan"),
    }
    unknown = [name for name in names if name not in functions]
    if unknown:
        raise KeyError(f"{unknown} are not regression metrics")
    return {name: float(functions[name]()) for name in names}


def _specificity(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> float:
    values = []
    for c in range(n_classes):
        negatives = labels != c
        if negatives.any():
            values.append(float((predictions[negatives] != c).mean()))
    return float(np.mean(values)) if values else float("nan")


def _roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    from sklearn import metrics as skm

    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return skm.roc_auc_score(labels, probs[:, 1])
    return skm.roc_auc_score(labels, probs, multi_class="ovr", labels=range(probs.shape[1]))


def details_frame(
    frame: pd.DataFrame,
    indices: np.ndarray,
    labels: np.ndarray,
    outputs: np.ndarray,
    losses: np.ndarray,
    classes: Sequence[str] | None,
) -> pd.DataFrame:
    """Per-image predictions: participant_id, session_id, label, prediction, loss (+ proba<c>)."""
    rows = frame.iloc[indices]
    if reconstruction.is_reconstruction(outputs):
        details = pd.DataFrame(
            {
                "participant_id": rows["participant_id"].to_numpy(),
                "session_id": rows["session_id"].to_numpy(),
                "loss": losses,
            }
        )
        for name in reconstruction.FIELDS:
            details[name] = outputs[name]
        return details
    regression = outputs.ndim == 1
    details = pd.DataFrame(
        {
            "participant_id": rows["participant_id"].to_numpy(),
            "session_id": rows["session_id"].to_numpy(),
            "label": labels if regression else [classes[i] for i in labels],
            "prediction": outputs if regression else [classes[i] for i in outputs.argmax(axis=1)],
            "loss": losses,
        }
    )
    if not regression:
        for i, name in enumerate(classes):
            details[f"proba{name}"] = outputs[:, i]
    return details
