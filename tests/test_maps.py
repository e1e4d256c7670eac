"""The MAPS library: file round trips, typed paths, names, reading, crash safety, concurrency.

MAPS trees are written here by hand with plain json / pandas / torch, following
``shared/spec/maps-format.md`` as ClinicaDL would write them, never with our
own writer, so the reader is checked against the format rather than itself.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path

import pandas as pd
import pytest
from snakemaps import io  # scripts/ is on sys.path through conftest.py
from snakemaps.errors import UserError
from snakemaps.maps import (
    Maps,
    MapsError,
    checkpoint_name,
    parse_checkpoint,
    validate_metric_name,
)
from snakemaps.maps.__main__ import main as status_main

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")]),
}


# A MAPS as ClinicaDL writes it, by hand ------------------------------------------


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4))


def _tsv(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False)


def _text(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _pt(path: Path, obj) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)


def _state_dict(seed: int = 0) -> OrderedDict:
    import torch

    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        [
            ("network.conv0.weight", torch.randn(4, 1, 3, 3, 3, generator=g)),
            ("network.conv0.bias", torch.randn(4, generator=g)),
        ]
    )


SUBJECTS = pd.DataFrame(
    {
        "participant_id": ["sub-001", "sub-002", "sub-003", "sub-004"],
        "session_id": ["ses-M000"] * 4,
        "label": [1.5, 2.5, 0.5, 3.0],
    }
)


def _validation(folder: Path, metrics: list[str], epochs: list[int]) -> None:
    _tsv(
        folder / "aggregated.tsv",
        pd.DataFrame({"epoch": epochs, **{m: [0.1 * e for e in epochs] for m in metrics}}),
    )
    details = SUBJECTS.merge(pd.DataFrame({"epoch": epochs}), how="cross")
    _tsv(folder / "details.tsv", details[["epoch", "participant_id", "session_id", "label"]])


def _model_dir(folder: Path, metrics: list[str], epochs: list[int], seed: int = 0) -> None:
    _pt(folder / "model.pt", _state_dict(seed))
    _validation(folder / "validation_metrics", metrics, epochs)


def build_maps(
    root: Path,
    splits=(0,),
    metrics=("mse",),
    checkpoints=(10,),
    groups=("X",),
    num_epochs: int = 20,
    tmp_epoch: int | None = 15,
    env: bool = True,
) -> Path:
    """A complete MAPS following the format page (as ClinicaDL 2.0 writes one)."""
    metrics = list(metrics)
    _json(root / "model.json", {"name_": "ClinicaDLModel", "network": {"name_": "Conv5_FC3"}})
    _json(
        root / "metrics.json",
        {"metrics": {m: {"name_": f"{m.upper()}Metric", "reduction": "mean"} for m in metrics}},
    )
    _json(
        root / "callbacks.json",
        {"callbacks": [{"name_": "ModelCheckpoint", "metrics": metrics, "epochs": checkpoints}]},
    )
    _text(root / "architecture.log", "Conv5_FC3(...)\n")
    _text(root / "summary.log", "MAPS summary\n")
    _json(
        root / "training" / "optimization.json",
        {
            "name_": "OptimizationConfig",
            "num_epochs": num_epochs,
            "accumulation_steps": 1,
            "evaluation_interval": 1,
            "clip_grad_norm": None,
            "grad_norm_type": 2.0,
            "clip_grad_value": None,
            "reset_model": False,
        },
    )
    if env:
        _text(
            root / "env" / "environment.txt",
            "# ClinicaDL environment snapshot\n# timestamp: 2025-12-31T23:59:59+00:00\n\n"
            "torch==2.5.0\n",
        )
    data = root / "training" / "data"
    _tsv(data / "data.tsv", SUBJECTS)
    dataloader = {"name_": "DataLoaderConfig", "batch_size": 2, "shuffle": True, "num_workers": 0}
    for k in splits:
        for subset, rows in (("train", SUBJECTS.iloc[:3]), ("validation", SUBJECTS.iloc[3:])):
            _tsv(data / subset / f"split-{k}" / "data.tsv", rows)
            _json(data / subset / f"split-{k}" / "dataset.json", {"name_": "CapsDataset"})
            _json(data / subset / f"split-{k}" / "dataloader.json", dataloader)
        split = root / "training" / f"split-{k}"
        _json(split / "computational.json", {"name_": "ComputationalConfig", "gpu": False})
        _text(split / "summary.log", f"split {k}\n")
        _text(split / "warning.log")
        _tsv(
            split / "logs" / "training_loss.tsv",
            pd.DataFrame({"epoch": [1], "batch": [0], "loss": [1.0]}),
        )
        _tsv(split / "logs" / "computational.tsv", pd.DataFrame({"train": [1.0], "epoch": [0.5]}))
        _tsv(
            split / "logs" / "learning_rates" / "Adam.tsv",
            pd.DataFrame({"epoch": [1], "batch": [0], "lr": [1e-3]}),
        )
        done = list(range(1, (tmp_epoch or num_epochs) + 1))
        _validation(split / "validation_metrics", metrics, done)
        models = split / "models"
        for m in metrics:
            _model_dir(models / "best_models" / f"best-{m}", metrics, [done[0]])
        for e in checkpoints:
            _model_dir(models / "checkpoints" / f"epoch-{e}", metrics, [e])
        if tmp_epoch is None:
            _model_dir(models / "final", metrics, [num_epochs])
            (split / "tmp").mkdir()
        else:
            tmp = split / "tmp" / f"epoch-{tmp_epoch}"
            _pt(tmp / "model.pt", _state_dict(1))
            _pt(tmp / "optimizer.pt", {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]})
            _pt(tmp / "scaler.pt", {"scale": 65536.0})
            _json(
                tmp / "state.json",
                {
                    "called": True,
                    "stage": "train",
                    "should_stop": False,
                    "current_epoch": tmp_epoch,
                    "num_epochs": num_epochs,
                    "optim_step": 30,
                    "split_idx": k,
                },
            )
            (tmp / "callbacks").mkdir()
            _validation(tmp / "validation_metrics", metrics, done)
    for g in groups:
        group = root / "test" / f"group-{g}"
        _tsv(group / "data.tsv", SUBJECTS)
        _json(group / "dataset.json", {"name_": "CapsDataset"})
        _json(group / "dataloader.json", dataloader)
        for k in splits:
            models = [f"best-{m}" for m in metrics] + [f"epoch-{e}" for e in checkpoints]
            for name in models + ([] if tmp_epoch is not None else ["final"]):
                result = group / "results" / f"split-{k}" / name
                _json(result / "computational.json", {"name_": "ComputationalConfig"})
                _tsv(
                    result / "metrics" / "aggregated.tsv", pd.DataFrame({m: [0.5] for m in metrics})
                )
                _tsv(result / "metrics" / "details.tsv", SUBJECTS[["participant_id", "session_id"]])
    run = root / "exec" / "run-train_2025_12_31_23_59_59"
    _text(run / "info.log", "training started\n")
    _text(run / "error.log")
    return root


# Files: save_file / open_file ----------------------------------------------------


def test_round_trip_every_file_kind(tmp_path):
    import torch

    maps = Maps(tmp_path / "maps")
    obj = {"name_": "MSEMetric", "metrics": {"mse": {"reduction": "mean"}}, "values": [1, 2.5]}
    maps.save_file(obj, maps.metrics_json)
    assert maps.metrics_json.read_text().rstrip("\n") == json.dumps(obj, indent=4)
    assert maps.open_file(maps.metrics_json) == obj

    frame = SUBJECTS.assign(site=["NA", "a", "b", "c"])
    path = maps.training.data.data_tsv
    maps.save_file(frame, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "participant_id\tsession_id\tlabel\tsite"  # no index column
    assert lines[1] == "sub-001\tses-M000\t1.5\tNA"
    pd.testing.assert_frame_equal(maps.open_file(path), frame)

    state = _state_dict()
    model_pt = maps.training.splits[0].models.final.model_pt
    maps.save_file(state, model_pt)
    loaded = maps.open_file(model_pt)
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    for path, text in ((maps.summary_log, "line 1\nline 2\n"), (maps.nn_summary_txt, "Conv\t3\n")):
        maps.save_file(text, path)
        assert path.read_text() == text
        assert maps.open_file(path) == text

    # atomic writes leave no temp file behind, and files get the usual mode, not mkstemp's 0600
    assert not [p for p in maps.path.rglob(".*") if p.name.endswith(".tmp")]
    umask = os.umask(0o022)
    os.umask(umask)
    assert maps.metrics_json.stat().st_mode & 0o777 == 0o666 & ~umask


def test_overwrite_guard_and_bad_paths(tmp_path):
    maps = Maps(tmp_path)
    maps.save_file({"a": 1}, maps.model_json)
    with pytest.raises(FileExistsError):
        maps.save_file({"a": 2}, maps.model_json)
    assert maps.open_file(maps.model_json) == {"a": 1}
    maps.save_file({"a": 3}, maps.model_json, overwrite=True)
    assert maps.open_file(maps.model_json) == {"a": 3}

    for suffix in (".csv", ".npy", ""):
        with pytest.raises(ValueError, match="unsupported"):
            maps.save_file("x", tmp_path / f"file{suffix}")
        assert not (tmp_path / f"file{suffix}").exists()
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported"):
        maps.open_file(tmp_path / "notes.csv")

    (tmp_path / "folder.json").mkdir()
    with pytest.raises(IsADirectoryError):
        maps.save_file({}, tmp_path / "folder.json")
    with pytest.raises(IsADirectoryError):
        maps.open_file(tmp_path / "folder.json")
    with pytest.raises(FileNotFoundError):
        maps.open_file(tmp_path / "absent.json")


# Typed paths ---------------------------------------------------------------------


def test_typed_paths_match_spec_names(tmp_path):
    maps = Maps(tmp_path)
    split = maps.training.splits[0]
    run = maps.exec.runs["train_2025_12_31_23_59_59"]
    expected = {
        maps.model_json: "model.json",
        maps.metrics_json: "metrics.json",
        maps.callbacks_json: "callbacks.json",
        maps.architecture_log: "architecture.log",
        maps.nn_summary_txt: "nn_summary.txt",
        maps.summary_log: "summary.log",
        maps.env.environment_txt: "env/environment.txt",
        maps.env.environment_yml: "env/environment.yml",
        maps.env.environment_portable_yml: "env/environment_portable.yml",
        maps.training.optimization_json: "training/optimization.json",
        maps.training.data.data_tsv: "training/data/data.tsv",
        maps.training.data.train.splits[0].data_tsv: "training/data/train/split-0/data.tsv",
        maps.training.data.train.splits[0].dataset_json: "training/data/train/split-0/dataset.json",
        maps.training.data.validation.splits[
            3
        ].dataloader_json: "training/data/validation/split-3/dataloader.json",
        split.computational_json: "training/split-0/computational.json",
        split.summary_log: "training/split-0/summary.log",
        split.warning_log: "training/split-0/warning.log",
        split.logs.training_loss_tsv: "training/split-0/logs/training_loss.tsv",
        split.logs.computational_tsv: "training/split-0/logs/computational.tsv",
        split.logs.learning_rate_tsv("Adam"): "training/split-0/logs/learning_rates/Adam.tsv",
        split.models.best_models.metrics[
            "loss"
        ].model_pt: "training/split-0/models/best_models/best-loss/model.pt",
        split.models.best_models.metrics[
            "mse"
        ].validation_metrics.aggregated_tsv: "training/split-0/models/best_models/best-mse/validation_metrics/aggregated.tsv",
        split.models.best_models.metrics[
            "mse"
        ].warning_log: "training/split-0/models/best_models/best-mse/warning.log",
        split.models.checkpoints.epochs[
            10
        ].model_pt: "training/split-0/models/checkpoints/epoch-10/model.pt",
        split.models.checkpoints.epochs[
            10
        ].validation_metrics.details_tsv: "training/split-0/models/checkpoints/epoch-10/validation_metrics/details.tsv",
        split.models.final.model_pt: "training/split-0/models/final/model.pt",
        split.tmp.epochs[15].model_pt: "training/split-0/tmp/epoch-15/model.pt",
        split.tmp.epochs[15].optimizer_pt: "training/split-0/tmp/epoch-15/optimizer.pt",
        split.tmp.epochs[15].scaler_pt: "training/split-0/tmp/epoch-15/scaler.pt",
        split.tmp.epochs[15].state_json: "training/split-0/tmp/epoch-15/state.json",
        split.tmp.epochs[15].callbacks: "training/split-0/tmp/epoch-15/callbacks",
        split.tmp.epochs[
            15
        ].validation_metrics.aggregated_tsv: "training/split-0/tmp/epoch-15/validation_metrics/aggregated.tsv",
        split.validation_metrics.aggregated_tsv: "training/split-0/validation_metrics/aggregated.tsv",
        split.validation_metrics.details_tsv: "training/split-0/validation_metrics/details.tsv",
        maps.test.groups["X"].data_tsv: "test/group-X/data.tsv",
        maps.test.groups["X"].dataset_json: "test/group-X/dataset.json",
        maps.test.groups["X"].dataloader_json: "test/group-X/dataloader.json",
        maps.test.groups["X"]
        .results.splits[0]
        .models["best-mse"]
        .metrics.aggregated_tsv: "test/group-X/results/split-0/best-mse/metrics/aggregated.tsv",
        maps.test.groups["X"]
        .results.splits[0]
        .models["epoch-10"]
        .computational_json: "test/group-X/results/split-0/epoch-10/computational.json",
        maps.test.groups["X"]
        .results.splits[1]
        .models["final"]
        .metrics.details_tsv: "test/group-X/results/split-1/final/metrics/details.tsv",
        run.info_log: "exec/run-train_2025_12_31_23_59_59/info.log",
        run.error_log: "exec/run-train_2025_12_31_23_59_59/error.log",
        run.debug_log: "exec/run-train_2025_12_31_23_59_59/debug.log",
        maps.model(
            "split-1_best-BalancedAccuracy"
        ).model_pt: "training/split-1/models/best_models/best-BalancedAccuracy/model.pt",
        maps.model("split-2_epoch-10").path: "training/split-2/models/checkpoints/epoch-10",
        maps.model("split-0_final").path: "training/split-0/models/final",
    }
    for actual, relative in expected.items():
        assert Path(actual) == tmp_path / relative, relative
    with pytest.raises(UserError):
        split.models.best_models.metrics["a-b"]


def test_lists_scan_the_disk(tmp_path):
    maps = Maps(tmp_path)
    split = maps.training.splits[0]
    assert maps.training.splits_list == []
    assert split.models.checkpoints.epochs_list == []
    assert split.models.best_models.metrics_list == []
    assert maps.test.groups_list == []
    for relative in (
        "training/split-0/models/checkpoints/epoch-100",
        "training/split-0/models/checkpoints/epoch-2",
        "training/split-0/models/checkpoints/epoch-10",
        "training/split-0/models/checkpoints/.epoch-3.partial",
        "training/split-0/models/checkpoints/epoch-x",
        "training/split-0/models/best_models/best-loss",
        "training/split-0/models/best_models/best-BalancedAccuracy",
        "training/split-0/tmp/epoch-7",
        "training/split-0/tmp/.epoch-8.partial",
        "training/split-10",
        "training/split-2",
        "test/group-X",
        "test/group-adni",
    ):
        (tmp_path / relative).mkdir(parents=True)
    (tmp_path / "training/split-0/models/checkpoints/epoch-4").write_text("a file, not a dir")
    (tmp_path / "training/data").mkdir()
    assert maps.training.splits_list == [0, 2, 10]
    assert split.models.checkpoints.epochs_list == [2, 10, 100]
    assert split.models.best_models.metrics_list == ["BalancedAccuracy", "loss"]
    assert split.tmp.epochs_list == [7]
    assert maps.test.groups_list == ["X", "adni"]
    assert split.models.names() == [
        "best-BalancedAccuracy",
        "best-loss",
        "epoch-2",
        "epoch-10",
        "epoch-100",
    ]


# Names ---------------------------------------------------------------------------


def test_checkpoint_names():
    assert checkpoint_name(0, "best-BalancedAccuracy") == "split-0_best-BalancedAccuracy"
    assert checkpoint_name(2, 10) == "split-2_epoch-10"
    assert checkpoint_name(1, "final") == "split-1_final"
    assert parse_checkpoint("split-0_best-BalancedAccuracy") == (0, "best-BalancedAccuracy")
    assert parse_checkpoint("split-2_epoch-10") == (2, "epoch-10")
    assert parse_checkpoint("split-1_final") == (1, "final")
    for bad in (
        "split-0",
        "split-x_final",
        "split-0-final",
        "split-0_best-",
        "split-0_best-a_b",
        "split-0_best-a-b",
        "split-0_epoch-x",
        "split-0_last",
        "0_final",
        "",
    ):
        with pytest.raises(UserError):
            parse_checkpoint(bad)
    with pytest.raises(UserError):
        checkpoint_name(0, "best")


@pytest.mark.parametrize("bad", ["balanced-accuracy", "balanced_accuracy", "", "1loss", "a b"])
def test_metric_names_are_validated(tmp_path, bad):
    assert validate_metric_name("BalancedAccuracy") == "BalancedAccuracy"
    assert validate_metric_name("loss2") == "loss2"
    with pytest.raises(UserError, match="metric name"):
        validate_metric_name(bad)
    maps = Maps(tmp_path / "maps")
    with pytest.raises(UserError, match="metric name"):
        maps.create(
            model={},
            metrics={"metrics": {"loss": {}, bad: {}}},
            callbacks={},
            optimization={"num_epochs": 1},
        )
    assert not maps.model_json.exists()


def test_create_writes_the_root_files_and_is_idempotent(tmp_path):
    maps = Maps(tmp_path / "maps")
    content = {
        "model": {"name_": "M"},
        "metrics": {"metrics": {"loss": {}}},
        "callbacks": {"callbacks": {}},
        "optimization": {"num_epochs": 3},
    }
    maps.create(**content)
    stamp = maps.model_json.stat().st_mtime_ns
    maps.create(**content)
    assert maps.model_json.stat().st_mtime_ns == stamp
    assert maps.open_file(maps.training.optimization_json) == {"num_epochs": 3}
    # as in ClinicaDL, the MAPS is readable once the split step has written training/data/data.tsv
    with pytest.raises(MapsError, match="training/data/data.tsv"):
        maps.read()
    maps.save_file(SUBJECTS, maps.training.data.data_tsv)
    assert maps.read().training.splits_list == []


# read(strict=True) ---------------------------------------------------------------

# What ClinicaDL's reader requires (its @mandatory paths) for the MAPS of complete_maps.
MANDATORY = {
    "model.json",
    "metrics.json",
    "callbacks.json",
    "training/optimization.json",
    "env/environment.txt",
    "training/data/data.tsv",
    *[
        f"training/data/{subset}/split-{k}/{name}"
        for k in (0, 1)
        for subset in ("train", "validation")
        for name in ("data.tsv", "dataset.json", "dataloader.json")
    ],
}

# Everything ClinicaDL's trainer writes: what read(strict=True) requires.
REQUIRED = [
    "model.json",
    "metrics.json",
    "callbacks.json",
    "training/optimization.json",
    "env/environment.txt",
    "training/data/data.tsv",
    *[
        f"training/data/{subset}/split-1/{name}"
        for subset in ("train", "validation")
        for name in ("data.tsv", "dataset.json", "dataloader.json")
    ],
    *[
        f"training/split-1/{name}"
        for name in (
            "computational.json",
            "summary.log",
            "warning.log",
            "logs/training_loss.tsv",
            "logs/computational.tsv",
            "validation_metrics/aggregated.tsv",
            "validation_metrics/details.tsv",
        )
    ],
    *[
        f"training/split-0/models/{model}/{name}"
        for model in ("best_models/best-mse", "checkpoints/epoch-10", "final")
        for name in (
            "model.pt",
            "validation_metrics/aggregated.tsv",
            "validation_metrics/details.tsv",
        )
    ],
    "test/group-X/data.tsv",
    "test/group-X/dataset.json",
    "test/group-X/dataloader.json",
    *[
        f"test/group-X/results/split-1/{model}/{name}"
        for model in ("best-mse", "epoch-10", "final")
        for name in ("computational.json", "metrics/aggregated.tsv", "metrics/details.tsv")
    ],
]


@pytest.fixture(scope="module")
def complete_maps(tmp_path_factory) -> Path:
    return build_maps(tmp_path_factory.mktemp("complete") / "maps", splits=(0, 1), tmp_epoch=None)


@pytest.mark.parametrize("relative", REQUIRED)
def test_strict_read_names_each_missing_required_file(complete_maps, tmp_path, relative):
    import shutil

    root = Path(shutil.copytree(complete_maps, tmp_path / "maps"))
    maps = Maps(root)
    assert maps.read(strict=True).path == root
    assert root / relative in maps.required_files(strict=True)
    assert (root / relative in maps.mandatory_files()) == (relative in MANDATORY)
    (root / relative).unlink()
    with pytest.raises(MapsError) as caught:
        maps.read(strict=True)
    assert isinstance(caught.value, FileNotFoundError)
    assert str(root / relative) in str(caught.value)
    if relative in MANDATORY:
        with pytest.raises(MapsError, match=f"missing {root / relative}"):
            maps.read()
    else:  # only strict mode refuses it: the default read opens the MAPS and shows it absent
        assert maps.read().path == root


def test_read_optional_files_and_missing_dir(tmp_path):
    root = build_maps(tmp_path / "maps", env=False)
    for optional in (
        "architecture.log",
        "summary.log",
        "training/split-0/logs/learning_rates/Adam.tsv",
    ):
        (root / optional).unlink()
    Maps(root).read(strict=True)  # no env/ at all is fine, and the optional files may be absent
    (root / "env").mkdir()
    with pytest.raises(MapsError, match="environment.txt"):
        Maps(root).read()
    with pytest.raises(MapsError, match="not found"):
        Maps(tmp_path / "absent").read()


def test_clinicadl_maps_opens_in_ours(tmp_path):
    import torch

    root = build_maps(tmp_path / "maps", splits=(0, 1), checkpoints=(5, 10), tmp_epoch=15)
    maps = Maps(root).read()
    split = maps.training.splits[0]
    assert maps.training.splits_list == [0, 1]
    assert split.models.best_models.metrics_list == ["mse"]
    assert split.models.checkpoints.epochs_list == [5, 10]
    assert split.tmp.epochs_list == [15]
    assert maps.test.groups_list == ["X"]
    assert maps.test.groups["X"].results.splits.keys() == [0, 1]
    assert maps.test.groups["X"].results.splits[0].models.keys() == [
        "best-mse",
        "epoch-10",
        "epoch-5",
    ]
    assert list(maps.exec.runs) == ["train_2025_12_31_23_59_59"]
    tmp = split.tmp.epochs[15]
    assert maps.open_file(tmp.state_json)["current_epoch"] == 15
    assert tmp.callbacks.is_dir()
    assert maps.open_file(tmp.scaler_pt) == {"scale": 65536.0}
    weights = maps.open_file(maps.model("split-1_best-mse").model_pt)
    assert all(key.startswith("network.") for key in weights)
    assert torch.equal(weights["network.conv0.bias"], _state_dict(0)["network.conv0.bias"])
    assert list(maps.open_file(split.validation_metrics.aggregated_tsv).columns) == ["epoch", "mse"]
    assert maps.open_file(maps.metrics_json)["metrics"]["mse"]["name_"] == "MSEMetric"


# delete_split, record_run -----------------------------------------------------------


def test_delete_split(tmp_path):
    root = build_maps(tmp_path / "maps", splits=(0, 1, 2), groups=("X", "Y"), tmp_epoch=None)
    maps = Maps(root)
    _tsv(maps.training.data.data_tsv, SUBJECTS.assign(split=[0, 1, 2, 1]))
    maps.delete_split(1)
    assert maps.training.splits_list == [0, 2]
    assert maps.training.data.train.splits.keys() == [0, 2]
    assert maps.training.data.validation.splits.keys() == [0, 2]
    for group in ("X", "Y"):
        assert maps.test.groups[group].results.splits.keys() == [0, 2]
        assert maps.test.groups[group].data_tsv.exists()
    assert list(maps.open_file(maps.training.data.data_tsv)["split"]) == [0, 2]
    maps.read()
    maps.delete_split(7)  # absent: nothing to do
    assert maps.training.splits_list == [0, 2]


def test_record_run(tmp_path):
    maps = Maps(tmp_path)
    started = dt.datetime(2025, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
    run = maps.record_run("train", {"step": "train split-0"}, started=started)
    assert run.path == tmp_path / "exec" / "run-train_2025_12_31_23_59_59"
    maps.record_run("train", {"step": "train split-1"}, started=started.replace(microsecond=5))
    records = maps.open_file(run.provenance_json)
    assert [r["step"] for r in records] == ["train split-0", "train split-1"]
    for record in records:
        assert record["host"] == socket.gethostname()
        assert record["command"] == sys.argv
        assert dt.datetime.fromisoformat(record["timestamp"]).tzinfo is not None
    assert len(run.info_log.read_text().splitlines()) == 2
    assert "train split-1" in run.info_log.read_text()
    assert list(maps.exec.runs) == ["train_2025_12_31_23_59_59"]
    now = maps.record_run("test", {"step": "test group-X split-0"})
    assert now.path.name.startswith("run-test_") and now.info_log.exists()
    assert min(maps.exec.runs.keys()).startswith("test_")
    with pytest.raises(ValueError):
        maps.record_run("predict", {})


# Crash safety -----------------------------------------------------------------------

VERSIONS_SRC = """
def make_versions():
    import numpy as np
    import pandas as pd
    import torch

    out = {"json": [], "tsv": [], "pt": []}
    for v in (0, 1):
        rng = np.random.default_rng(v)
        out["json"].append({"name_": "Big", "version": v, "values": rng.random(12000).round(6).tolist()})
        n = 8000 + 2000 * v
        out["tsv"].append(pd.DataFrame({
            "participant_id": [f"sub-{i:05d}" for i in range(n)], "session_id": "ses-M000",
            "value": rng.random(n), "version": v,
        }))
        g = torch.Generator().manual_seed(v)
        out["pt"].append({"network.weight": torch.randn(80000, generator=g), "version": torch.tensor(v)})
    return out
