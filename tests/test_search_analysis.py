"""Random-search analysis: threshold tables, ranked runs, MAPS collection."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from snakemaps.errors import UserError
from snakemaps.io import read_tsv
from snakemaps.search.analysis import (
    THRESHOLDS,
    analysis_table,
    collect_run_metrics,
    collect_validation_metrics,
    natural_key,
    ranked_table,
    write_analysis,
)

LABELS = [">0.5", ">0.55", ">0.6", ">0.65", ">0.7", ">0.75", ">0.8", ">0.85", ">0.9", ">0.95"]


def write_split(maps: Path, split: int, metric: str, rows: list[dict]) -> None:
    folder = (
        maps / "training" / f"split-{split}" / "models" / "best_models" / f"best-{metric}"
    ) / "validation_metrics"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "aggregated.tsv", sep="\t", index=False)


def make_maps(maps: Path, accuracy: list[float], loss_accuracy: list[float]) -> None:
    """A MAPS whose best models have these validation balanced accuracies per split."""
    for split, value in enumerate(accuracy):
        write_split(
            maps,
            split,
            "BalancedAccuracy",
            [
                {"epoch": 0, "loss": 0.9, "BalancedAccuracy": 0.5, "Accuracy": 0.5},
                {"epoch": 3, "loss": 0.5, "BalancedAccuracy": value, "Accuracy": value + 0.01},
            ],
        )
    for split, value in enumerate(loss_accuracy):
        write_split(
            maps,
            split,
            "loss",
            [{"epoch": 2, "loss": 0.4, "BalancedAccuracy": value, "Accuracy": value}],
        )


def test_thresholds_and_labels():
    assert THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    table = analysis_table({})
    assert list(table.columns) == ["job", "run", *LABELS, "folds"]
    assert table["job"].tolist() == ["total"]


def test_analysis_table_counts_and_total():
    table = analysis_table(
        {
            "job-10": [0.92, 0.90],  # mean 0.91
            "job-2": [0.7, 0.62],  # mean 0.66
            "job-1": None,
            "job-0": [0.55],  # not strictly above 0.55
        }
    )
    assert table["job"].tolist() == ["job-0", "job-1", "job-2", "job-10", "total"]
    rows = table.set_index("job")
    assert rows.loc["job-0", ["run", *LABELS, "folds"]].tolist() == [1, 1] + [0] * 9 + [1]
    assert rows.loc["job-1"].drop("run").sum() == 0 and rows.loc["job-1", "run"] == 0
    assert rows.loc["job-2", LABELS].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert rows.loc["job-10", LABELS].tolist() == [1] * 9 + [0]
    assert rows.loc["job-10", "folds"] == 2
    numeric = ["run", *LABELS, "folds"]
    assert rows.loc["total", numeric].tolist() == rows.drop("total")[numeric].sum().tolist()
    assert rows.loc["total", "run"] == 3 and rows.loc["total", "folds"] == 5


def test_natural_job_order():
    names = ["job-10", "job-2", "job-1", "job-0", "job-21"]
    assert sorted(names, key=natural_key) == ["job-0", "job-1", "job-2", "job-10", "job-21"]


def test_ranked_table_order_and_stats():
    options = {
        "job-0": {"learning_rate": 1e-3, "n_conv": [1, 2], "network_normalization": None},
        "job-1": {"learning_rate": 1e-4, "n_conv": [2], "network_normalization": "BatchNorm"},
        "job-2": {"learning_rate": 1e-5, "n_conv": [1], "network_normalization": None},
        "job-10": {"learning_rate": 1e-2, "n_conv": [1, 1, 1], "network_normalization": None},
    }
    metrics = {
        "job-0": {"BalancedAccuracy": [0.6, 0.8], "loss": [0.5, 0.3]},
        "job-1": {"loss": [0.2], "BalancedAccuracy": [0.9]},
        "job-2": {},
        "job-10": {"BalancedAccuracy": [0.65, 0.75, 0.7], "loss": [0.4, 0.4, 0.4]},
    }
    table = ranked_table(options, metrics)
    assert table["job"].tolist() == ["job-1", "job-0", "job-10", "job-2"]
    assert table["status"].tolist() == ["done", "done", "done", "not run"]
    assert table["rank"].tolist()[:3] == [1, 2, 3] and pd.isna(table["rank"].iloc[3])
    assert list(table.columns[:8]) == [
        "job",
        "rank",
        "status",
        "BalancedAccuracy_mean",
        "BalancedAccuracy_std",
        "loss_mean",
        "loss_std",
        "n_splits",
    ]
    rows = table.set_index("job")
    assert rows.loc["job-0", "BalancedAccuracy_mean"] == pytest.approx(0.7)
    assert rows.loc["job-0", "BalancedAccuracy_std"] == pytest.approx(0.1414213562)
    assert math.isnan(rows.loc["job-1", "BalancedAccuracy_std"])  # one split
    assert rows.loc["job-10", "n_splits"] == 3 and rows.loc["job-2", "n_splits"] == 0
    assert rows.loc["job-0", "n_conv"] == "[1, 2]"
    assert rows.loc["job-0", "network_normalization"] == "None"
    assert rows.loc["job-2", "learning_rate"] == 1e-5


def test_collect_metrics_reads_last_row_per_split(tmp_path):
    maps = tmp_path / "maps"
    make_maps(maps, accuracy=[0.7, 0.8, 0.9], loss_accuracy=[0.6, 0.65])
    (maps / "training" / "split-x").mkdir()  # not a split
    assert collect_run_metrics(maps, "BalancedAccuracy") == [0.7, 0.8, 0.9]
    assert collect_run_metrics(maps, "loss") == [0.6, 0.65]
    every = collect_validation_metrics(maps, "BalancedAccuracy")
    assert set(every) == {"loss", "BalancedAccuracy", "Accuracy"}
    assert every["loss"] == [0.5, 0.5, 0.5]
    assert collect_run_metrics(tmp_path / "nothing", "loss") is None
    assert collect_validation_metrics(tmp_path / "nothing", "loss") == {}


def test_collect_orders_splits_numerically(tmp_path):
    maps = tmp_path / "maps"
    for split in (10, 2):
        write_split(maps, split, "loss", [{"epoch": 1, "BalancedAccuracy": split / 100}])
    assert collect_run_metrics(maps, "loss") == [0.02, 0.1]


def test_missing_balanced_accuracy_column_is_a_user_error(tmp_path):
    maps = tmp_path / "maps"
    write_split(maps, 0, "loss", [{"epoch": 1, "loss": 0.3}])
    with pytest.raises(UserError, match="BalancedAccuracy"):
        collect_run_metrics(maps, "loss")


def test_write_analysis_on_hand_made_maps(tmp_path):
    launch = tmp_path / "launch"
    jobs = {f"job-{i}": launch / f"job-{i}" / "maps" for i in (0, 1, 2, 10)}
    make_maps(jobs["job-0"], accuracy=[0.72, 0.78], loss_accuracy=[0.6, 0.62])
    make_maps(jobs["job-2"], accuracy=[0.96, 0.98, 0.97], loss_accuracy=[0.9, 0.92, 0.91])
    make_maps(jobs["job-10"], accuracy=[0.81], loss_accuracy=[0.52])
    (launch / "job-10" / "failed.txt").write_text("CUDA out of memory\n")
    # job-1: MAPS never created.
    options = {job: {"epochs": 4, "n_conv": [1, 2]} for job in jobs}

    paths = write_analysis(launch, jobs, options)

    assert {p.name for p in paths.values()} == {
        "analysis_balanced_accuracy.tsv",
        "analysis_loss.tsv",
        "ranked_runs.tsv",
    }
    accuracy = read_tsv(paths["balanced_accuracy"]).set_index("job")
    assert accuracy.index.tolist() == ["job-0", "job-1", "job-2", "job-10", "total"]
    assert accuracy["run"].tolist() == [1, 0, 1, 0, 2]
    assert accuracy["folds"].tolist() == [2, 0, 3, 0, 5]
    assert accuracy.loc["job-0", LABELS].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert accuracy.loc["job-2", LABELS].tolist() == [1] * 10
    assert accuracy.loc["total", LABELS].tolist() == [2, 2, 2, 2, 2, 1, 1, 1, 1, 1]

    loss = read_tsv(paths["loss"]).set_index("job")
    assert loss.loc["job-0", LABELS].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert loss.loc["job-2", LABELS].tolist() == [1] * 9 + [0]
    assert loss.loc["total", "folds"] == 5

    ranked = read_tsv(paths["ranked"])
    assert ranked["job"].tolist() == ["job-2", "job-0", "job-1", "job-10"]
    assert ranked["status"].tolist() == ["done", "done", "not run", "not run"]
    assert ranked["BalancedAccuracy_mean"].iloc[0] == pytest.approx(0.97)
    assert ranked["n_conv"].iloc[0] == "[1, 2]"
    assert not list(launch.glob(".*.tmp"))  # atomic writes leave no temp files


def test_a_reconstruction_search_is_ranked_by_loss_and_needs_the_loss_column(tmp_path):
    launch = tmp_path / "launch"
    jobs = {f"job-{i}": launch / f"job-{i}" / "maps" for i in (0, 1)}
    write_split(jobs["job-0"], 0, "loss", [{"epoch": 3, "loss": 0.30, "MSE": 0.30}])
    write_split(jobs["job-1"], 0, "loss", [{"epoch": 2, "loss": 0.12, "MSE": 0.12}])
    paths = write_analysis(launch, jobs, {job: {} for job in jobs}, task="reconstruction")
    assert list(paths) == ["ranked"]
    ranked = read_tsv(paths["ranked"])
    assert ranked["job"].tolist() == ["job-1", "job-0"]  # lowest loss first
    assert ranked["rank"].tolist() == [1, 2]
    assert not (launch / "analysis_balanced_accuracy.tsv").exists()

    paths["ranked"].unlink()
    write_split(jobs["job-1"], 0, "loss", [{"epoch": 2, "MSE": 0.12}])
    with pytest.raises(UserError, match=r"job-1/maps: .*no 'loss' column"):
        write_analysis(launch, jobs, {job: {} for job in jobs}, task="reconstruction")
    assert not paths["ranked"].exists()  # nothing half-written
