"""Batches, objectives and evaluation: what training and the validate/test steps share.

``predict`` evaluates a network in data order; ``Evaluation`` is the
standalone evaluation of a saved model, emitting the callbacks' evaluation
events as the trainer does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .callbacks import Callback
from .runtime import TrainerState


class Batches:
    """Mini-batches from an in-memory tensor (or a DataLoader over files)."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        device: torch.device,
        num_workers: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.num_workers = num_workers
        self.channels_last = channels_last
        self.pinned = device.type == "cuda"
        if dataset.images is not None and self.pinned:
            dataset.images = dataset.images.pin_memory()

    def memory_format(self, images: torch.Tensor) -> torch.memory_format:
        if not self.channels_last:
            return torch.contiguous_format
        return torch.channels_last if images.dim() == 4 else torch.channels_last_3d

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def plan(self, order: Sequence[int]) -> list[list[int]]:
        order = list(order)
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def iterate(
        self, batches: Sequence[Sequence[int]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
        if hasattr(self.dataset, "batch") and self.num_workers == 0:
            # Sub-samples (patches, slices, rois) cut from the cache one batch at a time.
            source = ((*self.dataset.batch(idx), list(idx)) for idx in map(list, batches))
        elif self.dataset.images is not None and self.num_workers == 0:
            source = (
                (self.dataset.images[idx], self.dataset.labels[idx], list(idx))
                for idx in map(list, batches)
            )
        else:
            from torch.utils.data import DataLoader

            loader = DataLoader(
                self.dataset,
                batch_sampler=[list(b) for b in batches],
                num_workers=self.num_workers,
                pin_memory=self.pinned,
            )
            source = ((x, y, idx.tolist()) for x, y, idx in loader)
        for images, labels, indices in source:
            images = images.to(
                self.device, non_blocking=True, memory_format=self.memory_format(images)
            )
            yield images, labels.to(self.device, non_blocking=True), indices


def recalibrate_batchnorm(
    network: nn.Module, batches: Batches, n_batches: int, dtype: torch.dtype | None
) -> None:
    """Recompute BatchNorm running statistics from training batches (precise BN).

    Running averages trail the weights when they change fast, which makes
    eval-mode predictions swing between epochs. The first ``n_batches`` in
    data order are used (no randomness), with dropout off.
    """
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or n_batches == 0:
        return
    momenta = [m.momentum for m in norms]
    network.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
        m.train()
    plan = batches.plan(range(len(batches.dataset)))[:n_batches]
    with torch.no_grad():
        for images, _, _ in batches.iterate(plan):
            with torch.autocast(batches.device.type, dtype=dtype, enabled=dtype is not None):
                network(images)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    network.train()


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the network's output means: class logits, or a standardized regression target.

    ``target`` (regression only) holds the training labels' mean and standard
    deviation: the loss is the squared error on the standardized target, and
    predictions are given back in the label's units.
    """

    target: dict[str, float] | None = None

    @classmethod
    def of(cls, model: dict[str, Any]) -> Objective:
        """The objective of a MAPS's ``model.json``."""
        return cls(model["target"] if model.get("task") == "regression" else None)

    def loss(self, output: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"):
        output = output.float()
        if self.target is None:
            return nn.functional.cross_entropy(output, labels, reduction=reduction)
        scaled = (labels - self.target["mean"]) / self.target["std"]
        return nn.functional.mse_loss(output[:, 0], scaled, reduction=reduction)

    def outputs(self, output: torch.Tensor) -> np.ndarray:
        """Class probabilities (n, classes), or predictions in the label's units (n,)."""
        output = output.float()
        if self.target is None:
            return torch.softmax(output, dim=1).cpu().numpy()
        return (output[:, 0] * self.target["std"] + self.target["mean"]).cpu().numpy()


def predict(
    network: nn.Module,
    batches: Batches,
    dtype: torch.dtype | None,
    on_batch: Any = None,
    objective: Objective = Objective(),
    share: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate in data order: (indices, labels, outputs, per-image losses).

    Outputs are class probabilities, or predictions for a regression.
    ``share`` restricts the evaluation to those images (a rank's share).
    """
    network.eval()
    all_idx, all_y, all_p, all_l = [], [], [], []
    plan = batches.plan(range(len(batches.dataset)) if share is None else share)
    with torch.inference_mode():
        for images, labels, indices in batches.iterate(plan):
            if on_batch:
                on_batch("start", images, None)
            with torch.autocast(batches.device.type, dtype=dtype, enabled=dtype is not None):
                output = network(images)
            if on_batch:
                on_batch("output", images, output)
            all_idx.append(np.asarray(indices))
            all_y.append(labels.cpu().numpy())
            all_p.append(objective.outputs(output))
            all_l.append(objective.loss(output, labels, reduction="none").cpu().numpy())
            if on_batch:
                on_batch("end", images, output)
    if not all_idx:  # an empty share
        return (np.zeros(0, int), np.zeros(0, int), np.zeros((0, 0)), np.zeros(0))
    return tuple(np.concatenate(a) for a in (all_idx, all_y, all_p, all_l))


class Emitter:
    """Sends callback events: each callback's ``on_<event>(self, **kwargs)``."""

    callbacks: list[Callback]

    def emit(self, event: str, **kwargs: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, **kwargs)


class EvaluationEvents:
    """The per-batch events of an evaluation, emitted by ``predict`` through ``on_batch``."""

    def __init__(self, owner: Any, metric_names: Sequence[str]) -> None:
        self.owner, self.metric_names = owner, list(metric_names)

    def __call__(self, when: str, images: torch.Tensor, output: torch.Tensor | None) -> None:
        emit, state = self.owner.emit, self.owner.state
        if when == "start":
            state.current_val_batch += 1
            emit("on_batch_start", batch=images)
            emit("on_evaluation_step_start", batch=images)
        elif when == "output":
            emit("on_metrics_computation_start", output=output, metrics=self.metric_names)
        else:
            emit("on_metrics_computation_end", detailed_metrics_df=None)
            emit("on_batch_end")


class Evaluation(Emitter):
    """A standalone evaluation of a saved model: the validate and test steps.

    Emits ``on_validate_start`` (``on_test_start`` for a test group), the
    per-batch evaluation events, then ``on_validate_end`` (``on_test_end``)
    with the metrics; ``on_exception`` on any error. Callbacks get this
    object where training passes the trainer: ``state.called`` is
    ``"validate"`` or ``"test"``, ``model`` the evaluated model's name and
    ``data_name`` the data's ("validation", "group-<name>").
    """

    def __init__(
        self,
        *,
        called: str,
        split: int,
        model: str,
        data_name: str,
        network: nn.Module,
        data: Any,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype | None,
        metric_names: Sequence[str],
        objective: Objective,
        callbacks: Sequence[Callback] = (),
        selection_threshold: float = 0.0,
        reference: pd.DataFrame | None = None,
    ) -> None:
        self.selection_threshold, self.reference = selection_threshold, reference
        self.parts: pd.DataFrame | None = None
        self.called, self.model, self.network, self.data = called, model, network, data
        self.data_name = data_name
        self.device, self.dtype, self.objective = device, dtype, objective
        self.metric_names, self.callbacks = list(metric_names), list(callbacks)
        self.batches = Batches(data, batch_size, device)
        self.state = TrainerState(
            called=called, stage=called, split_idx=split, num_val_batches=len(self.batches)
        )

    def run(self) -> tuple[dict[str, float], pd.DataFrame]:
        """The metrics and the per-image details of the model on the data.

        Parts (patches, slices, rois) are voted into images
        (``snakemaps.evaluate.voting``), weighted by ``reference``'s part rows
        (default: these predictions); their own rows are left in ``parts``
        (None for whole images).
        """
        from ..evaluate import voting

        try:
            self.emit(f"on_{self.called}_start")
            indices, labels, outputs, losses = predict(
                self.network,
                self.batches,
                self.dtype,
                EvaluationEvents(self, self.metric_names),
                self.objective,
            )
            values, details, self.parts = voting.evaluate(
                self.data,
                indices,
                labels,
                outputs,
                losses,
                self.metric_names,
                self.selection_threshold,
                self.reference,
            )
            self.emit(f"on_{self.called}_end", metrics=values)
        except BaseException as error:
            self.emit("on_exception", exception=error)
            raise
        return values, details
