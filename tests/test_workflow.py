"""The whole experiment through real snakemake on a tiny config: a complete MAPS.

Every split trains with 2 gloo processes (``train.distributed.processes: 2``,
DistributedDataParallel on the CPU), so the MAPS checked here is the one a
multi-process training writes; ``--cores 4`` lets both splits train at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import (
    ROOT,
    TINY,
    local_snakemake_env,
    planned_jobs,
    run_snakemake,
    snakemake_command,
)
from snakemaps.maps import Maps

pytestmark = pytest.mark.workflow

DEMO = {
    **TINY,
    "train": {
        **TINY["train"],
        "deterministic": True,
        "distributed": {"processes": 2, "timeout": 120},
    },
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    result = run_snakemake(workdir, "--cores", "4", config=DEMO)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, result


def test_complete_maps_opens_and_has_every_file(demo):
    workdir, _ = demo
    maps = Maps(workdir / "results" / "maps").read(strict=True)
    assert maps.training.splits_list == [0, 1]
    assert maps.test.groups_list == ["test"]
    for k in (0, 1):
        split = maps.split(k)
        assert split.models.names() == ["best-BalancedAccuracy", "best-loss", "epoch-2", "final"]
        assert split.tmp.epochs_list == []  # emptied when training ends
        loss = pd.read_csv(split.logs.training_loss_tsv, sep="\t")
        assert list(loss.columns) == ["epoch", "batch", "loss"]
        assert loss["epoch"].max() == 3
        aggregated = pd.read_csv(split.validation_metrics.aggregated_tsv, sep="\t")
        assert list(aggregated["epoch"]) == [1, 2, 3]
        assert {"loss", "BalancedAccuracy", "RocAuc", "F1"} <= set(aggregated.columns)
        state = torch.load(split.models.final.model_pt, weights_only=True)
        assert all(key.startswith("network.") for key in state)
        for name in ("best-loss", "final"):
            result = maps.test.groups["test"].results.splits[k].models[name]
            metrics = pd.read_csv(result.metrics.aggregated_tsv, sep="\t")
            assert "epoch" not in metrics.columns and len(metrics) == 1
            details = pd.read_csv(result.metrics.details_tsv, sep="\t")
            assert list(details.columns[:2]) == ["participant_id", "session_id"]
    assert maps.env.environment_txt.read_text().startswith("# snakemaps environment snapshot")
    lock = maps.env.path / "requirements.lock"
    assert lock.read_bytes() == (ROOT / "requirements.lock").read_bytes()
    summary = pd.read_csv(maps.test.groups["test"].summary_tsv("BalancedAccuracy"), sep="\t")
    assert list(summary["split"]) == ["0", "1", "mean", "std"]


def test_clinicadl_2_reader_opens_the_demo_maps(demo, clinicadl_reader, tmp_path):
    """ClinicaDL 2.0's own ``Maps`` reads the MAPS and parses every file it exposes."""
    workdir, _ = demo
    seen = clinicadl_reader(workdir / "results" / "maps")
    assert seen["splits"] == [0, 1]
    assert seen["test_groups"] == ["test"]
    for k in ("0", "1"):
        assert seen["models"][k] == ["best-BalancedAccuracy", "best-loss", "epoch-2", "final"]
        for name in seen["models"][k]:
            folder = "best_models/" + name if name.startswith("best-") else name
            folder = "checkpoints/" + name if name.startswith("epoch-") else folder
            assert f"training/split-{k}/models/{folder}/model.pt" in seen["files"]
            assert (
                f"test/group-test/results/split-{k}/{name}/metrics/aggregated.tsv" in seen["files"]
            )
    for name in ("model.json", "metrics.json", "callbacks.json", "training/optimization.json"):
        assert name in seen["files"]
    # The same reader refuses a MAPS without one of its mandatory files.
    broken = shutil.copytree(workdir / "results" / "maps", tmp_path / "maps")
    (broken / "model.json").unlink()
    assert "model.json" in clinicadl_reader(broken, fails=True)


