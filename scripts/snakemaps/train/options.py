"""Checks of the training options that the config schema cannot express alone.

Run when the workflow starts (for the config and for every sampled
random-search run), before any job, so that a bad combination stops the run
with a message naming the key and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data.augmentation import check_names
from ..data.sampler import check_sampler
from ..errors import UserError


def check_train_options(train: Mapping[str, Any], task: str, where: str = "train") -> None:
    """UserError for data_augmentation, sampler or evaluation_steps values that cannot run."""
    check_names(train.get("data_augmentation") or [], f"{where}.data_augmentation")
    sampler = check_sampler(train.get("sampler", "random"))
    if sampler == "weighted" and task not in ("classification", "regression"):
        raise UserError(
            f"{where}.sampler: weighted sampling is defined for classification and regression "
            f"(ClinicaDL's), not for data.task {task!r}; use sampler: random"
        )
    steps = train.get("evaluation_steps", 0)
    accumulation = train.get("accumulation_steps", 1)
    if steps and steps % accumulation:
        raise UserError(
            f"{where}.evaluation_steps = {steps} is not a multiple of {where}.accumulation_steps "
            f"= {accumulation}: validations run after an optimizer step only. Use a multiple "
            f"of {accumulation} (e.g. {accumulation * max(1, round(steps / accumulation))})"
        )


def check_evaluation_steps(steps: int, n_batches: int, interval: int, where: str = "train") -> None:
    """UserError when evaluation_steps would never add a validation inside an epoch."""
    if steps and (steps > n_batches or (steps == n_batches and interval == 1)):
        raise UserError(
            f"{where}.evaluation_steps = {steps} adds no validation: an epoch has {n_batches} "
            f"batch(es) of train.batch_size, and the epoch's end is validated anyway. Use a "
            f"value below {n_batches}, or 0 to validate at epoch ends only"
        )


def mid_epoch_validation(steps: int, done: int, n_batches: int, validate_at_end: bool) -> bool:
    """Whether evaluation_steps asks for a validation after ``done`` batches of an epoch.

    ClinicaDL's rule, (i + 1) % steps == 0 after batch i, checked where an
    optimizer step ended; not after the epoch's last batch when the epoch-end
    validation follows.
    """
    if not steps or done % steps:
        return False
    return done < n_batches or not validate_at_end
