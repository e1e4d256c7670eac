"""Training of one split (torch is imported only when a function here is called)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..maps import Maps

logger = logging.getLogger("snakemaps.train")

# Settings that change how a run computes but not what it computes: a resume
# may use other values (another GPU node, more threads).
NON_SEMANTIC = ("device", "num_workers", "compile")


def build_optimizer(name: str, parameters: Any, lr: float, weight_decay: float) -> Any:
    import torch

    if name == "SGD":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return getattr(torch.optim, name)(parameters, lr=lr, weight_decay=weight_decay)


def build_scheduler(optimizer: Any, config: Mapping[str, Any], epochs: int) -> Any:
    from torch.optim import lr_scheduler

    name = config.get("name")
    if name is None:
        return None
    if name == "StepLR":
        return lr_scheduler.StepLR(optimizer, step_size=config["step_size"], gamma=config["gamma"])
    if name == "CosineAnnealingLR":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return lr_scheduler.ReduceLROnPlateau(optimizer, factor=config["gamma"])


def train_split(
    maps_dir: str | Path,
    split: int,
    train: Mapping[str, Any],
    threads: int = 1,
    failure_marker: str | Path | None = None,
    tracking: Mapping[str, Any] | None = None,
    tracked_config: Mapping[str, Any] | None = None,
    search_run: str | None = None,
    log_file: str | Path | None = None,
) -> Path:
    """Train split ``split`` of the MAPS (resuming from tmp/ if a checkpoint exists).

    ``train`` is the ``train`` section of the configuration. The network comes
    from the MAPS's ``model.json``; the data from the split manifest. If the
    run diverges or runs out of memory and ``failure_marker`` is given (random
    search), the reason is written there before the error is raised. With
    ``train.distributed`` asking for more than one process, the ranks are
    started here (``snakemaps.train.distributed``; rank 0 appends to
    ``log_file``) and ``threads`` are shared among this node's ranks.

    ``tracking`` is the config's ``tracking`` section: with ``mlflow`` true the
    training is logged to MLflow (``snakemaps.train.tracking``), with the
    ``train`` section, ``model.json`` and ``tracked_config`` (other config
    sections, e.g. data and split) as parameters, and the random-search run
    folder ``search_run`` (``<launch_dir>/job-<i>``) as tags.

    Only one job trains a split at a time (``snakemaps.ownership``): a job
    that finds another one training it waits for it, and has nothing left to
    do if that job finished the split meanwhile. The lock is held here, by the
    job, for all of its ranks.
    """
    import os

    from ..ownership import own_split
    from . import distributed

    split_dir = Maps(maps_dir).split(split)
    final = split_dir.models.final.model_pt
    before = _stamp(final)
    kwargs = {
        "maps_dir": str(maps_dir),
        "split": split,
        "train": dict(train),
        "failure_marker": str(failure_marker) if failure_marker else None,
        "tracking": dict(tracking) if tracking else None,
        "tracked_config": dict(tracked_config) if tracked_config else None,
        "search_run": search_run,
    }
    with own_split(split_dir.tmp.path, split) as ownership:
        if ownership.waited_for is not None and final.exists() and _stamp(final) != before:
            # That job validated the models too, as the end of its training.
            logger.info(
                "split-%d was finished by the job this one waited for: nothing left to train",
                split,
            )
            return final
        if distributed.world_size(train["distributed"]) == 1:
            train_rank(threads=threads, **kwargs)
        else:
            distributed.launch(
                kwargs, train, threads, os.environ, str(log_file) if log_file else None
            )
        validate_split(maps_dir, split, train, threads)
        return final


def validate_split(
    maps_dir: str | Path, split: int, train: Mapping[str, Any], threads: int
) -> None:
    """The end of a train job: ``validation_metrics/`` beside every model the split saved.

    Mostly training's own validation rows of that epoch (the same weights);
    a model training did not validate is evaluated afresh, and one already
    evaluated is kept (``snakemaps.evaluate.validate_checkpoints``).
    """
    from ..evaluate import saved_models, validate_checkpoints

    validate_checkpoints(
        maps_dir,
        split,
        saved_models(train),
        device=train["device"],
        batch_size=train["batch_size"],
        threads=threads,
    )


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def train_rank(
    maps_dir: str | Path,
    split: int,
    train: Mapping[str, Any],
    threads: int = 1,
    failure_marker: str | Path | None = None,
    tracking: Mapping[str, Any] | None = None,
    tracked_config: Mapping[str, Any] | None = None,
    search_run: str | None = None,
    group: Any = None,
) -> Path:
    """Train split ``split`` in this process: alone, or as one rank of ``group``."""
    import torch

    from .. import io
    from ..data.extraction import recorded
    from ..data.subsamples import dataset
    from ..models.network import build_network, memory_format, summary
    from ..split import load_manifest, split_frame
    from .callbacks import (
        ComputationalMonitor,
        EarlyStopping,
        LRScheduler,
        ModelCheckpoint,
        ProgressLogger,
        ResumeCheckpoint,
    )
    from .distributed import SINGLE
    from .evaluation import Objective
    from .runtime import fingerprint, resolve_device, seed_everything
    from .trainer import Settings, Trainer

    group = group or SINGLE
    maps = Maps(maps_dir)
    split_dir = maps.split(split)
    torch.set_num_threads(threads)
    device = group.device or resolve_device(train["device"])
    seed = train["seed"] + split
    # Every rank its own random stream (dropout, augmentation); DDP gives all
    # ranks rank 0's initial weights.
    seed_everything(seed + group.rank, train["deterministic"])
    manifest = load_manifest(maps_dir)
    model = io.read_json(maps.model_json)
    classes = model["classes"]
    extraction, record = recorded(maps_dir)
    network_type = record["network_type"]
    train_data = dataset(split_frame(maps_dir, split, "train"), classes, extraction, network_type)
    val_data = dataset(
        split_frame(maps_dir, split, "validation"), classes, extraction, network_type
    )
    sampler, augment = training_order(train, model, train_data, group, seed, network_type)

    network = build_network(model["network"])
    transferred = transfer_into(network, train, split, model["network"])
    channels_last = train["channels_last"]
    network = network.to(device, memory_format=memory_format(model["network"], channels_last))
    if group.writer:
        with io.locked(maps.nn_summary_txt):
            if not maps.nn_summary_txt.exists():
                Maps.save_file(summary(network, model["input_shape"]), maps.nn_summary_txt)
                Maps.save_file(str(network) + "\n", maps.architecture_log, overwrite=True)
    optimizer = build_optimizer(
        train["optimizer"], network.parameters(), train["learning_rate"], train["weight_decay"]
    )
    scheduler = build_scheduler(optimizer, train["lr_scheduler"], train["epochs"])
    if train["compile"]:
        network = torch.compile(network)
    network = group.wrap(network)

    cuda = device.type == "cuda"
    callbacks = [
        ModelCheckpoint(list(train["monitor"]), list(train["save_epochs"])),
        LRScheduler(
            scheduler, train["optimizer"], split_dir.logs.learning_rate_tsv(train["optimizer"])
        ),
        ComputationalMonitor(split_dir.logs.computational_tsv, cuda),
        ProgressLogger(),
    ]
    stopping = train["early_stopping"]
    if stopping["patience"]:
        callbacks.insert(
            1, EarlyStopping(stopping["metric"], stopping["patience"], stopping["tolerance"])
        )
    if tracking and tracking.get("mlflow") and group.writer:  # one MLflow run: rank 0's
        from .tracking import mlflow_callback

        params = {"train": dict(train), "model": model, **dict(tracked_config or {})}
        callbacks.append(mlflow_callback(tracking, maps_dir, split, params, search_run))
    if train["sampler"] == "weighted" and classes:
        from ..data.sampler import SampledLabels

        callbacks.append(SampledLabels(split_dir.logs.path / "sampling.tsv", classes))
    callbacks.append(ResumeCheckpoint(train["checkpoint_every"]))
    if not group.writer:  # the callbacks that only write: rank 0's
        callbacks = [
            c for c in callbacks if isinstance(c, (LRScheduler, EarlyStopping, ResumeCheckpoint))
        ]

    settings = Settings(
        epochs=train["epochs"],
        batch_size=train["batch_size"],
        device=device,
        amp=train["amp"],
        channels_last=channels_last,
        accumulation_steps=train["accumulation_steps"],
        clip_grad_norm=train["clip_grad_norm"],
        max_loss=train["max_loss"],
        bn_recalibration_batches=train["bn_recalibration_batches"],
        evaluation_interval=train["evaluation_interval"],
        evaluation_steps=train["evaluation_steps"],
        seed=seed,
        deterministic=train["deterministic"],
        num_workers=train["num_workers"],
    )
    semantic = {k: v for k, v in train.items() if k not in NON_SEMANTIC}
    # The world size decides the batches; how ranks are spread over nodes does not.
    semantic["distributed"] = group.world_size
    semantic["extraction"] = record.get("extraction")
    trainer = Trainer(
        maps=maps,
        split=split,
        network=network,
        optimizer=optimizer,
        optimizer_name=train["optimizer"],
        train_data=train_data,
        val_data=val_data,
        settings=settings,
        metric_names=train["metrics"],
        callbacks=callbacks,
        fingerprint=fingerprint(
            semantic,
            model["network"],
            manifest["hash"],
            split,
            *([transferred["sha256"]] if transferred else []),
        ),
        objective=Objective.of(model),
        group=group,
        sampler=sampler,
        augment=augment,
        selection_threshold=record["voting"]["selection_threshold"],
    )
    if group.writer:
        Maps.save_file(computational_json(trainer), split_dir.computational_json, overwrite=True)
        maps.record_run(
            "train",
            {
                "step": f"train split-{split}",
                "config": dict(train),
                "split_manifest_hash": manifest["hash"],
                "world_size": group.world_size,
                **({"transfer_learning": transferred} if transferred else {}),
                **system_facts(device),
            },
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            trainer.fit()
        except (FloatingPointError, torch.OutOfMemoryError) as error:
            if failure_marker:
                io.atomic_write_text(
                    failure_marker, f"split-{split}: {type(error).__name__}: {error}\n"
                )
            raise
        finally:
            if group.writer:
                text = "".join(
                    f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught
                )
                Maps.save_file(text, split_dir.warning_log, overwrite=True)
    return split_dir.models.final.model_pt


def transfer_into(
    network: Any, train: Mapping[str, Any], split: int, description: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Apply ``train.transfer_learning`` (``snakemaps.train.transfer``) and log what it did."""
    from .transfer import apply_transfer

    settings = train.get("transfer_learning") or {}
    record = apply_transfer(network, settings, split, description.get("name_", "CNN"))
    if record is not None:
        logger.info(
            "split-%d: transfer learning from %s (sha256 %s): copied %d tensor(s) (%s); "
            "left as initialised: %s; not used from the source: %s",
            split,
            record["file"],
            record["sha256"],
            len(record["copied"]),
            ", ".join(record["copied"]),
            ", ".join(record["left_initialized"]) or "none",
            ", ".join(record["source_unused"]) or "none",
        )
    return record


