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
        augment: Any = None,
    ) -> None:
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.num_workers = num_workers
        # Training batches only: augment(images, epoch, positions) (snakemaps.data.augmentation).
        self.augment = augment or None
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
        self, batches: Sequence[Sequence[int]], epoch: int | None = None, first: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
        """The batches, on the device; augmented when ``epoch`` is given and ``augment`` set.

        ``first`` is the index of the first of ``batches`` in the epoch's plan:
        sample ``j`` of batch ``b`` is at position ``(first + b) * batch_size + j``
        of the epoch, which seeds its augmentation.
        """
        augment = self.augment if epoch is not None else None
        batches = [list(b) for b in batches]
        positions = [
            range((first + b) * self.batch_size, (first + b) * self.batch_size + len(idx))
            for b, idx in enumerate(batches)
        ]
        # Workers only where there is per-sample work: files to read, samples to augment.
        in_process = self.num_workers == 0 or augment is None
        source = None
        if hasattr(self.dataset, "batch") and in_process:
            # Sub-samples (patches, slices, rois) cut from the cache one batch at a time.
            source = ((*self.dataset.batch(idx), idx) for idx in batches)
        elif self.dataset.images is not None and in_process:
            source = ((self.dataset.images[idx], self.dataset.labels[idx], idx) for idx in batches)
        if source is not None and augment is not None:
            source = (
                (augment(x, epoch, where), y, idx) for (x, y, idx), where in zip(source, positions)
            )
        if source is None:
            from torch.utils.data import DataLoader

            dataset, sampler = self.dataset, batches
            if augment is not None:  # each worker augments its samples
                dataset = AugmentedSamples(self.dataset, augment, epoch)
                sampler = [list(zip(idx, where)) for idx, where in zip(batches, positions)]
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=self.num_workers,
                pin_memory=self.pinned,
                # The workers' base seed from a generator of its own: the global
                # random state (dropout) is the same with and without workers.
                generator=torch.Generator().manual_seed(0),
            )
            source = ((x, y, idx.tolist()) for x, y, idx in loader)
        for images, labels, indices in source:
            images = images.to(
                self.device, non_blocking=True, memory_format=self.memory_format(images)
            )
            yield images, labels.to(self.device, non_blocking=True), indices


class AugmentedSamples(torch.utils.data.Dataset):
    """``dataset`` read by ``(index, position)``, each sample augmented (DataLoader workers)."""

    def __init__(self, dataset: Any, augment: Any, epoch: int) -> None:
        self.dataset, self.augment, self.epoch = dataset, augment, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, Any, int]:
        index, position = key
        image, label, index = self.dataset[index]
        return self.augment.one(image, self.epoch, position).to(image.dtype), label, index


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
    """What the network's output means: class logits, a standardized regression target,
    or a reconstruction of the input (``snakemaps.train.reconstruction``).

    ``target`` (regression only) holds the training labels' mean and standard
    deviation: the loss is the squared error on the standardized target, and
    predictions are given back in the label's units. A reconstruction's loss
    is the mean squared error per voxel against ``inputs``, and its outputs
    are per-image MSE, PSNR and SSIM.
    """

    target: dict[str, float] | None = None
    reconstruction: bool = False

    @classmethod
    def of(cls, model: dict[str, Any]) -> Objective:
        """The objective of a MAPS's ``model.json``."""
        task = model.get("task")
        return cls(
            model["target"] if task == "regression" else None,
            reconstruction=task == "reconstruction",
        )

    def loss(
        self,
        output: torch.Tensor,
        labels: torch.Tensor,
        reduction: str = "mean",
        inputs: torch.Tensor | None = None,
    ):
        output = output.float()
        if self.reconstruction:
            from .reconstruction import voxel_mse

            per_image = voxel_mse(output, inputs)
            return per_image.mean() if reduction == "mean" else per_image
        if self.target is None:
            return nn.functional.cross_entropy(output, labels, reduction=reduction)
        scaled = (labels - self.target["mean"]) / self.target["std"]
        return nn.functional.mse_loss(output[:, 0], scaled, reduction=reduction)

    def outputs(self, output: torch.Tensor, inputs: torch.Tensor | None = None) -> np.ndarray:
        """Class probabilities (n, classes), predictions in the label's units (n,), or
        per-image reconstruction metrics (a structured array)."""
        output = output.float()
        if self.reconstruction:
            from .reconstruction import per_image

            return per_image(output, inputs)
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
            all_p.append(objective.outputs(output, images))
            all_l.append(
                objective.loss(output, labels, reduction="none", inputs=images).cpu().numpy()
            )
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
