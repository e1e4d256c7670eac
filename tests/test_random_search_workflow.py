"""Random search through real snakemake: one DAG, reproducible, failed runs recorded."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from conftest import TINY, cohort, dry_run, job_counts, run_snakemake, write_table
from snakemaps.search.sampling import sample_runs

pytestmark = pytest.mark.workflow

SPACE = {
    "epochs": 2,
    "batch_size": 4,
    "learning_rate": [-8, 3.5],
    "dropout": [0, 0.3],
    "n_convblocks": [2, 3],
    "first_conv_width": [4, 8],
    "channels_limit": 16,
    "n_fcblocks": [1, 2],
}


def diverging_seed() -> int:
    """A master seed whose job-0 has a huge learning rate (diverges) and job-1 a sane one."""
    for seed in range(500):
        first, second = sample_runs(SPACE, 2, seed)
        if first["learning_rate"] > 1e6 and second["learning_rate"] < 1e-2:
            return seed
    raise AssertionError("no such seed")


def config(n_runs: int, seed: int, tracking: bool = True) -> dict:
    """TINY without the demo's test group (testing a run is checked by a dry run), tracked."""
    data = {"synthetic": {**TINY["data"]["synthetic"], "n_test_participants": 0}}
    return {
        **TINY,
        "data": data,
        "random_search": {"n_runs": n_runs, "seed": seed, "space": SPACE},
        "tracking": {"mlflow": tracking},
    }


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("search")
    seed = diverging_seed()
    first = run_snakemake(workdir, "random_search", "--keep-going", config=config(2, seed))
    return workdir, seed, first


def test_diverging_run_fails_alone_and_is_recorded(search):
    workdir, _, first = search
    launch = workdir / "results" / "random_search"
    assert first.returncode != 0  # job-0 diverged
    reason = (launch / "job-0" / "failed.txt").read_text()
    assert "FloatingPointError" in reason and "learning_rate" in reason
    assert not (launch / "job-1" / "failed.txt").exists()
    for split in (0, 1):  # --keep-going: the sane run trained every split
        assert (launch / f"job-1/maps/training/split-{split}/models/final/model.pt").exists()


def test_every_split_of_every_run_is_one_mlflow_run_tagged_with_its_job(search, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    workdir, _, _ = search
    client = MlflowClient(tracking_uri=(workdir / "mlruns").as_uri())  # the default store
    experiment = client.get_experiment_by_name("results/random_search")  # the launch dir
    runs = client.search_runs([experiment.experiment_id])
    found = {(r.data.tags["random_search.job"], r.data.tags["split"]): r for r in runs}
    assert sorted(found) == [("job-0", "0"), ("job-0", "1"), ("job-1", "0"), ("job-1", "1")]
    for (job, split), run in found.items():
        maps = workdir / "results" / "random_search" / job / "maps"
        assert run.data.tags["maps_dir"] == str(maps.resolve())
        assert run.data.tags["experiment"] == "results/random_search"
        assert run.info.run_name == f"{job} split-{split}"
        assert run.info.status == ("FAILED" if job == "job-0" else "FINISHED")  # job-0 diverged
        if job == "job-0":
            continue
        options = json.loads((maps.parent / "options.json").read_text())
        assert float(run.data.params["train.learning_rate"]) == options["learning_rate"]
        aggregated = pd.read_csv(
            maps / f"training/split-{split}/validation_metrics/aggregated.tsv", sep="\t"
        )
        for metric in ("loss", "BalancedAccuracy", "RocAuc"):
            logged = client.get_metric_history(run.info.run_id, f"validation/{metric}")
            assert [m.step for m in logged] == list(aggregated["epoch"]) == [1, 2]
            assert [m.value for m in logged] == pytest.approx(list(aggregated[metric]))
        best = run.data.tags["best-BalancedAccuracy.path"]
        assert best == str(
            maps.resolve() / f"training/split-{split}/models/best_models/best-BalancedAccuracy"
            "/model.pt"
        )


def test_rerun_writes_analysis_with_failed_run_not_run(search):
    workdir, seed, _ = search
    result = run_snakemake(workdir, "random_search", config=config(2, seed))
    assert result.returncode == 0, result.stderr[-3000:]
    launch = workdir / "results" / "random_search"
    for name in ("analysis_balanced_accuracy.tsv", "analysis_loss.tsv"):
        table = pd.read_csv(launch / name, sep="\t")
        assert list(table["job"]) == ["job-0", "job-1", "total"]
        assert list(table["run"]) == [0, 1, 1]
        assert list(table["folds"]) == [0, 2, 2]
        thresholds = [c for c in table.columns if c.startswith(">")]
        assert thresholds[0] == ">0.5" and thresholds[-1] == ">0.95"
        assert (table.iloc[2][thresholds] == table.iloc[:2][thresholds].sum()).all()
    ranked = pd.read_csv(launch / "ranked_runs.tsv", sep="\t")
    assert list(ranked["job"]) == ["job-1", "job-0"]
    assert list(ranked["status"]) == ["done", "not run"]
    assert (
        json.loads((launch / "job-1" / "options.json").read_text())
        == sample_runs(SPACE, 2, seed)[1]
    )


def test_more_runs_keep_earlier_runs_unchanged(search):
    workdir, seed, _ = search
    launch = workdir / "results" / "random_search"
    before = (launch / "job-1" / "options.json").read_text()
    # Tracking off as well: switching it is no rerun trigger.
    dry = run_snakemake(workdir, "random_search", "-n", config=config(3, seed, tracking=False))
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = dry.stdout + dry.stderr
    assert "maps=results/random_search/job-2/maps" in planned  # the new run's jobs
    assert "maps=results/random_search/job-1/maps" not in planned  # no job of job-1 reruns
    assert sample_runs(SPACE, 3, seed)[:2] == sample_runs(SPACE, 2, seed)
    assert (launch / "job-1" / "options.json").read_text() == before


def test_a_new_test_group_is_tested_on_every_run_without_retraining(search):
    workdir, seed, _ = search
    table = write_table(
        workdir / "cohort", cohort("X", 2), shape=TINY["data"]["synthetic"]["shape"]
    )
    with_group = config(2, seed) | {"test": {"groups": {"again": str(table)}}}
    output = dry_run(workdir, with_group, "random_search")
    # job-0 failed: only job-1 has models to evaluate; no run is trained again.
    assert job_counts(output) == {
        "prepare": 1,
        "register_test_group": 1,
        "test": 1,
        "random_search": 1,
    }
    tested = set(re.findall(r"wildcards: maps=(\S+), group=again", output))
    assert tested == {"results/random_search/job-1/maps"}