"""

# A pre-warmed fork server: torch and pandas are imported once, then each trial forks a
# child that rewrites one file in a loop until the test SIGKILLs it.
WRITER_SRC = (
    VERSIONS_SRC
    + """
import os, sys
sys.path.insert(0, sys.argv[1])
from snakemaps.maps import Maps
versions = make_versions()
print("ready", flush=True)
for line in sys.stdin:
    command, *args = line.split()
    if command == "start":
        kind, target, first = args[0], args[1], int(args[2])
        pid = os.fork()
        if pid == 0:
            try:
                i = first
                while True:
                    Maps.save_file(versions[kind][i % 2], target, overwrite=True)
                    i += 1
            finally:
                os._exit(1)
        print(pid, flush=True)
    elif command == "wait":
        _, status = os.waitpid(int(args[0]), 0)
        print(status, flush=True)
"""
)


def test_killed_writer_leaves_old_or_new_file(tmp_path):
    import torch

    script = tmp_path / "writer.py"
    script.write_text(WRITER_SRC)
    helper = subprocess.Popen(
        [sys.executable, str(script), str(SCRIPTS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    namespace: dict = {}
    exec(VERSIONS_SRC, namespace)  # noqa: S102  (the writer runs the same source)
    versions = namespace["make_versions"]()

    def ask(line: str) -> str:
        helper.stdin.write(line + "\n")
        helper.stdin.flush()
        return helper.stdout.readline().strip()

    rng = random.Random(20251231)
    seen = {kind: set() for kind in versions}
    child = None
    try:
        assert helper.stdout.readline().strip() == "ready"
        for trial in range(60):
            kind = ("json", "tsv", "pt")[trial % 3]
            folder = tmp_path / kind
            folder.mkdir(exist_ok=True)
            target = folder / f"file.{kind}"
            child = int(ask(f"start {kind} {target} {trial // 3}"))
            time.sleep(rng.uniform(0.005, 0.060))
            os.kill(child, signal.SIGKILL)
            assert int(ask(f"wait {child}")) & 0x7F == signal.SIGKILL
            child = None
            visible = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
            assert visible in ([], [target.name]), visible
            if not target.exists():
                seen[kind].add(None)
                continue
            content = Maps.open_file(target)
            if kind == "json":
                assert content in versions["json"]
                seen[kind].add(content["version"])
            elif kind == "tsv":
                assert len(content) in (8000, 10000)
                v = int(len(content) == 10000)
                pd.testing.assert_frame_equal(content, versions["tsv"][v])
                seen[kind].add(v)
            else:
                v = int(content["version"])
                assert torch.equal(content["network.weight"], versions["pt"][v]["network.weight"])
                seen[kind].add(v)
    finally:
        if child is not None:
            os.kill(child, signal.SIGKILL)
        helper.stdin.close()
        helper.wait(timeout=30)
    # the kills landed while files were being written, not only before the first write
    assert any(seen[kind] - {None} for kind in seen), seen


# Concurrency --------------------------------------------------------------------------


def _start_all(tmp_path: Path, code: str, n: int) -> None:
    go = tmp_path / "go"
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        while not Path({str(go)!r}).exists():
            time.sleep(0.005)
        proc = int(sys.argv[1])
        """
    ) + textwrap.dedent(code)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(p)], env=ENV) for p in range(n)]
    time.sleep(0.3)  # let every process start and wait at the barrier
    go.touch()
    assert [p.wait(timeout=60) for p in procs] == [0] * n


