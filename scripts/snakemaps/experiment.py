"""Create a MAPS for an experiment: root configuration files, then the split."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import io
from .data.prepare import info_path
from .errors import UserError
from .maps import Maps
from .models.description import resolve_description
from .split import make_splits
from .tasks import check_network_task


def model_json(
    model: Mapping[str, Any],
    train: Mapping[str, Any],
    input_shape: list[int],
    classes: list[str] | None,
    target: Mapping[str, float] | None = None,
    task: str | None = None,
    n_networks: int = 0,
) -> dict[str, Any]:
    """``model.json``: a classifier over ``classes``, a regressor (``classes`` None), or an
    autoencoder (``task`` reconstruction; ``classes`` are then only the split's strata).

    A regressor predicts the standardized target; ``target`` holds the mean and
    standard deviation that turn its output back into the label's units.
    ``input_shape`` is one sample's (an image, patch, roi or slice); a 2D one
    gives a 2D network. ``n_networks`` > 0 gives a multicnn of that many
    networks, whose input carries one more channel (the part index).
    """
    task = task or ("regression" if classes is None else "classification")
    check_network_task(model, task)
    regression = task == "regression"
    n_outputs = 1 if classes is None or task != "classification" else len(classes)
    description = resolve_description(model, input_shape, n_outputs)
    name = "CNN"
    if len(input_shape) == 3:  # (C, H, W): slices
        description["dimension"] = 2
    if n_networks:
        description["n_networks"] = n_networks
        input_shape = [input_shape[0] + 1, *input_shape[1:]]  # + the part-index channel
        name = "MultiCNN"
    if task == "reconstruction":
        from .models.autoencoder import autoencoder_description

        network = autoencoder_description(description)
    else:
        network = {"name_": name, **description}
    names = {
        "classification": ("ClassificationModel", "CrossEntropyLoss"),
        "regression": ("RegressionModel", "MSELoss"),
        "reconstruction": ("ReconstructionModel", "MSELoss"),
    }
    return {
        "name_": names[task][0],
        "task": task,
        "network": network,
        "loss": {"name_": names[task][1]},
        "optimizer": {
            "name_": train["optimizer"],
            "lr": train["learning_rate"],
            "weight_decay": train["weight_decay"],
        },
        "input_shape": input_shape,
        "classes": classes,
        **({"target": dict(target)} if regression else {}),
    }


def target_scale(manifest: str | Path) -> dict[str, float]:
    """Mean and standard deviation of the training table's labels (a regression's scale)."""
    from .data.prepare import read_manifest
    from .data.table import numeric_labels

    values = numeric_labels(read_manifest(manifest)["label"], str(manifest))
    return {"mean": float(values.mean()), "std": float(values.std())}


def callbacks_json(train: Mapping[str, Any]) -> dict[str, Any]:
    stopping = train["early_stopping"]
    return {
        "callbacks": {
            "ModelCheckpoint": {
                "name_": "ModelCheckpoint",
                "metrics": train["monitor"],
                "epochs": train["save_epochs"],
                "save_last": True,
            },
            "EarlyStopping": {"name_": "EarlyStopping", **stopping},
            "LRScheduler": {"name_": "LRScheduler", **train["lr_scheduler"]},
            "ComputationalMonitor": {"name_": "ComputationalMonitor"},
            "ProgressLogger": {"name_": "ProgressLogger"},
            "ResumeCheckpoint": {"name_": "ResumeCheckpoint", "every": train["checkpoint_every"]},
        }
    }


def optimization_json(train: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name_": "OptimizationConfig",
        "num_epochs": train["epochs"],
        "accumulation_steps": train["accumulation_steps"],
        "evaluation_interval": train["evaluation_interval"],
        "clip_grad_norm": train["clip_grad_norm"],
        "grad_norm_type": 2.0,
        "clip_grad_value": None,
        "reset_model": False,
    }


def create_maps(
    maps_dir: str | Path,
    manifest: str | Path,
    *,
    split: Mapping[str, Any],
    model: Mapping[str, Any],
    train: Mapping[str, Any],
    positive_class: str | None = None,
    task: str = "classification",
    modes: Mapping[str, Any] | None = None,
) -> Path:
    """Write the MAPS root files and ``training/data``; return the split manifest path.

    ``modes`` holds the mode keys (``snakemaps.data.extraction.settings``);
    they are checked against the images before any MAPS file is written.
    """
    from .data.extraction import plan
    from .train.metrics import check_metric_names, metrics_json

    check_network_task(model, task)
    extraction = plan(modes or {}, io.read_json(info_path(manifest)))
    check_metric_names(train["metrics"], "train.metrics", task)
    check_metric_names(train["monitor"], "train.monitor", task)
    missing = sorted(set(train["monitor"]) - set(train["metrics"]))
    if missing:
        raise UserError(f"train.monitor: {missing} must also be listed in train.metrics")
    manifest_path = make_splits(
        maps_dir,
        manifest,
        n_splits=split["n_splits"],
        seed=split["seed"],
        validation_fraction=split["validation_fraction"],
        longitudinal=split["longitudinal"],
        batch_size=train["batch_size"],
        num_workers=train["num_workers"],
        positive_class=positive_class,
        task=task,
        augmentation=train["data_augmentation"],
        sampler=train["sampler"],
        dataset_extra=extraction,
    )
    classes = io.read_json(manifest_path)["classes"]
    block = extraction["extraction"]
    shape = block["part_shape"]
    target = target_scale(manifest) if task == "regression" else None
    multi = extraction["network_type"] == "multicnn"
    Maps(maps_dir).create(
        model=model_json(
            model, train, shape, classes, target, task, block["n_parts"] if multi else 0
        ),
        metrics=metrics_json(train["metrics"]),
        callbacks=callbacks_json(train),
        optimization=optimization_json(train),
    )
    return manifest_path
