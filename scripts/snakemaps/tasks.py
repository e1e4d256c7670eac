"""Learning tasks: classification of a categorical label, regression of a number,
reconstruction of the image (an autoencoder, ``model.network_type: autoencoder``).

Torch-free: the workflow reads the defaults here while it builds the DAG.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

# train.metrics / train.monitor when the config leaves them null.
DEFAULT_METRICS = {
    "classification": [
        "loss",
        "Accuracy",
        "BalancedAccuracy",
        "Sensitivity",
        "Specificity",
        "RocAuc",
        "F1",
    ],
    "regression": ["loss", "MAE", "MSE", "R2"],
    "reconstruction": ["loss", "MSE", "PSNR", "SSIM"],
}
DEFAULT_MONITOR = {
    "classification": ["loss", "BalancedAccuracy"],
    "regression": ["loss", "MAE"],
    "reconstruction": ["loss"],
}


def resolve_defaults(config: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Fill ``train.metrics`` and ``train.monitor`` from ``data.task`` where they are null."""
    task = config["data"]["task"]
    train = config["train"]
    if train.get("metrics") is None:
        train["metrics"] = list(DEFAULT_METRICS[task])
    if train.get("monitor") is None:
        train["monitor"] = list(DEFAULT_MONITOR[task])
    return config