def test_concurrent_append_log(tmp_path):
    log = tmp_path / "maps" / "summary.log"
    _start_all(
        tmp_path,
        f"""
        from snakemaps.maps import Maps
        for i in range(40):
            Maps.append_log({str(log)!r}, f"proc-{{proc}} line-{{i:02d}} " + "x" * 60)
        """,
        6,
    )
    text = log.read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    expected = [f"proc-{p} line-{i:02d} " + "x" * 60 for p in range(6) for i in range(40)]
    assert sorted(lines) == sorted(expected)
    for p in range(6):  # each writer's lines stay in its order
        mine = [line for line in lines if line.startswith(f"proc-{p} ")]
        assert mine == [line for line in expected if line.startswith(f"proc-{p} ")]


def test_locked_read_modify_write(tmp_path):
    counter = tmp_path / "counter.json"
    io.write_json(counter, {"count": 0})
    _start_all(
        tmp_path,
        f"""
        from snakemaps import io
        for _ in range(25):
            with io.locked({str(counter)!r}):
                value = io.read_json({str(counter)!r})["count"]
                io.write_json({str(counter)!r}, {{"count": value + 1}})
        """,
        4,
    )
    assert io.read_json(counter) == {"count": 100}
    assert io.lock_path(counter) == tmp_path / ".counter.json.lock"


