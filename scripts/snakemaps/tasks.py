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
    """A random-search run must be of the search's task (its rules and analysis are).

    Every run has the config's ``data.task``: the rules declare the best models
    of its ``train.monitor``, and the analysis ranks the runs by one metric
    (balanced accuracy for classification, loss otherwise). A sampled
    ``network_type`` of another task stops the search with the fix.
    """
    run_task = experiment["data"]["task"]
    network_type = (experiment.get("model") or {}).get("network_type", "cnn")
    if run_task == task and (network_type == "autoencoder") != (task == "reconstruction"):
        if task == "reconstruction":
            fix = (
                "a reconstruction search trains autoencoders only: set network_type to "
                '"autoencoder" in random_search.json, or search the CNNs with data.task: '
                "classification (sampling transfer_learning_path to start them from an "
                "autoencoder)"
            )
        else:
            fix = (
                "to search autoencoders, set data.task: reconstruction and "
                "model.network_type: autoencoder in the config (the runs are then ranked by "
                "their validation loss); to start the CNNs from an autoencoder, train it first "
                "and sample transfer_learning_path"
            )
        raise UserError(
            f"random search {job}: network_type {network_type!r} was sampled, but this "
            f"search's data.task is {task!r}: every run of a search has the config's task. "
            f"Fix: {fix}"
        )
    try:
        check_network_task(experiment.get("model") or {}, run_task)
    except UserError as error:
        raise UserError(f"random search {job}: {error}") from None
    if run_task != task:
        raise UserError(
            f"random search {job}: its data.task is {run_task!r}, but this search trains and "
            f"ranks {task!r} runs; every run of a search has the config's data.task"
        )
