"""Evaluate saved checkpoints on a split's validation set or on a test group."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .. import io
from ..errors import UserError
from ..maps import Maps, parse_model
from ..split import check_test_group, load_manifest, split_frame
from .voting import part_details_tsv

logger = logging.getLogger("snakemaps.evaluate")


def saved_models(train: Mapping[str, Any]) -> list[str]:
    """Every model a split's training keeps: best-<metric>, final, then epoch-<e>."""
    models = [f"best-{metric}" for metric in train["monitor"]] + ["final"]
    return models + [f"epoch-{e}" for e in train["save_epochs"] if e <= train["epochs"]]


def model_epoch(model: str, log: pd.DataFrame | None, source: Path) -> int:
    """The epoch a saved model comes from, derived from its split's validation log.

    ``log`` is that log as read from ``source`` (None when it is missing).
    """
    kind, value = parse_model(model)
    if kind == "epoch":
        return int(value)
    if log is None:
        raise UserError(
            f"missing {source}: it tells which epoch {model} comes from; train the split first"
        )
    if kind == "final":
        return int(log["epoch"].max())
    return int(log.loc[_best_row(log, value), "epoch"])


def _best_row(log: pd.DataFrame, metric: str) -> Any:
    """The index of the validation row a best-<metric> model was saved after."""
    from ..train.metrics import higher_is_better

    column = log[metric]
    return column.idxmax() if higher_is_better(metric) else column.idxmin()


def model_batch(model: str, log: pd.DataFrame | None, epoch: int) -> int | None:
    """The batch after which training validated a saved model (None: no batch column).

    With ``train.evaluation_steps`` an epoch has several validation rows: a
    best model may come from one inside the epoch; final and epoch-<e> models
    are the epoch's end, its last row.
    """
    if log is None or "batch" not in log.columns:
        return None
    kind, value = parse_model(model)
    rows = log[log["epoch"] == epoch]
    if rows.empty:
        return None
    if kind == "best":
        return int(log.loc[_best_row(log, value), "batch"])
    return int(rows["batch"].max())


def _evaluate(*args: Any, **kwargs: Any) -> tuple[dict[str, float], pd.DataFrame, dict]:
    """``_evaluate_parts`` without the part-level details."""
    return _evaluate_parts(*args, **kwargs)[:3]


def _evaluate_parts(
    maps: Maps,
    split: int,
    model: str,
    frame: pd.DataFrame,
    device: str,
    batch_size: int,
    threads: int,
    called: str,
    data_name: str,
    reference: pd.DataFrame | None = None,
) -> tuple[dict[str, float], pd.DataFrame, dict, pd.DataFrame | None]:
    """Evaluate one saved model; ``called`` is "validate" or "test" (callback events).

    Returns the image-level metrics and details, the computational record, and
    the part-level details (None in image mode). Parts are voted into images
    with weights from ``reference`` (part rows; default: these predictions).
    """
    import torch

    from ..data.extraction import recorded
    from ..data.subsamples import dataset
    from ..models.network import build_network
    from ..train.callbacks import ProgressLogger
    from ..train.evaluation import Evaluation, Objective
    from ..train.runtime import amp_dtype, load_maps_weights, resolve_device

    torch.set_num_threads(threads)
    description = io.read_json(maps.model_json)
    metric_names = list(io.read_json(maps.metrics_json)["metrics"])
    weights = maps.split(split).models.get(model).model_pt
    if not weights.exists():
        raise UserError(f"missing model {weights}: train split-{split} first")
    dev = resolve_device(device)
    network = load_maps_weights(build_network(description["network"]), weights).to(dev)
    extraction, record = recorded(maps.path)
    data = dataset(frame, description["classes"], extraction, record["network_type"])
    dtype = amp_dtype(dev, True)
    started = time.perf_counter()
    evaluation = Evaluation(
        called=called,
        split=split,
        model=model,
        data_name=data_name,
        network=network,
        data=data,
        batch_size=batch_size,
        device=dev,
        dtype=dtype,
        metric_names=metric_names,
        objective=Objective.of(description),
        callbacks=[ProgressLogger()],
        selection_threshold=record["voting"]["selection_threshold"],
        reference=reference,
    )
    values, details = evaluation.run()
    computational = {
        "name_": "ComputationalConfig",
        "gpu": dev.type == "cuda",
        "non_blocking": True,
        "amp": dtype is not None,
        "channels_last": False,
        "seed": None,
        "deterministic": False,
        "seconds": round(time.perf_counter() - started, 3),
        "n_images": len(frame),
        "n_samples": len(data),
    }
    return values, details, computational, evaluation.parts