# The status command ---------------------------------------------------------------------


@pytest.fixture
def status_maps(tmp_path) -> Path:
    """Split 0 done after 5 epochs; split 1 interrupted after epoch 3 (resume checkpoint)."""
    root = build_maps(
        tmp_path / "maps",
        splits=(0, 1),
        metrics=("loss",),
        checkpoints=(),
        groups=("X",),
        num_epochs=5,
        tmp_epoch=None,
    )
    maps = Maps(root)
    _json(
        maps.metrics_json,
        {
            "metrics": {
                "loss": {"name_": "lossMetric", "higher_is_better": False},
                "BalancedAccuracy": {"name_": "BalancedAccuracyMetric"},
                "MAE": {"name_": "MAEMetric"},
            }
        },
    )
    split0 = maps.training.splits[0]
    _tsv(
        split0.validation_metrics.aggregated_tsv,
        pd.DataFrame(
            {
                "epoch": [1, 2, 3, 4, 5],
                "loss": [0.9, 0.5, 0.7, 0.3, 0.3],
                "BalancedAccuracy": [0.5, 0.8, 0.6, 0.7, 0.8],
                "MAE": [4.0, 2.0, 1.0, 3.0, 5.0],
            }
        ),
    )
    for metric in ("BalancedAccuracy", "MAE"):
        _model_dir(split0.models.best_models.metrics[metric].path, ["loss"], [1])
    split1 = maps.training.splits[1]
    _tsv(
        split1.validation_metrics.aggregated_tsv,
        pd.DataFrame(
            {
                "epoch": [1, 2, 3],
                "loss": [0.8, 0.6, 0.65],
            }
        ),
    )
    import shutil

    shutil.rmtree(split1.models.final.path)
    tmp = split1.tmp.epochs[3]
    _pt(tmp.model_pt, _state_dict())
    _json(tmp.state_json, {"current_epoch": 3})
    shutil.rmtree(maps.test.groups["X"].results.splits[1].path)
    return root


