"""Classification metrics (scikit-learn) with MAPS-safe names and directions."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from ..errors import UserError
from ..maps.names import validate_metric_name

# name -> (higher is better, description for metrics.json)
METRICS: dict[str, tuple[bool, str]] = {
    "loss": (False, "mean cross-entropy"),
    "Accuracy": (True, "sklearn.metrics.accuracy_score"),
    "BalancedAccuracy": (True, "sklearn.metrics.balanced_accuracy_score"),
    "Sensitivity": (True, "recall of the positive class (macro over classes if more than 2)"),
    "Specificity": (True, "recall of the negative class (macro over classes if more than 2)"),
    "RocAuc": (True, "sklearn.metrics.roc_auc_score (one-vs-rest if more than 2 classes)"),
    "F1": (True, "sklearn.metrics.f1_score (macro if more than 2 classes)"),
    "MSE": (False, "mean squared error of the predicted class index"),
    "MAE": (False, "mean absolute error of the predicted class index"),
}


def check_metric_names(names: Sequence[str], key: str) -> list[str]:
    for name in names:
        validate_metric_name(name, where=key)
        if name not in METRICS:
            raise UserError(f"{key}: unknown metric {name!r}; choose among {', '.join(METRICS)}")
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
    names: Sequence[str], labels: np.ndarray, probs: np.ndarray, losses: np.ndarray
) -> dict[str, float]:
    """Every requested metric from labels, class probabilities and per-image losses."""
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
            elif name == "MSE":
                value = skm.mean_squared_error(labels, predictions)
            elif name == "MAE":
                value = skm.mean_absolute_error(labels, predictions)
            else:
                raise KeyError(name)
            out[name] = float(value)
    return out


def _specificity(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> float:
    values = []
    for c in range(n_classes):
        negatives = labels != c
        if negatives.any():
            values.append(float((predictions[negatives] != c).mean()))
    return float(np.mean(values)) if values else float("nan")


def _roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return skm.roc_auc_score(labels, probs[:, 1])
    return skm.roc_auc_score(labels, probs, multi_class="ovr", labels=range(probs.shape[1]))


def details_frame(
    frame: pd.DataFrame,
    indices: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    losses: np.ndarray,
    classes: Sequence[str],
) -> pd.DataFrame:
    """Per-image predictions: participant_id, session_id, label, prediction, loss, proba_<c>."""
    rows = frame.iloc[indices]
    details = pd.DataFrame(
        {
            "participant_id": rows["participant_id"].to_numpy(),
            "session_id": rows["session_id"].to_numpy(),
            "label": [classes[i] for i in labels],
            "prediction": [classes[i] for i in probs.argmax(axis=1)],
            "loss": losses,
        }
    )
    for i, name in enumerate(classes):
        details[f"proba{name}"] = probs[:, i]
    return details
