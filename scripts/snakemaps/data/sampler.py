"""The order of the training samples in each epoch: ``train.sampler``.

- ``random``: a permutation (DistributedSampler's shard when several ranks train).
- ``weighted``: ClinicaDL's class-balanced sampling, a ``WeightedRandomSampler``
  drawing as many samples as there are, with replacement, each sample weighted
  by ``1 / count(its class)`` among the training samples (ClinicaDL 1.6
  ``generate_sampler`` in ``utils/task_manager/classification.py``). For a
  regression the labels are cut into 5 equal-width bins from the minimum to the
  maximum and the weight is ``1 / count(bin)`` (``regression.py``). A data set
  of several samples per image (patches, slices) weights each sample by its
  image's label, as ClinicaDL repeats the image weight: the probabilities are
  the same.

The draw uses the trainer's generator, saved in every resume checkpoint with
the epoch's order, so a resumed run draws what the unbroken run drew. With
several ranks, every rank draws the same ``world_size * ceil(n / world_size)``
samples and takes every ``world_size``-th one from its rank on, as
DistributedSampler shares a permutation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UserError
from ..train.callbacks import Callback, TableLog

SAMPLERS = ("random", "weighted")
REGRESSION_BINS = 5
# The float column of the training data.tsv that dataloader.json's
# sampling_weights names (ClinicaDL 2.0's DataLoaderConfig).
WEIGHT_COLUMN = "sampling_weight"


def class_weights(labels: Sequence[Any]) -> np.ndarray:
    """Per-sample weights ``1 / count(class)`` (ClinicaDL's classification sampler)."""
    values = list(labels)
    counts: dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return np.array([1.0 / counts[value] for value in values], dtype=float)


def regression_weights(labels: Sequence[float], n_bins: int = REGRESSION_BINS) -> np.ndarray:
    """Per-sample weights ``1 / count(bin)``, ``n_bins`` equal-width bins (ClinicaDL's)."""
    values = np.asarray(labels, dtype=float)
    low, high = float(values.min()), float(values.max())
    thresholds = np.array([low + i * (high - low) / n_bins for i in range(n_bins)])
    keys = np.array([int(np.max(np.where(value >= thresholds)[0])) for value in values])
    counts = np.bincount(keys, minlength=n_bins)
    return 1.0 / counts[keys]


def sampling_weights(labels: Sequence[Any], task: str) -> np.ndarray:
    """ClinicaDL's weights for ``task`` (classification or regression)."""
    if task == "classification":
        return class_weights(labels)
    if task == "regression":
        return regression_weights(labels)
    raise UserError(
        f"train.sampler: weighted sampling is defined for classification and regression, not "
        f"for the task {task!r} (as in ClinicaDL); set train.sampler: random"
    )


def check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise UserError(f"train.sampler: {name!r} is not one of {', '.join(SAMPLERS)}")
    return name


class Sampler:
    """``order(epoch, generator)``: this rank's training samples of ``epoch``, in order."""

    def __init__(
        self, name: str, n: int, group: Any, seed: int, weights: Sequence[float] | None = None
    ) -> None:
        self.name, self.n, self.group, self.seed = check_sampler(name), n, group, seed
        self.weights = None if weights is None else np.asarray(weights, dtype=float)
        if self.name == "weighted" and (self.weights is None or len(self.weights) != n):
            raise ValueError("a weighted sampler needs one weight per training sample")

    def order(self, epoch: int, generator: Any) -> list[int]:
        if self.name == "random":
            return self.group.order(self.n, epoch, self.seed, generator)
        import torch

        world = self.group.world_size
        total = world * -(-self.n // world)
        drawn = torch.multinomial(
            torch.as_tensor(self.weights, dtype=torch.double),
            total,
            replacement=True,
            generator=generator,
        ).tolist()
        return drawn[self.group.rank :: world]

    def describe(self) -> dict[str, Any]:
        return {"sampler": self.name, "sampling_weights": self.weights is not None}


class SampledLabels(Callback):
    """A callback: logs/sampling.tsv, how many samples of each class each epoch drew.

    One row per epoch (``epoch`` 1-based, then one column per class), counted
    when the epoch's first batch starts and written when the epoch ends; the
    count waiting in between is part of the callback's state, so a resume
    checkpoint taken inside the epoch keeps it.
    """

    name = "SampledLabels"

    def __init__(self, path: Any, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.log = TableLog(path, ["epoch", *self.classes])
        self.pending: dict[str, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"pending": self.pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = state.get("pending")

    def on_batch_start(self, trainer: Any, **_: Any) -> None:
        if trainer.state.stage != "train" or self.pending is not None:
            return
        labels = trainer.train_data.labels[trainer.epoch_order].tolist()
        counts = np.bincount(labels, minlength=len(self.classes))
        self.pending = dict(zip(self.classes, map(int, counts)))

    def on_epoch_end(self, trainer: Any, **_: Any) -> None:
        if self.pending is not None:
            self.log.append({"epoch": trainer.state.current_epoch, **self.pending})
            self.pending = None
            self.log.flush()  # on disk before this epoch's resume checkpoint links it
