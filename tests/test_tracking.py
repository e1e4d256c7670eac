"""MLflow tracking of a training, read back with MLflow's own client."""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import ROOT, cohort, write_table
from snakemaps.data.prepare import prepare_cache
from snakemaps.errors import UserError
from snakemaps.experiment import create_maps
from snakemaps.maps import Maps
from snakemaps.tasks import resolve_defaults
from snakemaps.train import callbacks, train_split
from snakemaps.train.tracking import experiment_name, flatten, resolve_tracking_uri

SCHEMA = yaml.safe_load((ROOT / "config" / "config.schema.yaml").read_text())


def schema_defaults(node: dict) -> dict:
    return {
        key: schema_defaults(spec) if "properties" in spec else copy.deepcopy(spec["default"])
        for key, spec in node["properties"].items()
    }


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A tiny MAPS (12^3 images, 2 splits) and its experiment config, defaults filled."""
    root = tmp_path_factory.mktemp("tracked")
    config = schema_defaults(SCHEMA)
    config["split"]["n_splits"] = 2
    config["model"]["conv_channels"] = [4, 8]
    config["train"].update(
        epochs=2, batch_size=4, device="cpu", amp=False, channels_last=False, deterministic=True
    )
    resolve_defaults(config)
    table = write_table(root / "data", cohort("A", 4), shape=(12, 12, 12))
    manifest = prepare_cache(table, root / "cache", root / "cache" / "manifest.tsv")
    create_maps(
        root / "maps",
        manifest,
        split=config["split"],
        model=config["model"],
        train=config["train"],
    )
    return root, config


def fresh_maps(experiment, tmp_path):
    root, config = experiment
    shutil.copytree(root / "maps", tmp_path / "maps")
    return tmp_path / "maps", copy.deepcopy(config)


def train(maps, config, split=0, search_run=None, **tracking):
    """Train one split as the train rule does, with tracking on and ``tracking`` settings."""
    return train_split(
        maps,
        split,
        config["train"],
        tracking={**config["tracking"], "mlflow": True, **tracking},
        tracked_config={key: config[key] for key in ("data", "split")},
        search_run=search_run,
    )


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    return uri, MlflowClient(tracking_uri=uri)


def runs(client, name):
    found = client.get_experiment_by_name(name)
    assert found is not None, f"no MLflow experiment {name!r}"
    return client.search_runs([found.experiment_id])


def history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def assert_matches_maps(client, run_id, split_dir):
    """Per-epoch metrics equal the MAPS's logs, each epoch logged once."""
    aggregated = pd.read_csv(split_dir.validation_metrics.aggregated_tsv, sep="\t")
    for column in aggregated.columns.drop("epoch"):
        logged = history(client, run_id, f"validation/{column}")
        expected = list(zip(aggregated["epoch"], aggregated[column]))
        assert [s for s, _ in logged] == [e for e, _ in expected], column
        for (_, got), (_, want) in zip(logged, expected):
            assert got == pytest.approx(want, rel=1e-6) or math.isnan(got) and math.isnan(want)
    losses = pd.read_csv(split_dir.logs.training_loss_tsv, sep="\t")
    means = losses.groupby("epoch")["loss"].mean()
    logged = history(client, run_id, "train/loss")
    assert [s for s, _ in logged] == list(means.index)
    assert [v for _, v in logged] == pytest.approx(list(means), rel=1e-6)


def test_training_is_one_run_with_params_epoch_metrics_and_best_model_tags(
    experiment, tmp_path, client
):
    maps, config = fresh_maps(experiment, tmp_path)
    uri, mlflow = client
    train(maps, config, tracking_uri=uri)
    [run] = runs(mlflow, str(maps))  # default experiment: the MAPS directory
    assert run.info.status == "FINISHED" and run.info.run_name == "split-0"
    params = run.data.params
    assert params["train.learning_rate"] == "0.001"
    assert params["train.early_stopping.patience"] == "0"
    assert params["train.monitor"] == '["loss", "BalancedAccuracy"]'
    assert params["model.network.name_"] == "CNN"
    assert params["model.classes"] == '["AD", "CN"]'
    assert params["data.synthetic.n_participants"] == "120"
    assert params["split.n_splits"] == "2"
    tags = run.data.tags
    assert tags["maps_dir"] == str(maps.resolve()) and tags["split"] == "0"
    assert tags["experiment"] == str(maps)
    assert "random_search.job" not in tags
    split_dir = Maps(maps).split(0)
    assert_matches_maps(mlflow, run.info.run_id, split_dir)
    assert [s for s, _ in history(mlflow, run.info.run_id, "train/learning_rate")] == [1, 2]
    aggregated = pd.read_csv(split_dir.validation_metrics.aggregated_tsv, sep="\t")
    best = aggregated.loc[aggregated["loss"].idxmin()]
    assert tags["best-loss.epoch"] == str(int(best["epoch"]))
    assert float(tags["best-loss.value"]) == pytest.approx(best["loss"], rel=1e-6)
    best_loss = split_dir.models.best_models.metrics["loss"].model_pt
    assert tags["best-loss.path"] == str(best_loss.resolve()) and best_loss.is_file()
    assert tags["final.path"] == str(split_dir.models.final.model_pt.resolve())
    assert tags["epochs_trained"] == "2"
    assert not (split_dir.tmp.path / "mlflow_run.json").exists()  # tmp/ emptied at the end


def test_random_search_run_is_tagged_and_named_after_the_launch_dir(experiment, tmp_path, client):
    maps, config = fresh_maps(experiment, tmp_path)
    uri, mlflow = client
    job = tmp_path / "search" / "job-3"
    train(maps, config, split=1, tracking_uri=uri, search_run=str(job))
    [run] = runs(mlflow, str(job.parent))
    assert run.info.run_name == "job-3 split-1"
    assert run.data.tags["random_search.job"] == "job-3"
    assert run.data.tags["random_search.launch_dir"] == str(job.parent.resolve())
    assert run.data.tags["experiment"] == str(job.parent) and run.data.tags["split"] == "1"