def test_completeness_check_fails_on_a_missing_file(demo, tmp_path):
    """The strict check refuses the workflow's MAPS once a file it wrote is gone."""
    import shutil

    from snakemaps.maps import MapsError
    from snakemaps.maps.__main__ import main as status_main

    workdir, _ = demo
    written = workdir / "results" / "maps"
    maps_dir = Path(shutil.copytree(written, tmp_path / "maps"))
    assert status_main([str(maps_dir), "--strict"]) == 0
    for relative in (
        "training/split-1/computational.json",
        "test/group-test/results/split-0/final/metrics/details.tsv",
    ):
        (maps_dir / relative).unlink()
        with pytest.raises(MapsError, match=f"missing {maps_dir / relative}"):
            Maps(maps_dir).read(strict=True)
        assert status_main([str(maps_dir), "--strict"]) == 1
        assert Maps(maps_dir).read().path == maps_dir  # ClinicaDL's reader would still open it
        shutil.copy2(written / relative, maps_dir / relative)
    Maps(maps_dir).read(strict=True)


def test_best_model_validation_matches_training_log(demo):
    workdir, _ = demo
    maps = Maps(workdir / "results" / "maps")
    split = maps.split(0)
    log = pd.read_csv(split.validation_metrics.aggregated_tsv, sep="\t")
    best = pd.read_csv(
        split.models.best_models.metrics["loss"].validation_metrics.aggregated_tsv, sep="\t"
    )
    row = log.loc[log["loss"].idxmin()]
    assert best["epoch"].iloc[0] == row["epoch"]
    assert best["loss"].iloc[0] == pytest.approx(row["loss"], rel=1e-4)


@pytest.mark.parametrize("model", ["best-loss", "best-BalancedAccuracy", "final", "epoch-2"])
def test_saved_models_predict_what_training_validated(demo, model):
    """The validate step reuses training's validation rows: a fresh evaluation must agree."""
    from snakemaps.evaluate import _evaluate
    from snakemaps.split import split_frame

    workdir, _ = demo
    maps_dir = workdir / "results" / "maps"
    maps = Maps(maps_dir)
    values, details, _ = _evaluate(
        maps, 1, model, split_frame(maps_dir, 1, "validation"), "cpu", 4, 1, "validate", "v"
    )
    files = maps.split(1).models.get(model).validation_metrics
    recorded = pd.read_csv(files.aggregated_tsv, sep="\t").iloc[0]
    for metric, value in values.items():
        assert value == pytest.approx(recorded[metric], rel=1e-5, abs=1e-6), metric
    written = pd.read_csv(files.details_tsv, sep="\t")
    assert list(written["participant_id"]) == list(details["participant_id"])
    assert list(written["prediction"]) == list(details["prediction"])
    probabilities = [c for c in details.columns if c.startswith("proba")]
    assert written[probabilities].to_numpy() == pytest.approx(
        details[probabilities].to_numpy(), abs=1e-6
    )


def test_split_manifest_has_no_leakage(demo):
    workdir, _ = demo
    manifest = Maps(workdir / "results" / "maps").open_file(
        workdir / "results/maps/training/data/split_manifest.json"
    )
    tests = set(
        pd.read_csv(workdir / "results/maps/test/group-test/data.tsv", sep="\t").participant_id
    )
    assert tests and "test_groups" not in manifest  # groups are checked when registered
    for side in manifest["splits"].values():
        train = {p for p, _ in side["train"]}
        validation = {p for p, _ in side["validation"]}
        assert not train & validation and not (train | validation) & tests


def test_rerun_has_nothing_to_do(demo):
    workdir, _ = demo
    result = run_snakemake(workdir, config=DEMO)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "deleted",
    [
        "training/split-1/models/best_models/best-loss",
        "training/split-1/models/best_models/best-loss/validation_metrics/aggregated.tsv",
    ],
)
def test_a_deleted_best_model_retrains_its_split_and_what_reads_it(demo, tmp_path, deleted):
    """A deleted model or validation file is made again by its train job, then its readers.

    Rule test takes one file per train job (the final model, see final_models
    in common.smk); the train job, missing one of its outputs, runs again
    (training from scratch: its checkpoints go when training ends), and the
    test job after it.
    """
    workdir, _ = demo
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    target = copy / "results/maps" / deleted
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    jobs = planned_jobs(copy, DEMO)
    assert jobs["train"] == 1 and jobs["test"] == 1, jobs
    assert "validate" not in jobs, jobs
    assert "split" not in jobs, jobs


