"""The trainer: one split, callbacks, mixed precision on CUDA, exact resume.

A resume checkpoint (``tmp/epoch-<e>/``) holds the network, optimizer, grad
scaler, trainer state, every callback's state, every random state (Python,
NumPy, torch CPU and CUDA) and the order of the current epoch's batches, so
a run resumed from it continues exactly where the checkpoint was taken; with
``deterministic`` on CPU the final weights are bit-identical to an unbroken
run. Log rows written after the checkpoint are trimmed on resume (DaCapo's
``delete_after``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as io_module
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import io
from ..errors import UserError
from ..evaluate import voting
from ..maps import Maps
from ..maps.tree import TmpEpoch
from .callbacks import (
    Callback,
    ComputationalMonitor,
    TableLog,
)
from .distributed import SINGLE, Group, evaluation_network
from .evaluation import (
    Batches,
    Emitter,
    EvaluationEvents,
    Objective,
    predict,
    recalibrate_batchnorm,
)
from .options import mid_epoch_validation
from .runtime import (
    TrainerState,
    amp_dtype,
    load_maps_weights,
    rng_state,
    set_rng_state,
    state_dict_for_maps,
)

logger = logging.getLogger("snakemaps.train")


class TrainingInterrupted(Exception):
    """Raised after a checkpoint was written on SIGTERM/SIGUSR1; rerun to resume."""


@dataclasses.dataclass
class Settings:
    """Computational and optimisation settings of a run."""

    epochs: int
    batch_size: int
    device: torch.device
    amp: bool = True
    channels_last: bool = True
    accumulation_steps: int = 1
    clip_grad_norm: float | None = None
    max_loss: float = 1000.0
    bn_recalibration_batches: int = 4
    evaluation_interval: int = 1
    # Also validate inside an epoch after batch i when (i + 1) % evaluation_steps == 0
    # and an optimizer step ends there (ClinicaDL's rule); 0: only at epoch ends.
    evaluation_steps: int = 0
    seed: int = 0
    deterministic: bool = False
    num_workers: int = 0


def _torch_bytes(obj: Any) -> bytes:
    buffer = io_module.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class Trainer(Emitter):
    """Train one split of a MAPS, emitting callback events."""

    def __init__(
        self,
        *,
        maps: Maps,
        split: int,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        optimizer_name: str,
        train_data: Any,
        val_data: Any,
        settings: Settings,
        metric_names: Sequence[str],
        callbacks: Sequence[Callback],
        fingerprint: str,
        objective: Objective = Objective(),  # noqa: B008 - a frozen dataclass
        group: Group = SINGLE,
        sampler: Any = None,
        augment: Any = None,
        selection_threshold: float = 0.0,
    ) -> None:
        self.maps, self.split_dir = maps, maps.split(split)
        self.selection_threshold = selection_threshold
        self.group = group
        # Validation and precise BN run on each rank's module, outside DDP.
        self.eval_network = evaluation_network(network)
        self.objective = objective
        self.settings, self.device = settings, settings.device
        self.network, self.optimizer, self.optimizer_name = network, optimizer, optimizer_name
        self.metric_names, self.callbacks, self.fingerprint = (
            list(metric_names),
            list(callbacks),
            fingerprint,
        )
        self.train_data, self.val_data = train_data, val_data
        self.n_train, self.n_val = len(train_data), len(val_data)
        self.dtype = amp_dtype(self.device, settings.amp)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.dtype == torch.float16 and self.device.type == "cuda"
        )
        self.train_batches = Batches(
            train_data,
            settings.batch_size,
            self.device,
            settings.num_workers,
            settings.channels_last,
            augment=augment,
        )
        self.val_batches = Batches(
            val_data, settings.batch_size, self.device, settings.num_workers, settings.channels_last
        )
        self.state = TrainerState(
            num_epochs=settings.epochs,
            split_idx=split,
            num_train_batches=math.ceil(group.num_samples(self.n_train) / settings.batch_size),
            num_val_batches=len(self.val_batches),
        )
        self.generator = torch.Generator().manual_seed(settings.seed)
        # The epoch order (snakemaps.data.sampler.Sampler); None: a permutation.
        self.sampler = sampler
        self.epoch_order: list[int] = []
        self.last_batch_size = 0
        self.interrupt: int | None = None
        self._publishing: _Publisher | None = None
        self.monitor = next(
            (c for c in self.callbacks if isinstance(c, ComputationalMonitor)), None
        )
        logs = self.split_dir.logs
        self.loss_log = TableLog(logs.training_loss_tsv, ["epoch", "batch", "loss"])
        # With validations inside epochs, a batch column says after which batch each ran.
        index = ["epoch", "batch"] if settings.evaluation_steps else ["epoch"]
        self.val_log = TableLog(
            self.split_dir.validation_metrics.aggregated_tsv, [*index, *self.metric_names]
        )
        self.details_log = TableLog(self.split_dir.validation_metrics.details_tsv, index)
        # Patches, slices, rois: their own rows beside the image-level ones (soft voting).
        self.part_logs = voting.part_logs(self.split_dir.validation_metrics, val_data, index)

    # Timing ----------------------------------------------------------------
    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.monitor:
            self.monitor.add(phase, time.perf_counter() - start)

    # Rows kept on resume: those written before the checkpoint --------------
    def keep_train_row(self, row: dict[str, Any]) -> bool:
        done, batch = self.state.current_epoch, self.state.current_train_batch
        return row["epoch"] <= done or (row["epoch"] == done + 1 and row["batch"] < batch)

    def keep_epoch_row(self, row: dict[str, Any]) -> bool:
        return row["epoch"] <= self.state.current_epoch

    # Saving ------------------------------------------------------------------
    def save_model(self, path: Path) -> None:
        Maps.save_file(state_dict_for_maps(self.network), path, overwrite=True)

    def logs(self) -> list[TableLog]:
        """Every log of the run, the callbacks' included."""
        logs = [self.loss_log, self.val_log, self.details_log, *self.part_logs]
        return logs + [
            c.log for c in self.callbacks if isinstance(getattr(c, "log", None), TableLog)
        ]

    def write_checkpoint(self) -> TmpEpoch:
        """Take a resume checkpoint; it is published as tmp/epoch-<e>/ by a background thread.

        Everything is serialized here, in the training thread (the weights and
        optimizer state keep changing after this returns); the logs as they
        stand are hard-linked into the checkpoint. The thread then writes and
        fsyncs the files and publishes the directory with one rename, while the
        next epoch trains. ``finish_checkpoint`` waits for it. Every rank calls
        it; rank 0 gathers their random states and epoch orders and writes.
        """
        self.finish_checkpoint()
        start = time.perf_counter()
        tmp = self.split_dir.tmp
        epoch = self.state.current_epoch
        ranks = self.group.all_gather({"rng": rng_state(), "epoch_order": self.epoch_order})
        if not self.group.writer:
            return tmp.epochs[epoch]
        partial = TmpEpoch(tmp.path / f".epoch-{epoch}.partial")
        shutil.rmtree(partial.path, ignore_errors=True)
        partial.callbacks.mkdir(parents=True)
        blobs: dict[Path, bytes] = {
            partial.model_pt: _torch_bytes(state_dict_for_maps(self.network)),
            partial.optimizer_pt: _torch_bytes({self.optimizer_name: self.optimizer.state_dict()}),
            partial.scaler_pt: _torch_bytes(self.scaler.state_dict()),
            partial.path / "rng.pt": _torch_bytes(
                {
                    "rng": ranks[0]["rng"],
                    "generator": self.generator.get_state(),
                    "epoch_order": torch.tensor(self.epoch_order, dtype=torch.long),
                    **(
                        {
                            "ranks": ranks,
                            "sampler": {
                                "epoch": epoch,
                                "position": self.state.current_train_batch
                                * self.settings.batch_size,
                                "num_replicas": self.group.world_size,
                                "seed": self.settings.seed,
                            },
                        }
                        if self.group.distributed
                        else {}
                    ),
                }
            ),
            partial.state_json: io.json_text(
                {**dataclasses.asdict(self.state), "fingerprint": self.fingerprint}
            ).encode(),
        }
        for callback in self.callbacks:
            blobs[partial.callbacks / f"{callback.name}.json"] = io.json_text(
                callback.state_dict()
            ).encode()
            callback.save_files(partial.callbacks / callback.name, self)
        if self.val_log.rows:
            last = self.val_log.rows[-1]["epoch"]
            rows = pd.DataFrame([r for r in self.val_log.rows if r["epoch"] == last])
            blobs[partial.validation_metrics.aggregated_tsv] = io.tsv_text(rows).encode()
        linked = [
            io.replace_link(log.path, self._log_snapshot(partial, log))
            for log in self.logs()
            if log.path.exists()
        ]
        target = tmp.epochs[epoch]

        def publish() -> None:
            for path, data in blobs.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                io.write_durable(path, data)
            for path in linked:
                io.fsync_file(path)
            for directory in {p.parent for p in [*blobs, *linked]}:
                io._fsync_dir(directory)
            old = tmp.path / f".epoch-{epoch}.old"
            shutil.rmtree(old, ignore_errors=True)
            if target.path.exists():
                os.replace(target.path, old)
            os.replace(partial.path, target.path)
            io._fsync_dir(tmp.path)
            for other in tmp.epochs_list:
                if other != epoch:
                    shutil.rmtree(tmp.epochs[other].path, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)

        self._publishing = _Publisher(publish, target)
        self.emit("on_checkpoint", checkpoint=target.path, seconds=time.perf_counter() - start)
        return target

    def finish_checkpoint(self, raise_error: bool = True) -> None:
        """Wait until the last checkpoint is published; re-raise what went wrong there."""
        publishing, self._publishing = self._publishing, None
        if publishing is not None:
            publishing.wait(raise_error)

    def _log_snapshot(self, checkpoint: TmpEpoch, log: TableLog) -> Path:
        """Where a checkpoint keeps its copy of ``log``: logs/<path in the split>."""
        return checkpoint.path / "logs" / log.path.relative_to(self.split_dir.path)

    def latest_checkpoint(self) -> TmpEpoch | None:
        tmp = self.split_dir.tmp
        if not tmp.exists():
            return None
        for old in sorted(tmp.path.glob(".epoch-*.old")):  # a swap cut short
            name = old.name.removeprefix(".").removesuffix(".old")
            if not (tmp.path / name).exists():
                os.replace(old, tmp.path / name)
        epochs = tmp.epochs_list
        return tmp.epochs[epochs[-1]] if epochs else None

    def load_checkpoint(self, checkpoint: TmpEpoch) -> None:
        state = io.read_json(checkpoint.state_json)
        recorded = state.pop("fingerprint", None)
        if recorded != self.fingerprint:
            raise UserError(
                f"the resume checkpoint {checkpoint.path} was written with another configuration "
                "or split manifest than this run's. Restore that configuration to resume, or "
                f"delete {self.split_dir.tmp.path} to train split-{self.state.split_idx} from "
                "scratch."
            )
        self.state = TrainerState(**state)
        load_maps_weights(self.network, checkpoint.model_pt)
        optim = torch.load(checkpoint.optimizer_pt, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(optim[self.optimizer_name])
        self.scaler.load_state_dict(torch.load(checkpoint.scaler_pt, weights_only=True))
        saved = torch.load(checkpoint.path / "rng.pt", weights_only=False)
        mine = saved["ranks"][self.group.rank] if self.group.distributed else saved
        set_rng_state(mine["rng"])
        self.generator.set_state(saved["generator"])
        self.epoch_order = list(map(int, mine["epoch_order"]))
        for callback in self.callbacks:
            path = checkpoint.callbacks / f"{callback.name}.json"
            if path.exists():
                callback.load_state_dict(io.read_json(path))
            callback.restore_files(checkpoint.callbacks / callback.name, self)
        # Logs with a batch column have a row per optimisation step, the others per epoch.
        dropped = sum(
            log.reload(
                self.keep_train_row if "batch" in log.columns else self.keep_epoch_row,
                self._log_snapshot(checkpoint, log),
            )
            for log in self.logs()
        )
        logger.info(
            "split-%d: resumed at epoch %d (batch %d of the next); trimmed %d log row(s) written "
            "after the checkpoint",
            self.state.split_idx,
            self.state.current_epoch,
            self.state.current_train_batch,
            dropped,
        )

    def flush_logs(self, durable: bool = False) -> None:
        """Write every log, the callbacks' included, as it stands (rank 0)."""
        if not self.group.writer:
            return
        for log in self.logs():
            log.flush(durable)

    # Signals -----------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        logger.warning("received %s: checkpointing after this batch", signal.Signals(signum).name)
        self.interrupt = signum

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        handled = [s for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)]
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    # The loop ------------------------------------------------------------------
    def fit(self) -> None:
        # Rank 0 finds (and repairs) the checkpoint; every rank resumes from it.
        found = self.latest_checkpoint() if self.group.writer else None
        found = self.group.broadcast(None if found is None else str(found.path))
        checkpoint = None if found is None else TmpEpoch(Path(found))
        try:
            with self.signals():
                if checkpoint is not None:
                    self.emit("on_resume", checkpoint=checkpoint.path)
                    self.load_checkpoint(checkpoint)
                else:
                    self.clear_outputs()
                    self.emit("on_train_start")
                while (
                    self.state.current_epoch < self.state.num_epochs and not self.state.should_stop
                ):
                    self.train_epoch()
                self.finish_checkpoint()
                self.state.stage = "end"
                self.emit("on_train_end")
                self.flush_logs(durable=True)
        except BaseException as error:
            self.finish_checkpoint(raise_error=False)
            self.emit("on_exception", exception=error)
            raise

    def clear_outputs(self) -> None:
        """A fresh start: remove what an earlier run of this split left."""
        if not self.group.writer:
            return
        split = self.split_dir
        for path in (split.logs.path, split.models.path, split.validation_metrics.path):
            shutil.rmtree(path, ignore_errors=True)

    def train_epoch(self) -> None:
        state, settings = self.state, self.settings
        resuming_mid_epoch = state.current_train_batch > 0 and self.epoch_order
        self.emit("on_epoch_start")
        if not resuming_mid_epoch:
            self.epoch_order = (
                self.sampler.order(state.current_epoch, self.generator)
                if self.sampler is not None
                else self.group.order(
                    self.n_train, state.current_epoch, settings.seed, self.generator
                )
            )
            state.current_train_batch = 0
        plan = self.train_batches.plan(self.epoch_order)
        state.stage = "train"
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        loop_start = time.perf_counter()
        accumulated: list[float] = []
        batches = self.train_batches.iterate(
            plan[state.current_train_batch :], state.current_epoch, state.current_train_batch
        )
        validate_at_end = (
            state.current_epoch + 1
        ) % settings.evaluation_interval == 0 or state.current_epoch + 1 == state.num_epochs
        while True:
            with self.timed("batch_loading"):
                batch = next(batches, None)
            if batch is None:
                break
            images, labels, _ = batch
            self.last_batch_size = len(labels)
            step_ends = (
                state.current_train_batch + 1
            ) % settings.accumulation_steps == 0 or state.current_train_batch + 1 == len(plan)
            self.emit("on_batch_start", batch=batch)
            self.emit("on_forward_step_start", batch=batch)
            with self.group.no_sync(self.network, step_ends):
                with (
                    self.timed("forward"),
                    torch.autocast(
                        self.device.type, dtype=self.dtype, enabled=self.dtype is not None
                    ),
                ):
                    loss = self.objective.loss(self.network(images), labels, inputs=images)
                self.emit("on_backward_step_start", loss=loss, grad_scaler=self.scaler)
                with self.timed("backward"):
                    self.scaler.scale(loss / settings.accumulation_steps).backward()
            self.emit("on_backward_step_end")
            # Mean over ranks; a signal any rank caught stops every rank after this batch.
            value, stop = self.group.sync_batch(loss.item(), self.interrupt)
            accumulated.append(value)
            state.current_train_batch += 1
            if step_ends:
                self.emit(
                    "on_optimization_step_start",
                    optimizers={self.optimizer_name: self.optimizer},
                    grad_scaler=self.scaler,
                )
                with self.timed("optimization"):
                    if settings.clip_grad_norm:
                        self.scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(self.network.parameters(), settings.clip_grad_norm)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                state.optim_step += 1
                mean_loss = float(np.mean(accumulated))
                accumulated = []
                if not np.isfinite(mean_loss) or mean_loss > settings.max_loss:
                    raise FloatingPointError(
                        f"split-{state.split_idx}: the training diverged: loss {mean_loss:.4g} at "
                        f"epoch {state.current_epoch + 1}, batch {state.current_train_batch} "
                        f"(train.max_loss is {settings.max_loss:g}); lower train.learning_rate "
                        "or set train.clip_grad_norm"
                    )
                self.loss_log.append(
                    {
                        "epoch": state.current_epoch + 1,
                        "batch": state.current_train_batch - 1,
                        "loss": mean_loss,
                    }
                )
                self.emit(
                    "on_optimization_step_end",
                    optimizers={self.optimizer_name: self.optimizer},
                    grad_scaler=self.scaler,
                    loss=mean_loss,
                )
                if mid_epoch_validation(
                    settings.evaluation_steps, state.current_train_batch, len(plan), validate_at_end
                ):
                    self.validation(mid_epoch=True)
                    state.stage = "train"
            self.emit("on_batch_end")
            if stop is not None:
                self.flush_logs()
                checkpoint = self.write_checkpoint()
                self.finish_checkpoint()
                raise TrainingInterrupted(
                    f"stopped by signal {stop}; checkpoint {checkpoint.path} written. "
                    "Rerun the same snakemake command to resume."
                )
        if self.monitor:
            self.monitor.add("train_loop", time.perf_counter() - loop_start)
        state.current_epoch += 1
        state.current_train_batch = 0
        self.epoch_order = []
        if validate_at_end:
            self.validation()
        self.flush_logs()
        self.emit("on_epoch_end")

    def validation(self, mid_epoch: bool = False) -> dict[str, float]:
        """Validate; ``mid_epoch``: inside an epoch (train.evaluation_steps).

        A row's ``epoch`` is the epoch (1-based) during or after which it ran;
        with evaluation steps, ``batch`` is the (0-based) batch after which it
        ran, as in training_loss.tsv.
        """
        state = self.state
        state.stage = "validation"
        state.current_val_batch = 0
        self.emit("on_validation_start")
        start = time.perf_counter()
        with self.timed("bn_recalibration"):
            recalibrate_batchnorm(
                self.eval_network,
                self.train_batches,
                self.settings.bn_recalibration_batches,
                self.dtype,
            )
        with self.timed("evaluation"):
            # Each rank predicts its share; every rank gets all predictions, in data order.
            indices, labels, outputs, losses = self.group.gather_predictions(
                predict(
                    self.eval_network,
                    self.val_batches,
                    self.dtype,
                    EvaluationEvents(self, self.metric_names),
                    self.objective,
                    self.group.shard(self.n_val),
                )
            )
        with self.timed("metric"):
            values, details, parts = voting.evaluate(
                self.val_data,
                indices,
                labels,
                outputs,
                losses,
                self.metric_names,
                self.selection_threshold,
            )
        where = {"epoch": state.current_epoch + (1 if mid_epoch else 0)}
        if self.settings.evaluation_steps:
            where["batch"] = (
                state.current_train_batch if mid_epoch else state.num_train_batches
            ) - 1
        for position, (column, value) in enumerate(where.items()):
            details.insert(position, column, value)
        self.val_log.append({**where, **values})
        self.details_log.rows.extend(details.to_dict("records"))
        if parts is not None:
            for position, (column, value) in enumerate(where.items()):
                parts.insert(position, column, value)
            voting.prune_part_log(self.part_logs[0], self.callbacks)
            self.part_logs[0].rows.extend(parts.to_dict("records"))
        if self.monitor:
            self.monitor.add("validation", time.perf_counter() - start)
        self.emit("on_validation_end", metrics=values, mid_epoch=mid_epoch)
        self.network.train()
        return values


class _Publisher:
    """Runs ``publish`` in a thread; ``wait`` joins it and re-raises its error."""

    def __init__(self, publish: Any, target: TmpEpoch) -> None:
        self.error: BaseException | None = None
        self.target = target

        def run() -> None:
            try:
                publish()
            except Exception as error:  # noqa: BLE001 - re-raised in the training thread
                self.error = error

        self.thread = threading.Thread(target=run, name=f"checkpoint {target.path.name}")
        self.thread.start()

    def wait(self, raise_error: bool = True) -> None:
        self.thread.join()
        if self.error is not None and raise_error:
            raise OSError(
                f"writing the resume checkpoint {self.target.path} failed: {self.error}"
            ) from self.error
