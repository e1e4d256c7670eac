"""Learning tasks: classification of a categorical label, regression of a number,
reconstruction of the image (an autoencoder, ``model.network_type: autoencoder``).

Torch-free: the workflow reads the defaults here while it builds the DAG.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from .errors import UserError

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


def check_network_task(model: Mapping[str, Any], task: str) -> None:
    """An autoencoder reconstructs (data.task reconstruction); a CNN does not."""
    network_type = model.get("network_type", "cnn")
    if (network_type == "autoencoder") != (task == "reconstruction"):
        raise UserError(
            f"model.network_type is {network_type!r} but data.task is {task!r}: an "
            "autoencoder is trained on data.task: reconstruction and a reconstruction needs "
            "model.network_type: autoencoder; set both, or neither"
        )


def check_search_run(job: str, experiment: Mapping[str, Any], task: str) -> None:
    """A random-search run must be of the search's task (its rules and analysis are)."""
    run_task = experiment["data"]["task"]
    try:
        check_network_task(experiment.get("model") or {}, run_task)
    except UserError as error:
        raise UserError(f"random search {job}: {error}") from None
    if run_task != task:
        raise UserError(
            f"random search {job}: the sampled network_type makes it a {run_task} run, but "
            f"this search trains and ranks {task} runs (the best models of train.monitor "
            f"{list(experiment['train']['monitor'] or [])}, ranked by balanced accuracy). "
            "Leave autoencoder out of network_type in random_search.json: train the "
            "autoencoder as an experiment of its own, then sample transfer_learning_path "
            "to start the search's CNNs from it"
        )