def training_order(
    train: Mapping[str, Any],
    model: Mapping[str, Any],
    train_data: Any,
    group: Any,
    seed: int,
    network_type: str = "cnn",
) -> tuple[Any, Any]:
    """The sampler (train.sampler) and augmentation (train.data_augmentation) of a run.

    Checks train.evaluation_steps against the batches of an epoch first. A
    multicnn's samples carry their part index in their last channel, which
    augmentation leaves as it is.
    """
    from ..data.augmentation import Augmentation
    from ..data.sampler import Sampler, sampling_weights
    from .options import check_evaluation_steps

    n_batches = -(-group.num_samples(len(train_data)) // train["batch_size"])
    check_evaluation_steps(train["evaluation_steps"], n_batches, train["evaluation_interval"])
    weights = None
    if train["sampler"] == "weighted":
        labels = train_data.labels.tolist()
        weights = sampling_weights(labels, model.get("task", "classification"))
    sampler = Sampler(train["sampler"], len(train_data), group, seed, weights)
    names = list(train["data_augmentation"])
    if not names:
        return sampler, None
    return sampler, Augmentation(
        names, seed, group.rank, keep_last_channel=network_type == "multicnn"
    )


def computational_json(trainer: Any) -> dict[str, Any]:
    return {
        "name_": "ComputationalConfig",
        "gpu": trainer.device.type == "cuda",
        "non_blocking": True,
        "amp": trainer.dtype is not None,
        "amp_dtype": str(trainer.dtype).removeprefix("torch.") if trainer.dtype else None,
        "channels_last": trainer.settings.channels_last,
        "seed": trainer.settings.seed,
        "deterministic": trainer.settings.deterministic,
        "world_size": trainer.group.world_size,
        "backend": ("nccl" if trainer.device.type == "cuda" else "gloo")
        if trainer.group.distributed
        else None,
    }


def system_facts(device: Any) -> dict[str, Any]:
    """GPU name, CUDA and cuDNN versions, torch version, git commit of the workflow."""
    import subprocess

    import torch

    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "device": str(device),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }
    try:
        facts["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        facts["git_commit"] = None
    return facts
