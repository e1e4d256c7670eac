"""Real snakemake runs broken on purpose resume from the training checkpoint, bit-identical.

The training job is stopped by SIGTERM or SIGKILL, or Snakemake itself is killed
with all its jobs; in each case the rerun resumes and ends with the same weights
and logs as an unbroken run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY, job_counts, run_snakemake, snakemake_command

from benchmarks.common import job_pids, local_snakemake_env

pytestmark = pytest.mark.workflow

TARGET = "results/maps/training/split-0/models/final/model.pt"
CONFIG = {
    **TINY,
    "train": {**TINY["train"], "epochs": 8, "deterministic": True, "save_epochs": [2, 5]},
}


def command(workdir: Path, *args: str) -> list[str]:
    return snakemake_command(workdir, TARGET, *args, config=CONFIG)


def frames(maps: Path) -> dict[str, pd.DataFrame]:
    split = maps / "training/split-0"
    names = [
        "logs/training_loss.tsv",
        "logs/learning_rates/Adam.tsv",
        "logs/computational.tsv",
        "validation_metrics/aggregated.tsv",
        "validation_metrics/details.tsv",
    ]
    return {name: pd.read_csv(split / name, sep="\t") for name in names}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("resume")
    result = run_snakemake(workdir, "results/maps/training/data/split_manifest.json", config=CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def unbroken(prepared, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("unbroken")
    shutil.copytree(prepared, workdir, symlinks=True, dirs_exist_ok=True)
    clean = run_snakemake(workdir, TARGET, config=CONFIG)
    assert clean.returncode == 0, clean.stderr[-3000:]
    return workdir


def assert_same_as_unbroken(broken: Path, unbroken: Path) -> None:
    maps_a, maps_b = broken / "results/maps", unbroken / "results/maps"
    for model in [
        "final",
        "best_models/best-loss",
        "best_models/best-BalancedAccuracy",
        "checkpoints/epoch-2",
        "checkpoints/epoch-5",
    ]:
        path = f"training/split-0/models/{model}/model.pt"
        a, b = weights(maps_a / path), weights(maps_b / path)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{model}: {key} differs after resume"
    resumed, reference = frames(maps_a), frames(maps_b)
    for name in reference:
        assert len(resumed[name]) == len(reference[name]), name
        if "epoch" in reference[name].columns:
            assert list(resumed[name]["epoch"]) == list(reference[name]["epoch"]), name
        if name != "logs/computational.tsv":  # timings differ; everything else is identical
            pd.testing.assert_frame_equal(resumed[name], reference[name], obj=name)
    assert list((maps_a / "training/split-0/tmp").iterdir()) == []


def start_and_wait_for(workdir: Path, checkpoint: str) -> subprocess.Popen:
    """Start training split-0 and return once tmp/<checkpoint> exists."""
    tmp = workdir / "results/maps/training/split-0/tmp"
    process = subprocess.Popen(
        command(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=local_snakemake_env(),
    )
    deadline = time.monotonic() + 300
    while not (tmp / checkpoint).exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"no {checkpoint} in time"
        time.sleep(0.02)
    return process


def rerun(workdir: Path, *targets: str) -> subprocess.CompletedProcess:
    result = run_snakemake(workdir, TARGET, *targets, "--rerun-incomplete", config=CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (workdir / "logs/results/maps/train_split-0.log").read_text()
    assert "resuming from checkpoint" in log and "resumed at epoch" in log
    return result


def latest_checkpoint(tmp: Path) -> int:
    """The epoch of the newest tmp/epoch-<e>/ (the one a rerun resumes from), or 0.

    An older one may still be there for a moment: a kill can come between the
    newer one's publication and the older one's removal.
    """
    return max((int(p.name.removeprefix("epoch-")) for p in tmp.glob("epoch-*")), default=0)


def test_sigterm_checkpoints_mid_epoch_and_resumes_bit_identical(prepared, unbroken, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken, symlinks=True)
    process = start_and_wait_for(broken, "epoch-1")
    time.sleep(0.15)  # into epoch 2
    for pid in job_pids(broken, "train.py"):
        os.kill(pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0, output[-3000:]
    log = (broken / "logs/results/maps/train_split-0.log").read_text()
    assert "received SIGTERM: checkpointing after this batch" in log, log[-2000:]
    [checkpoint] = (broken / "results/maps/training/split-0/tmp").glob("epoch-*")
    state = json.loads((checkpoint / "state.json").read_text())
    # Taken at a batch boundary: mid-epoch, or after the last batch before validation.
    assert 0 < state["current_train_batch"] <= state["num_train_batches"], state
    rerun(broken)
    assert_same_as_unbroken(broken, unbroken)


def test_killed_training_job_then_killed_snakemake_resume_bit_identical(
    prepared, unbroken, tmp_path
):
    """Two faults in a row, each followed by the command a user would run next.

    1. The training job is SIGKILLed mid-epoch; Snakemake reports the failure.
    2. The rerun resumes it and also runs the environment step; once that step has
       finished and training is past its next checkpoint, Snakemake is SIGKILLed
       with all its jobs (a lost node, a closed terminal).
    3. After ``--unlock``, the rerun redoes only the unfinished training, which
       resumes from its checkpoint and ends as the unbroken run did.
    """
    environment = "results/maps/env/environment.txt"
    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken, symlinks=True)
    tmp = broken / "results/maps/training/split-0/tmp"
    train_log = broken / "logs/results/maps/train_split-0.log"

    # 1. the training job killed
    process = start_and_wait_for(broken, "epoch-2")
    killed = job_pids(broken, "train.py")
    assert killed, "the training job's process was not found"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0, output[-3000:]
    assert not (broken / TARGET).exists()
    first = latest_checkpoint(tmp)
    assert 2 <= first < CONFIG["train"]["epochs"], first

    # 2. the rerun, and Snakemake killed: in its own session, so that snakemake and its
    # jobs (which share its process group) are killed at once
    output = tmp_path / "rerun.out"
    with output.open("w") as out:
        process = subprocess.Popen(
            command(broken, environment, "--rerun-incomplete"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=local_snakemake_env(),
        )
    deadline = time.monotonic() + 300
    while (
        "(Rule: environment)" not in output.read_text()  # finished, as Snakemake records it
        or latest_checkpoint(tmp) <= first
    ):
        assert process.poll() is None, output.read_text()[-3000:]
        assert time.monotonic() < deadline, "the environment or a checkpoint did not come in time"
        time.sleep(0.02)
    assert job_pids(broken, "train.py"), "the training job was not running"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    for _ in range(100):  # the other processes of the group die asynchronously
        if not job_pids(broken, "train.py"):
            break
        time.sleep(0.05)
    assert not job_pids(broken, "train.py"), "the training job survived the kill"
    assert not (broken / TARGET).exists()
    assert f"resuming from checkpoint results/maps/training/split-0/tmp/epoch-{first}" in (
        train_log.read_text()
    )
    second = latest_checkpoint(tmp)
    assert first < second < CONFIG["train"]["epochs"], (first, second)
    finished = [
        "results/data/synthetic/participants.tsv",
        "results/data/cache/train/manifest.tsv",
        "results/maps/training/data/split_manifest.json",
        "results/maps/model.json",
        environment,  # finished in the killed run
    ]
    mtimes = {path: (broken / path).stat().st_mtime_ns for path in finished}

    # 3. the killed Snakemake's lock is left behind: the rerun refuses to start ...
    locked = run_snakemake(broken, TARGET, environment, "--rerun-incomplete", config=CONFIG)
    assert locked.returncode != 0, locked.stderr[-3000:]
    assert "Directory cannot be locked" in locked.stderr, locked.stderr[-3000:]
    # ... until the lock is removed with --unlock (which runs nothing)
    unlock = run_snakemake(broken, TARGET, environment, "--unlock", config=CONFIG)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    assert not (broken / TARGET).exists()
    result = rerun(broken, environment)
    # only the interrupted training ran again; the finished steps were left alone
    assert job_counts(result.stderr) == {"train": 1}, result.stderr[-3000:]
    assert {path: (broken / path).stat().st_mtime_ns for path in finished} == mtimes
    assert f"resuming from checkpoint results/maps/training/split-0/tmp/epoch-{second}" in (
        train_log.read_text()
    )
    assert_same_as_unbroken(broken, unbroken)


def test_rerun_after_snakemake_alone_was_killed_waits_for_the_orphaned_training(
    prepared, unbroken, tmp_path
):
    """Snakemake is SIGKILLed alone: its training job goes on without it (as SLURM jobs do).

    The rerun, started at once, must not train the split a second time into the
    same MAPS: its training job waits for the orphan, finds the split finished
    and trains nothing; the MAPS and its logs equal those of an unbroken run.
    """
    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken, symlinks=True)
    train_log = broken / "logs/results/maps/train_split-0.log"
    process = start_and_wait_for(broken, "epoch-2")
    [orphan] = job_pids(broken, "train.py")
    os.kill(process.pid, signal.SIGKILL)  # Snakemake alone
    process.wait(timeout=30)
    os.kill(orphan, signal.SIGSTOP)  # held still, so that the rerun finds it training
    try:
        unlock = run_snakemake(broken, TARGET, "--unlock", config=CONFIG)
        assert unlock.returncode == 0, unlock.stderr[-3000:]
        rerun_out = tmp_path / "rerun.out"
        with rerun_out.open("w") as out:
            second = subprocess.Popen(
                command(broken, "--rerun-incomplete"),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=local_snakemake_env(),
            )
        deadline = time.monotonic() + 120
        # The rerun's Snakemake removes the old log first (the orphan writes on unlinked).
        while "is being trained by the job with pid" not in (
            train_log.read_text() if train_log.exists() else ""
        ):
            assert second.poll() is None, rerun_out.read_text()[-3000:]
            assert time.monotonic() < deadline, "the rerun's training job did not wait"
            time.sleep(0.05)
        assert f"pid {orphan} on" in train_log.read_text()
        assert len(job_pids(broken, "train.py")) == 2
    finally:
        os.kill(orphan, signal.SIGCONT)
    assert second.wait(timeout=300) == 0, rerun_out.read_text()[-3000:]
    log = train_log.read_text()
    assert "was finished by the job this one waited for: nothing left to train" in log
    assert log.count("resuming from checkpoint") == 0  # nobody trained the split twice
    assert_same_as_unbroken(broken, unbroken)