def validate_checkpoints(
    maps_dir: str | Path,
    split: int,
    models: Sequence[str],
    *,
    device: str = "auto",
    batch_size: int = 8,
    threads: int = 1,
) -> list[Path]:
    """Write ``validation_metrics/{aggregated,details}.tsv`` beside each model of a split."""
    maps = Maps(maps_dir)
    maps.record_run(
        "validate",
        {
            "step": f"validate split-{split}",
            "models": list(models),
            "split_manifest_hash": load_manifest(maps_dir)["hash"],
        },
    )
    frame = split_frame(maps_dir, split, "validation")
    # Training's validation logs, each read once for all models.
    logs = maps.split(split).validation_metrics
    trained = io.read_tsv(logs.aggregated_tsv) if logs.aggregated_tsv.exists() else None
    trained_details: pd.DataFrame | None = None
    mode = _mode(maps_dir)
    part_log = part_details_tsv(logs, mode)
    trained_parts: pd.DataFrame | None = None
    written = []
    for model in models:
        target = maps.split(split).models.get(model)
        files = target.validation_metrics
        epoch = model_epoch(model, trained, logs.aggregated_tsv)
        if _evaluated(files, target.model_pt, epoch):
            logger.info("split-%d %s: already evaluated, kept", split, model)
            written.append(files.aggregated_tsv)
            continue
        if trained is not None and trained_details is None and logs.details_tsv.exists():
            trained_details = io.read_tsv(logs.details_tsv)
        batch = model_batch(model, trained, epoch)
        found = _training_validation(trained, trained_details, epoch, batch)
        parts = None
        if found is not None and mode != "image":
            if trained_parts is None and part_log.exists():
                trained_parts = io.read_tsv(part_log)
            parts = _epoch_rows(trained_parts, epoch, batch)
            found = None if parts is None else found
        if found is not None:
            aggregated, details = found
            logger.info(
                "split-%d %s: the validation training ran at epoch %d with these same weights",
                split,
                model,
                epoch,
            )
        else:
            values, details, _, parts = _evaluate_parts(
                maps, split, model, frame, device, batch_size, threads, "validate", "validation"
            )
            details.insert(0, "epoch", epoch)
            if parts is not None:
                parts.insert(0, "epoch", epoch)
            aggregated = pd.DataFrame([{"epoch": epoch, **values}])
        if parts is not None:
            Maps.save_file(parts, part_details_tsv(files, mode), overwrite=True)
        Maps.save_file(details, files.details_tsv, overwrite=True)
        Maps.save_file(aggregated, files.aggregated_tsv, overwrite=True)
        written.append(files.aggregated_tsv)
    return written


def _mode(maps_dir: str | Path) -> str:
    from ..data.extraction import recorded

    return recorded(maps_dir)[0].mode


def _epoch_rows(
    frame: pd.DataFrame | None, epoch: int, batch: int | None = None
) -> pd.DataFrame | None:
    """The rows of one validation of training: its epoch and, where logged, its batch."""
    if frame is None:
        return None
    selected = frame["epoch"] == epoch
    if batch is not None and "batch" in frame.columns:
        selected &= frame["batch"] == batch
    rows = frame[selected]
    return None if rows.empty else rows.reset_index(drop=True)


def _evaluated(files: Any, model_pt: Path, epoch: int) -> bool:
    """Whether a model's validation files exist, are newer than it and are of its epoch."""
    if not (files.aggregated_tsv.exists() and files.details_tsv.exists()):
        return False
    if files.aggregated_tsv.stat().st_mtime < model_pt.stat().st_mtime:
        return False
    recorded = io.read_tsv(files.aggregated_tsv)
    return list(recorded["epoch"]) == [epoch]


