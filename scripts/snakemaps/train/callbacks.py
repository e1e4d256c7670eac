"""Training callbacks: the event list of ClinicaDL's ``Callback``, with state for resume.

Events (in the order the trainer emits them): ``on_train_start`` or
``on_resume``; per epoch ``on_epoch_start``; per batch ``on_batch_start``,
``on_forward_step_start``, ``on_backward_step_start``,
``on_backward_step_end``, ``on_optimization_step_start``,
``on_optimization_step_end``, ``on_batch_end``; then ``on_validation_start``,
per validation batch ``on_batch_start``, ``on_evaluation_step_start``,
``on_metrics_computation_start``, ``on_metrics_computation_end``,
``on_batch_end``; ``on_validation_end``; ``on_epoch_end``; finally
``on_train_end``. The validate and test steps evaluate saved models with
``Evaluation``, which emits ``on_validate_start`` (``on_test_start``), the
per-batch evaluation events above, then ``on_validate_end`` (``on_test_end``).
``on_exception`` follows any uncaught error, and ``on_checkpoint`` each resume
checkpoint written.

Every callback has ``state_dict`` / ``load_state_dict``; the trainer saves
them in each resume checkpoint (``tmp/epoch-<e>/callbacks/<Name>.json``).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .. import io
from ..maps import Maps
from ..ownership import keep_in_tmp
from .metrics import higher_is_better

if TYPE_CHECKING:
    from .trainer import Trainer

logger = logging.getLogger("snakemaps.train")

EVENTS = (
    "on_train_start",
    "on_resume",
    "on_epoch_start",
    "on_batch_start",
    "on_forward_step_start",
    "on_backward_step_start",
    "on_backward_step_end",
    "on_optimization_step_start",
    "on_optimization_step_end",
    "on_batch_end",
    "on_validation_start",
    "on_evaluation_step_start",
    "on_metrics_computation_start",
    "on_metrics_computation_end",
    "on_validation_end",
    "on_epoch_end",
    "on_train_end",
    "on_validate_start",
    "on_validate_end",
    "on_test_start",
    "on_test_end",
    "on_exception",
    "on_checkpoint",
)


class Callback:
    """Base class: override any ``on_<event>(trainer, **kwargs)``."""

    name: str = "Callback"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def save_files(self, directory: Path, trainer: Trainer) -> None:
        """Put files this callback needs on resume into ``directory``."""
        del directory, trainer

    def restore_files(self, directory: Path, trainer: Trainer) -> None:
        del directory, trainer


def _noop(self: Callback, trainer: Trainer, **kwargs: Any) -> None:
    del trainer, kwargs


for _event in EVENTS:
    setattr(Callback, _event, _noop)


class TableLog:
    """A TSV log kept in memory and rewritten atomically at each flush.

    Flushes are atomic (temp file + rename) but not fsynced: each resume
    checkpoint hard-links the log as it stands and fsyncs that snapshot, and
    the end of training flushes with ``durable=True``.
    """

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns, self.rows = path, columns, []

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def flush(self, durable: bool = False) -> None:
        frame = pd.DataFrame(self.rows, columns=self.columns if not self.rows else None)
        io.atomic_write_text(self.path, io.tsv_text(frame), fsync=durable)

    def reload(self, keep, snapshot: Path | None = None) -> int:
        """Load the rows that ``keep(row)`` accepts (resume); return rows dropped.

        ``snapshot`` is the checkpoint's copy of the log; the log itself is
        read where the checkpoint has none.
        """
        source = snapshot if snapshot is not None and snapshot.exists() else self.path
        if not source.exists():
            self.rows = []
            return 0
        rows = io.read_tsv(source).to_dict("records")
        self.rows = [r for r in rows if keep(r)]
        on_disk = len(io.read_tsv(self.path)) if self.path.exists() else len(rows)
        return max(on_disk - len(self.rows), 0)


class ModelCheckpoint(Callback):
    """Keep best-<metric> models (DaCapo's ValidationScores.get_best), chosen epochs, final.

    Best values follow each metric's direction (loss: lower, others: higher).
    Each published model is also hard-linked into ``tmp/published/``, and from
    there into each resume checkpoint, so a resumed run restores exactly the
    best models it had at that checkpoint. The checkpoint never reads the
    published files themselves: they are the rule's declared outputs, which
    Snakemake may delete while a signalled job is still checkpointing.
    """

    name = "ModelCheckpoint"

    def __init__(self, monitor: list[str], save_epochs: list[int], save_last: bool = True) -> None:
        self.monitor, self.save_epochs, self.save_last = (
            monitor,
            sorted(set(save_epochs)),
            save_last,
        )
        self.best: dict[str, dict[str, float | int]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best", {})

    def is_better(self, metric: str, value: float) -> bool:
        if math.isnan(value):
            return False
        if metric not in self.best:
            return True
        old = self.best[metric]["value"]
        return value > old if higher_is_better(metric) else value < old

    def on_validation_end(
        self, trainer: Trainer, metrics: dict[str, float], mid_epoch: bool = False, **_: Any
    ) -> None:
        # Inside an epoch (train.evaluation_steps): the epoch in progress and the batch.
        log = getattr(trainer, "val_log", None)
        row = log.rows[-1] if log is not None and log.rows else {}
        epoch = trainer.state.current_epoch + (1 if mid_epoch else 0)
        where = {"epoch": epoch, **({"batch": row["batch"]} if "batch" in row else {})}
        for metric in self.monitor:
            if self.is_better(metric, metrics[metric]):
                self.best[metric] = {"value": metrics[metric], **where}
                self._publish(trainer, f"best-{metric}.pt")
                logger.info(
                    "new best %s = %.4f at epoch %d%s",
                    metric,
                    metrics[metric],
                    epoch,
                    f", batch {where['batch']}" if mid_epoch else "",
                )

    def on_epoch_end(self, trainer: Trainer, **_: Any) -> None:
        if trainer.state.current_epoch in self.save_epochs:
            self._publish(trainer, f"epoch-{trainer.state.current_epoch}.pt")

    def _publish(self, trainer: Trainer, name: str) -> None:
        """Save the model as ``name`` in the MAPS and keep a link in tmp/published/."""
        path = self._outputs(trainer)[name]
        trainer.save_model(path)
        io.replace_link(path, self._kept(trainer) / name)

    @staticmethod
    def _kept(trainer: Trainer) -> Path:
        return trainer.split_dir.tmp.path / "published"

    def on_train_end(self, trainer: Trainer, **_: Any) -> None:
        # A published model deleted while training ran (a rerun's Snakemake clears
        # the outputs of the job it starts, even one waiting for this one) comes back.
        for name, path in self._outputs(trainer).items():
            if not path.exists():
                io.replace_link(self._kept(trainer) / name, path)
                logger.info("restored %s, deleted while training ran", path)
        if self.save_last:
            trainer.save_model(trainer.split_dir.models.final.model_pt)

    def _outputs(self, trainer: Trainer) -> dict[str, Path]:
        """Name in a checkpoint -> published model, for the models published so far."""
        models = trainer.split_dir.models
        files = {f"best-{m}.pt": models.best_models.metrics[m].model_pt for m in self.best}
        for epoch in self.save_epochs:
            if epoch <= trainer.state.current_epoch:
                files[f"epoch-{epoch}.pt"] = models.checkpoints.epochs[epoch].model_pt
        return files

    def save_files(self, directory: Path, trainer: Trainer) -> None:
        for name in self._outputs(trainer):
            io.replace_link(self._kept(trainer) / name, directory / name)

    def restore_files(self, directory: Path, trainer: Trainer) -> None:
        for name, path in self._outputs(trainer).items():
            io.replace_link(directory / name, path)
            io.replace_link(directory / name, self._kept(trainer) / name)
        # Models published after the checkpoint belong to epochs about to be redone.
        for epoch in self.save_epochs:
            if epoch > trainer.state.current_epoch:
                stale = trainer.split_dir.models.checkpoints.epochs[epoch].path
                shutil.rmtree(stale, ignore_errors=True)


class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved by ``tolerance`` for ``patience`` validations."""

    name = "EarlyStopping"

    def __init__(self, metric: str, patience: int, tolerance: float) -> None:
        self.metric, self.patience, self.tolerance = metric, patience, tolerance
        self.best: float | None = None
        self.bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad = state.get("best"), state.get("bad", 0)

    def on_validation_end(
        self, trainer: Trainer, metrics: dict[str, float], mid_epoch: bool = False, **_: Any
    ) -> None:
        if mid_epoch:  # patience counts epoch-end validations
            return
        value = metrics[self.metric]
        sign = 1 if higher_is_better(self.metric) else -1
        if self.best is None or sign * (value - self.best) > self.tolerance:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.patience and self.bad >= self.patience:
            trainer.state.should_stop = True
            logger.info(
                "early stopping at epoch %d: %s has not improved for %d validations",
                trainer.state.current_epoch,
                self.metric,
                self.bad,
            )


class LRScheduler(Callback):
    """Step a torch LR scheduler each epoch; log rates to learning_rates/<optimizer>.tsv."""

    name = "LRScheduler"

    def __init__(
        self, scheduler: Any, optimizer_name: str, path: Path, monitor: str = "loss"
    ) -> None:
        self.scheduler, self.monitor = scheduler, monitor
        self.log = TableLog(path, ["epoch", "batch", "lr"])
        self.optimizer_name = optimizer_name

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict() if self.scheduler else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def on_optimization_step_end(self, trainer: Trainer, **_: Any) -> None:
        self.log.append(
            {
                "epoch": trainer.state.current_epoch + 1,
                "batch": trainer.state.current_train_batch - 1,  # 0-based, as training_loss.tsv
                "lr": trainer.optimizer.param_groups[0]["lr"],
            }
        )

    def on_validation_end(
        self, trainer: Trainer, metrics: dict[str, float], mid_epoch: bool = False, **_: Any
    ) -> None:
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        if isinstance(self.scheduler, ReduceLROnPlateau) and not mid_epoch:
            self.scheduler.step(metrics[self.monitor])

    def on_epoch_end(self, trainer: Trainer, **_: Any) -> None:
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        if self.scheduler is not None and not isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step()


class ComputationalMonitor(Callback):
    """Seconds per phase and epoch in logs/computational.tsv (GPU time and memory on CUDA)."""

    name = "ComputationalMonitor"
    PHASES = (
        "epoch_time",
        "train_loop",
        "batch_loading",
        "forward",
        "backward",
        "optimization",
        "validation",
        "bn_recalibration",
        "evaluation",
        "metric",
        "checkpoint",
    )

    def __init__(self, path: Path, cuda: bool) -> None:
        self.cuda = cuda
        columns = ["epoch", *self.PHASES, "samples_per_s"]
        if cuda:
            columns += ["gpu_time", "peak_gpu_memory_mib"]
        self.log = TableLog(path, columns)
        self.times: dict[str, float] = {}
        self.samples = 0

    def add(self, phase: str, seconds: float) -> None:
        self.times[phase] = self.times.get(phase, 0.0) + seconds

    def on_epoch_start(self, trainer: Trainer, **_: Any) -> None:
        import torch

        self.times, self.samples = {}, 0
        self.started = time.perf_counter()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.gpu_start = torch.cuda.Event(enable_timing=True)
            self.gpu_end = torch.cuda.Event(enable_timing=True)
            self.gpu_start.record()

    def on_batch_end(self, trainer: Trainer, **_: Any) -> None:
        if trainer.state.stage == "train":  # every rank's batch, as large as this one's
            self.samples += trainer.last_batch_size * trainer.group.world_size

    def on_epoch_end(self, trainer: Trainer, **_: Any) -> None:
        import torch

        self.add("epoch_time", time.perf_counter() - self.started)
        row = {
            "epoch": trainer.state.current_epoch,
            **{p: self.times.get(p, 0.0) for p in self.PHASES},
        }
        row["samples_per_s"] = self.samples / max(self.times.get("train_loop", 0.0), 1e-9)
        if self.cuda:
            self.gpu_end.record()
            torch.cuda.synchronize()
            row["gpu_time"] = self.gpu_start.elapsed_time(self.gpu_end) / 1000
            row["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        self.log.append(row)
        self.log.flush()

    def on_checkpoint(self, trainer: Trainer, seconds: float, **_: Any) -> None:
        """Add the checkpoint's write time to its epoch's row (written after the row)."""
        last = self.log.rows[-1] if self.log.rows else None
        if last is not None and last["epoch"] == trainer.state.current_epoch:
            last["checkpoint"] = last.get("checkpoint", 0.0) + seconds
            self.log.flush()


class ProgressLogger(Callback):
    """Progress lines in the rule's log; summary.log and warning.log of the split."""

    name = "ProgressLogger"

    def __init__(self) -> None:
        self.epoch_losses: list[float] = []
        self.started = time.perf_counter()

    def on_train_start(self, trainer: Trainer, **_: Any) -> None:
        logger.info(
            "split-%d: training %d epochs on %d images (%d batches/epoch), validating on %d "
            "images, device %s",
            trainer.state.split_idx,
            trainer.state.num_epochs,
            trainer.n_train,
            trainer.state.num_train_batches,
            trainer.n_val,
            trainer.device,
        )

    def on_resume(self, trainer: Trainer, checkpoint: Path, **_: Any) -> None:
        logger.info("split-%d: resuming from checkpoint %s", trainer.state.split_idx, checkpoint)

    def on_epoch_start(self, trainer: Trainer, **_: Any) -> None:
        self.epoch_losses, self.epoch_started = [], time.perf_counter()

    def on_optimization_step_end(self, trainer: Trainer, loss: float, **_: Any) -> None:
        self.epoch_losses.append(loss)
        n = trainer.state.num_train_batches
        if n >= 40 and trainer.state.current_train_batch % max(n // 4, 1) == 0:
            logger.info(
                "  epoch %d: batch %d/%d loss %.4f",
                trainer.state.current_epoch + 1,
                trainer.state.current_train_batch,
                n,
                loss,
            )

    def on_validation_end(
        self, trainer: Trainer, metrics: dict[str, float], mid_epoch: bool = False, **_: Any
    ) -> None:
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        train_loss = sum(self.epoch_losses) / max(len(self.epoch_losses), 1)
        if mid_epoch:
            logger.info(
                "split-%d epoch %d, after batch %d: validation %s",
                trainer.state.split_idx,
                trainer.state.current_epoch + 1,
                trainer.state.current_train_batch - 1,
                shown,
            )
            return
        logger.info(
            "split-%d epoch %d/%d: train loss %.4f | validation %s | %.1f s",
            trainer.state.split_idx,
            trainer.state.current_epoch,
            trainer.state.num_epochs,
            train_loss,
            shown,
            time.perf_counter() - self.epoch_started,
        )

    def on_validate_start(self, trainer: Trainer, **_: Any) -> None:
        self.started = time.perf_counter()

    on_test_start = on_validate_start

    def on_validate_end(self, trainer: Trainer, metrics: dict[str, float], **_: Any) -> None:
        """A standalone evaluation's line: split, model, data, metrics and time."""
        logger.info(
            "split-%d %s on %s (%d images): %s | %.1f s",
            trainer.state.split_idx,
            trainer.model,
            trainer.data_name,
            len(trainer.data),
            " ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
            time.perf_counter() - self.started,
        )

    on_test_end = on_validate_end

    def on_train_end(self, trainer: Trainer, **_: Any) -> None:
        checkpoint = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
        lines = [
            f"split-{trainer.state.split_idx}: trained {trainer.state.current_epoch} of "
            f"{trainer.state.num_epochs} epochs on {trainer.device}"
            + (" (stopped early)" if trainer.state.should_stop else ""),
            f"train images: {trainer.n_train}, validation images: {trainer.n_val}",
        ]
        for metric, best in checkpoint.best.items():
            lines.append(f"best {metric}: {best['value']:.4f} at epoch {best['epoch']}")
        text = "\n".join(lines) + "\n"
        Maps.save_file(text, trainer.split_dir.summary_log, overwrite=True)
        Maps.append_log(trainer.maps.summary_log, text.replace("\n", " | ").rstrip(" |"))
        logger.info("%s", text.strip().replace("\n", "; "))


class ResumeCheckpoint(Callback):
    """Write a resume checkpoint to tmp/ every ``every`` epochs; empty tmp/ at the end."""

    name = "ResumeCheckpoint"

    def __init__(self, every: int) -> None:
        self.every = every

    def on_epoch_end(self, trainer: Trainer, **_: Any) -> None:
        epoch = trainer.state.current_epoch
        if epoch % self.every == 0 or trainer.state.should_stop:
            trainer.write_checkpoint()

    def on_train_end(self, trainer: Trainer, **_: Any) -> None:
        if not trainer.group.writer:
            return
        # The split's owner record and lock stay until the training job lets go.
        tmp = trainer.split_dir.tmp.path
        tmp.mkdir(parents=True, exist_ok=True)
        for entry in tmp.iterdir():
            if keep_in_tmp(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