def test_provenance_records_each_step(demo):
    workdir, _ = demo
    maps = Maps(workdir / "results" / "maps")
    kinds = {name.split("_")[0] for name in maps.exec.runs}
    assert kinds == {"train", "validate", "test"}
    record = next(
        r
        for name in maps.exec.runs
        if name.startswith("train")
        for r in maps.open_file(maps.exec.runs[name].provenance_json)
    )
    assert {"host", "command", "split_manifest_hash", "torch", "git_commit"} <= set(record)


def test_rerun_warns_when_environment_changed(demo, tmp_path):
    workdir, _ = demo
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    recorded = copy / "results/maps/env/environment.txt"
    text = recorded.read_text()
    assert "\nnumpy==" in text
    lines = ["numpy==0.0.1" if line.startswith("numpy==") else line for line in text.splitlines()]
    recorded.write_text("\n".join(lines) + "\n")
    result = run_snakemake(copy, "results/maps/training/data/split_manifest.json", config=DEMO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the environment differs from the one recorded" in result.stderr
    assert "numpy: 0.0.1 -> " in result.stderr


def test_report_builds_with_its_figures(demo, tmp_path):
    workdir, _ = demo
    report = tmp_path / "report.html"
    result = run_snakemake(workdir, "--report", str(report), config=DEMO)
    assert result.returncode == 0, result.stderr[-3000:]
    html = report.read_text(errors="replace")
    for name in (
        "learning_curves.png",
        "test_metrics.png",
        "confusion_roc_final.png",
        "environment.html",
    ):
        assert name in html, name
    assert report.stat().st_size > 100_000


def test_concurrent_splits_kept_the_shared_summary_whole(demo):
    workdir, _ = demo
    lines = (workdir / "results/maps/summary.log").read_text().splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["split-0", "split-1"]
    assert all("best loss" in line and "best BalancedAccuracy" in line for line in lines)


def test_test_group_added_changed_or_removed_trains_nothing(demo, tmp_path):
    """ClinicaDL's predict: a cohort added to a finished MAPS is evaluated with its models."""
    workdir, _ = demo
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    maps = copy / "results" / "maps"
    trained = {path: path.stat().st_mtime_ns for path in maps.glob("training/**/*.*")}
    demo_group = {path: path.stat().st_mtime_ns for path in maps.glob("test/group-test/**/*")}
    # A new cohort: held-out participants of the demo, image paths made absolute.
    synthetic = copy / "results/data/synthetic"
    cohort = pd.read_csv(synthetic / "test.tsv", sep="\t")
    cohort["image"] = [str(synthetic / image) for image in cohort["image"]]
    table = copy / "again.tsv"
    cohort.to_csv(table, sep="\t", index=False)
    with_group = {**DEMO, "test": {"groups": {"again": str(table)}}}
    group_jobs = {
        "prepare": 1,
        "register_test_group": 1,
        "test": 1,
        "report_test_metrics": 1,
        "report_test_figure": 3,
        "all": 1,
    }

    assert planned_jobs(copy, with_group, "again") == group_jobs
    # Evaluate it (the figures are left out to save time; they are planned above).
    result = run_snakemake(
        copy, "results/maps/test/group-again/summary-BalancedAccuracy.tsv", config=with_group
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = pd.read_csv(maps / "test/group-again/summary-BalancedAccuracy.tsv", sep="\t")
    assert list(summary["split"]) == ["0", "1", "mean", "std"]
    # The same participants as group "test": the same models give the same metrics.
    expected = pd.read_csv(maps / "test/group-test/summary-BalancedAccuracy.tsv", sep="\t")
    pd.testing.assert_frame_equal(summary, expected)

    # Changing the group reruns its own jobs only.
    cohort[cohort["participant_id"] != cohort["participant_id"].iloc[0]].to_csv(
        table, sep="\t", index=False
    )
    assert planned_jobs(copy, with_group, "again") == group_jobs
    # Changing the demo's own group (its size) reruns that group only.
    smaller = {
        **DEMO,
        "data": {"synthetic": {**TINY["data"]["synthetic"], "n_test_participants": 4}},
    }
    assert planned_jobs(copy, smaller, "test") == {**group_jobs, "generate_demo": 1}

    # Removing the group plans nothing and deletes nothing.
    result = run_snakemake(copy, config=DEMO)
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr
    assert (maps / "test/group-again/summary-BalancedAccuracy.tsv").is_file()
    assert trained == {path: path.stat().st_mtime_ns for path in maps.glob("training/**/*.*")}
    assert demo_group == {
        path: path.stat().st_mtime_ns for path in maps.glob("test/group-test/**/*")
    }


def test_each_split_trained_by_two_ranks_and_written_by_rank_0_alone(demo):
    from snakemaps.split import split_frame

    workdir, _ = demo
    maps = Maps(workdir / "results" / "maps")
    records = [
        r
        for name in maps.exec.runs
        if name.startswith("train")
        for r in maps.open_file(maps.exec.runs[name].provenance_json)
    ]
    assert sorted(r["step"] for r in records) == ["train split-0", "train split-1"]  # not 4
    for k in (0, 1):
        split = maps.split(k)
        computational = maps.open_file(split.computational_json)
        assert computational["world_size"] == 2 and computational["backend"] == "gloo"
        log = (workdir / f"logs/results/maps/train_split-{k}.log").read_text()
        assert "starting 2 ranks on this node (torch.distributed, gloo)" in log
        assert log.count(f"split-{k}: training 3 epochs") == 1  # rank 0's line only
        # each rank sees half of the training images per epoch: half the steps
        n_train = len(split_frame(workdir / "results/maps", k, "train"))
        per_rank = -(-n_train // 2)
        steps = -(-per_rank // TINY["train"]["batch_size"])
        loss = pd.read_csv(split.logs.training_loss_tsv, sep="\t")
        assert list(loss.groupby("epoch").size()) == [steps] * 3


def rank_pids(workdir: Path) -> list[int]:
    """PIDs of the training ranks (python -m snakemaps.train.distributed) running in ``workdir``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"snakemaps.train.distributed" in cmdline and Path(cwd) == workdir:
            pids.append(int(entry.name))
    return sorted(pids)


def test_killed_rank_resumes_bit_identical_to_the_unbroken_two_rank_run(demo, tmp_path):
    """SIGKILL one of the 2 ranks after a checkpoint; the rerun ends with the demo's weights."""
    workdir, _ = demo
    broken = tmp_path / "broken"
    shutil.copytree(workdir, broken, symlinks=True)
    target = "results/maps/training/split-0/models/final/model.pt"
    tmp = broken / "results/maps/training/split-0/tmp"
    command = snakemake_command(broken, target, "--forcerun", "train", config=DEMO)
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=local_snakemake_env(),
    )
    deadline, pids = time.monotonic() + 300, []
    while len(pids) < 2 or not list(tmp.glob("epoch-*")):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        pids = pids if len(pids) == 2 else rank_pids(broken)
        time.sleep(0.01)
    os.kill(pids[1], signal.SIGKILL)
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0, output[-3000:]
    assert "rank 1: Signal 9 (SIGKILL)" in output, output[-3000:]
    assert not (broken / target).exists()
    assert rank_pids(broken) == []  # rank 0 was stopped too
    [checkpoint] = tmp.glob("epoch-*")
    assert int(checkpoint.name.removeprefix("epoch-")) < 3

    result = run_snakemake(broken, target, config=DEMO)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (broken / "logs/results/maps/train_split-0.log").read_text()
    assert f"resuming from checkpoint results/maps/training/split-0/tmp/{checkpoint.name}" in log
    a, b = Maps(broken / "results/maps").split(0), Maps(workdir / "results/maps").split(0)
    for model in ("final", "best-loss", "best-BalancedAccuracy", "epoch-2"):
        resumed = torch.load(a.models.get(model).model_pt, weights_only=True)
        unbroken = torch.load(b.models.get(model).model_pt, weights_only=True)
        assert resumed.keys() == unbroken.keys()
        for key in unbroken:
            assert torch.equal(resumed[key], unbroken[key]), f"{model}: {key} differs"
    for tsv in ("logs/training_loss.tsv", "validation_metrics/aggregated.tsv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(a.path / tsv, sep="\t"), pd.read_csv(b.path / tsv, sep="\t"), obj=tsv
        )
    assert list(a.tmp.path.iterdir()) == []