def _training_validation(
    aggregated: pd.DataFrame | None,
    details: pd.DataFrame | None,
    epoch: int,
    batch: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The rows training logged when it validated at ``epoch`` (and ``batch``), if it did.

    A saved model (best-<metric>, epoch-<e>, final) is written after that
    validation without further weight updates, so its metrics and per-image
    predictions are exactly those rows: no need to start torch and predict
    again.
    """
    if aggregated is None or details is None:
        return None
    aggregated = _epoch_rows(aggregated, epoch, batch)
    details = _epoch_rows(details, epoch, batch)
    if aggregated is None or len(aggregated) != 1 or details is None:
        return None
    return aggregated, details


def register_test_group(
    maps_dir: str | Path, group: str, manifest: str | Path, batch_size: int
) -> Path:
    """Write ``test/group-<g>/{data.tsv,dataset.json,dataloader.json}`` after checking the group.

    The group is checked against this MAPS's split (no participant seen in
    training or validation, only the training classes), here rather than in
    the split, so that a group added to a finished MAPS trains nothing again.
    """
    from ..data.prepare import read_manifest
    from ..split import dataloader_description, dataset_description, public_columns

    maps = Maps(maps_dir)
    split_manifest = load_manifest(maps_dir)
    frame = read_manifest(manifest)
    check_test_group(split_manifest, frame, group)
    target = maps.test_group(group)
    Maps.save_file(public_columns(frame), target.data_tsv, overwrite=True)
    from ..data.extraction import recorded

    _, record = recorded(maps_dir)
    modes = {
        k: record[k] for k in ("extraction", "image_shape", "network_type", "voting") if k in record
    }
    Maps.save_file(
        dataset_description(frame, manifest, split_manifest["classes"], modes),
        target.dataset_json,
        overwrite=True,
    )
    Maps.save_file(
        dataloader_description(batch_size, False, 0), target.dataloader_json, overwrite=True
    )
    return target.data_tsv


def evaluate_test_group(
    maps_dir: str | Path,
    group: str,
    split: int,
    models: Sequence[str],
    *,
    device: str = "auto",
    batch_size: int = 8,
    threads: int = 1,
) -> list[Path]:
    """Evaluate the models of a split on a test group (results/split-<k>/<model>/)."""
    from ..data.prepare import read_manifest

    maps = Maps(maps_dir)
    group_dir = maps.test_group(group)
    if not group_dir.data_tsv.exists():
        raise UserError(f"missing {group_dir.data_tsv}: register the test group first")
    dataset = io.read_json(group_dir.dataset_json)
    frame = read_manifest(dataset["cache_manifest"])
    maps.record_run(
        "test",
        {
            "step": f"test group-{group} split-{split}",
            "models": list(models),
            "split_manifest_hash": load_manifest(maps_dir)["hash"],
        },
    )
    written = []
    mode = _mode(maps_dir)
    for model in models:
        reference = None
        if mode != "image":
            # Soft voting weighs each part by its balanced accuracy on the validation set.
            source = part_details_tsv(maps.split(split).models.get(model).validation_metrics, mode)
            if not source.exists():
                raise UserError(
                    f"missing {source}: the test group's soft voting weighs each {mode} by "
                    f"its validation balanced accuracy, which split-{split}'s train job writes as "
                    "it ends; train that split again (delete its final model and rerun)"
                )
            reference = io.read_tsv(source)
        values, details, computational, parts = _evaluate_parts(
            maps,
            split,
            model,
            frame,
            device,
            batch_size,
            threads,
            "test",
            f"group-{group}",
            reference,
        )
        result = group_dir.results.splits[split].models[model]
        if parts is not None:
            Maps.save_file(parts, part_details_tsv(result.metrics, mode), overwrite=True)
        Maps.save_file(computational, result.computational_json, overwrite=True)
        Maps.save_file(details, result.metrics.details_tsv, overwrite=True)
        Maps.save_file(pd.DataFrame([values]), result.metrics.aggregated_tsv, overwrite=True)
        written.append(result.metrics.aggregated_tsv)
    return written


def run_test_group(
    maps_dir: str | Path,
    group: str,
    splits: Sequence[int],
    models: Sequence[str],
    metrics: Sequence[str],
    *,
    device: str = "auto",
    batch_size: int = 8,
    threads: int = 1,
) -> list[Path]:
    """Rule test (one job per MAPS and group): every split's models, then the summaries."""
    written = []
    for done, split in enumerate(splits, start=1):
        written += evaluate_test_group(
            maps_dir, group, split, models, device=device, batch_size=batch_size, threads=threads
        )
        logger.info("group-%s: split-%d tested (%d/%d splits)", group, split, done, len(splits))
    return written + [summarize_group(maps_dir, group, metric, splits) for metric in metrics]


def summarize_group(maps_dir: str | Path, group: str, metric: str, splits: Sequence[int]) -> Path:
    """One row per split for ``best-<metric>``, then mean and std: the table a paper reports."""
    maps = Maps(maps_dir)
    group_dir = maps.test_group(group)
    rows: list[dict[str, Any]] = []
    for split in splits:
        result = group_dir.results.splits[split].models[f"best-{metric}"]
        values = io.read_tsv(result.metrics.aggregated_tsv).iloc[0].to_dict()
        rows.append({"split": str(split), **values})
    frame = pd.DataFrame(rows)
    numeric = frame.drop(columns="split")
    frame = pd.concat(
        [
            frame,
            pd.DataFrame(
                [
                    {"split": "mean", **numeric.mean().to_dict()},
                    {"split": "std", **numeric.std(ddof=1).to_dict()},
                ]
            ),
        ],
        ignore_index=True,
    )
    return Maps.save_file(frame, group_dir.summary_tsv(metric), overwrite=True)