def test_experiment_setting_names_the_experiment(experiment, tmp_path, client):
    maps, config = fresh_maps(experiment, tmp_path)
    uri, mlflow = client
    config["train"]["epochs"] = 1
    train(maps, config, tracking_uri=uri, experiment="AD vs CN")
    [run] = runs(mlflow, "AD vs CN")
    assert run.data.tags["experiment"] == "AD vs CN"
    assert mlflow.get_experiment_by_name(str(maps)) is None


def test_resumed_training_continues_its_run_without_duplicate_steps(
    experiment, tmp_path, client, monkeypatch
):
    maps, config = fresh_maps(experiment, tmp_path)
    uri, mlflow = client
    config["train"].update(epochs=4, checkpoint_every=2)
    original = callbacks.ProgressLogger.on_epoch_start

    def crash_in_epoch_4(self, trainer, **kwargs):
        if trainer.state.current_epoch == 3:  # epoch 3 logged, last checkpoint at epoch 2
            raise RuntimeError("node lost")
        original(self, trainer, **kwargs)

    monkeypatch.setattr(callbacks.ProgressLogger, "on_epoch_start", crash_in_epoch_4)
    with pytest.raises(RuntimeError, match="node lost"):
        train(maps, config, tracking_uri=uri)
    [crashed] = runs(mlflow, str(maps))
    assert crashed.info.status == "FAILED"
    split_dir = Maps(maps).split(0)
    assert split_dir.tmp.epochs_list == [2]
    stored = json.loads((split_dir.tmp.epochs[2].callbacks / "MLflowTracking.json").read_text())
    assert stored["run_id"] == crashed.info.run_id
    assert [s for s, _ in history(mlflow, crashed.info.run_id, "validation/loss")] == [1, 2, 3]

    monkeypatch.setattr(callbacks.ProgressLogger, "on_epoch_start", original)
    train(maps, config, tracking_uri=uri)  # resumes at epoch 2, redoes epoch 3
    [run] = runs(mlflow, str(maps))
    assert run.info.run_id == crashed.info.run_id and run.info.status == "FINISHED"
    # Deterministic on CPU: the redone epoch 3 equals the logged one, so the MAPS agrees.
    assert_matches_maps(mlflow, run.info.run_id, split_dir)
    assert [s for s, _ in history(mlflow, run.info.run_id, "train/learning_rate")] == [1, 2, 3, 4]


def test_fresh_start_after_a_crash_before_any_checkpoint_marks_the_first_run_killed(
    experiment, tmp_path, client, monkeypatch
):
    maps, config = fresh_maps(experiment, tmp_path)
    uri, mlflow = client
    config["train"]["epochs"] = 1

    def lost(self, trainer, **kwargs):
        raise RuntimeError("node lost")

    # A kill -9 runs no handler: the run is left RUNNING, with no checkpoint to resume.
    monkeypatch.setattr(callbacks.ProgressLogger, "on_epoch_start", lost)
    monkeypatch.setattr(
        "snakemaps.train.tracking.MLflowTracking.on_exception", lambda *a, **k: None
    )
    with pytest.raises(RuntimeError):
        train(maps, config, tracking_uri=uri)
    [first] = runs(mlflow, str(maps))
    assert first.info.status == "RUNNING"
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    train(maps, config, tracking_uri=uri)
    statuses = {r.info.run_id: r.info.status for r in runs(mlflow, str(maps))}
    assert statuses.pop(first.info.run_id) == "KILLED"
    assert list(statuses.values()) == ["FINISHED"]


def test_unusable_tracking_uri_is_refused_before_training(experiment, tmp_path):
    maps, config = fresh_maps(experiment, tmp_path)
    with pytest.raises(UserError, match=r"tracking.tracking_uri = 'nosuch://host'"):
        train(maps, config, tracking_uri="nosuch://host")
    assert not Maps(maps).split(0).logs.training_loss_tsv.exists()


def test_tracking_off_imports_no_mlflow(experiment, tmp_path):
    maps, config = fresh_maps(experiment, tmp_path)
    config["train"]["epochs"] = 1
    child = f"""
import sys
sys.path.insert(0, {str(ROOT / "scripts")!r})
from snakemaps.train import train_split
train_split({str(maps)!r}, 0, {config["train"]!r}, tracking={config["tracking"]!r})
print("mlflow imported:", any(m == "mlflow" or m.startswith("mlflow.") for m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert config["tracking"]["mlflow"] is False
    assert result.stdout.strip().splitlines()[-1] == "mlflow imported: False"
    assert Maps(maps).split(0).models.final.model_pt.is_file()


def test_tracking_uri_paths_become_file_uris_and_uris_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("mlruns") == (tmp_path / "mlruns").resolve().as_uri()
    for uri in ("http://127.0.0.1:5000", "sqlite:///mlflow.db", "file:///data/mlruns"):
        assert resolve_tracking_uri(uri) == uri


def test_experiment_name_defaults_and_flattened_params():
    assert experiment_name(None, "results/maps", None) == "results/maps"
    assert experiment_name(None, "rs/job-1/maps", "rs/job-1") == "rs"
    assert experiment_name("mine", "rs/job-1/maps", "rs/job-1") == "mine"
    assert flatten({"a": {"b": 1, "c": [1, 2], "d": None, "e": {}}, "f": "x"}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "a.d": "null",
        "a.e": "{}",
        "f": "x",
    }