def test_status_table(status_maps, capsys):
    assert status_main([str(status_maps)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert rows["0"].split()[1:4] == ["done", "5/5", "-"]
    assert "BalancedAccuracy 0.8000 (2)" in rows["0"]
    assert "MAE 1.0000 (3)" in rows["0"]
    assert "loss 0.3000 (4)" in rows["0"]
    assert rows["1"].split()[1:4] == ["interrupted", "3/5", "epoch-3"]
    assert "loss 0.6000 (2)" in rows["1"]
    assert "group-X" in out and "split-0: best-loss, final" in out
    assert "env/environment.txt present" in out
    assert "complete: yes" in out


def test_status_json(status_maps, capsys):
    assert status_main([str(status_maps), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["num_epochs"] == 5
    done, interrupted = facts["splits"]
    assert done == {
        "split": 0,
        "state": "done",
        "epochs_done": 5,
        "num_epochs": 5,
        "models": ["best-BalancedAccuracy", "best-MAE", "best-loss", "final"],
        "best": {
            "BalancedAccuracy": {"value": 0.8, "epoch": 2, "higher_is_better": True},
            "MAE": {"value": 1.0, "epoch": 3, "higher_is_better": False},
            "loss": {"value": 0.3, "epoch": 4, "higher_is_better": False},
        },
        "resume_epoch": None,
        "final": True,
        "last_run": None,
        "missing": [],
    }
    assert interrupted["state"] == "interrupted"
    assert (interrupted["epochs_done"], interrupted["resume_epoch"]) == (3, 3)
    assert interrupted["best"] == {"loss": {"value": 0.6, "epoch": 2, "higher_is_better": False}}
    assert interrupted["final"] is False
    assert facts["test_groups"] == [
        {"group": "X", "results": [{"split": 0, "models": ["best-loss", "final"]}], "missing": []}
    ]
    assert facts["environment_txt"] is True
    assert (facts["readable"], facts["complete"]) == (True, True)
    assert facts["missing_files"] == facts["missing_mandatory"] == facts["missing_root"] == []


def test_status_states_from_provenance(status_maps, capsys):
    maps = Maps(status_maps)

    def state_of_split1(record: dict | None) -> str:
        if record is not None:
            run = maps.exec.runs["train_2026_01_01_00_00_00"]
            _json(
                run.provenance_json,
                [
                    {
                        "step": "train split-0",
                        "host": "x",
                        "pid": 1,
                        "timestamp": "2026-01-01T00:00:00+00:00",
                    },
                    {"step": "train split-1", **record},
                ],
            )
        assert status_main([str(status_maps), "--json"]) == 0
        return json.loads(capsys.readouterr().out)["splits"][1]["state"]

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    here = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert state_of_split1({"host": here, "pid": os.getpid(), "timestamp": now}) == "training"
    assert state_of_split1({"host": here, "pid": dead.pid, "timestamp": now}) == "interrupted"
    # a live pid that started after the record is a reused pid, not the trainer
    old = "2000-01-01T00:00:00+00:00"
    assert state_of_split1({"host": here, "pid": os.getpid(), "timestamp": old}) == "interrupted"
    # another host (a SLURM node): training while the split was written to recently
    assert state_of_split1({"host": "node-7", "pid": 1, "timestamp": now}) == "training"
    for path in maps.training.splits[1].path.rglob("*"):
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    assert state_of_split1({"host": "node-7", "pid": 1, "timestamp": now}) == "interrupted"
    # a split with data but no training yet
    build_split = maps.training.data.train.splits[2]
    _tsv(build_split.data_tsv, SUBJECTS)
    assert status_main([str(status_maps), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["splits"][2]["state"] == "not started"
    assert facts["splits"][2]["epochs_done"] == 0


def test_status_rejects_non_maps(tmp_path, capsys):
    assert status_main([str(tmp_path / "absent")]) == 2
    assert "no such MAPS directory" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert status_main([str(tmp_path)]) == 2
    assert "not a MAPS directory" in capsys.readouterr().err


def test_status_in_progress_maps_and_no_torch(tmp_path):
    """Right after ``create`` (only the root files), and as a module that never imports torch."""
    maps = Maps(tmp_path / "maps")
    maps.create(
        model={}, metrics={"metrics": {"loss": {}}}, callbacks={}, optimization={"num_epochs": 4}
    )
    code = textwrap.dedent(
        f"""
        import sys
        from snakemaps.maps.__main__ import main
        code = main([{str(maps.path)!r}])
        assert "torch" not in sys.modules, "status imported torch"
        sys.exit(code)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, env=ENV, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "no splits yet" in result.stdout
    assert "test groups: none" in result.stdout
    assert "env/environment.txt missing" in result.stdout
    cli = subprocess.run(
        [sys.executable, "-m", "snakemaps.maps", str(tmp_path / "absent")],
        check=False,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2 and "no such MAPS directory" in cli.stderr
