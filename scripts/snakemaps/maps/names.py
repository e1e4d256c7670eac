"""MAPS naming rules: directory names, checkpoint names, metric names.

Names are split on their last ``-`` (``split-0``, ``best-loss``), and
checkpoint names join a split and a model with ``_``
(``split-0_best-BalancedAccuracy``), so a metric name may contain neither.
"""

from __future__ import annotations

import re

from ..errors import UserError

METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
GROUP_NAME = re.compile(r"^[A-Za-z0-9]+$")
MODEL_NAME = re.compile(r"^(?:best-(?P<metric>[A-Za-z][A-Za-z0-9]*)|epoch-(?P<epoch>\d+)|final)$")
CHECKPOINT_NAME = re.compile(r"^split-(?P<split>\d+)_(?P<model>.+)$")
RUN_NAME = re.compile(r"^(?P<kind>train|validate|test)_\d{4}(?:_\d{2}){5}$")


def validate_metric_name(name: str, where: str = "metric") -> str:
    """Return ``name`` if it is a valid MAPS metric name, else raise UserError."""
    if not isinstance(name, str) or not METRIC_NAME.match(name):
        raise UserError(
            f"{where}: invalid metric name {name!r}. MAPS metric names are letters and digits "
            "only, starting with a letter (no '-' or '_', which MAPS uses as separators), "
            "e.g. 'loss' or 'BalancedAccuracy'."
        )
    return name


def validate_group_name(name: str, where: str = "test.groups") -> str:
    if not isinstance(name, str) or not GROUP_NAME.match(name):
        raise UserError(
            f"{where}: invalid test group name {name!r}; use letters and digits only "
            "(it becomes the directory 'group-<name>')."
        )
    return name


def model_dir_name(model: str | int | None = None, *, metric: str | None = None) -> str:
    """``best-<metric>``, ``epoch-<e>`` or ``final`` from a metric, an epoch or a name."""
    if metric is not None:
        return f"best-{validate_metric_name(metric)}"
    if isinstance(model, int):
        return f"epoch-{model}"
    if model is None or not MODEL_NAME.match(model):
        raise UserError(
            f"invalid model name {model!r}: expected 'best-<metric>', 'epoch-<e>' or 'final'"
        )
    return model


def checkpoint_name(split: int, model: str) -> str:
    """``split-<k>_<model>`` as ClinicaDL names checkpoints on the command line."""
    return f"split-{int(split)}_{model_dir_name(model)}"


def parse_checkpoint(name: str) -> tuple[int, str]:
    """Split ``split-<k>_<model>`` into ``(k, model)``; raise UserError if malformed."""
    match = CHECKPOINT_NAME.match(name)
    if not match or not MODEL_NAME.match(match["model"]):
        raise UserError(
            f"invalid checkpoint name {name!r}: expected 'split-<k>_best-<metric>', "
            "'split-<k>_epoch-<e>' or 'split-<k>_final'"
        )
    return int(match["split"]), match["model"]


def parse_model(name: str) -> tuple[str, str | int | None]:
    """``best-loss`` -> ('best', 'loss'); ``epoch-3`` -> ('epoch', 3); ``final`` -> ('final', None)."""
    match = MODEL_NAME.match(name)
    if not match:
        raise UserError(f"invalid model name {name!r}")
    if match["metric"]:
        return "best", match["metric"]
    if match["epoch"]:
        return "epoch", int(match["epoch"])
    return "final", None


def index_of(name: str, prefix: str) -> int | None:
    """The integer after ``<prefix>-`` in a directory name, or None."""
    head, sep, tail = name.rpartition("-")
    if sep and head == prefix and tail.isdigit():
        return int(tail)
    return None
