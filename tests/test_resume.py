"""A real snakemake training job SIGKILLed after its second checkpoint resumes bit-identical."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY, run_snakemake

pytestmark = pytest.mark.workflow

TARGET = "results/maps/training/split-0/models/final/model.pt"
CONFIG = {
    **TINY,
    "train": {**TINY["train"], "epochs": 6, "deterministic": True, "save_epochs": [2, 5]},
}


def job_pids(workdir: Path, script: str) -> list[int]:
    """PIDs of the rule scripts named ``script`` running in ``workdir``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if script in cmdline and ".snakemake/scripts" in cmdline and Path(cwd) == workdir:
            pids.append(int(entry.name))
    return pids


def snakemake_command(workdir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(ROOT / "config/config.yaml"),
        str(workdir / "test_config.yaml"),
        "--cores",
        "1",
        TARGET,
    ]


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
    clean = subprocess.run(
        snakemake_command(workdir), capture_output=True, text=True, timeout=600, check=False
    )
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
        snakemake_command(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 300
    while not (tmp / checkpoint).exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"no {checkpoint} in time"
        time.sleep(0.02)
    return process


def rerun(workdir: Path) -> str:
    result = subprocess.run(
        [*snakemake_command(workdir), "--rerun-incomplete"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = (workdir / "logs/results/maps/train_split-0.log").read_text()
    assert "resuming from checkpoint" in log and "resumed at epoch" in log
    return log


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


def test_killed_training_job_resumes_bit_identical(prepared, unbroken, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken, symlinks=True)
    tmp = broken / "results/maps/training/split-0/tmp"

    process = start_and_wait_for(broken, "epoch-2")
    killed = job_pids(broken, "train.py")
    assert killed, "the training job's process was not found"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0, output[-3000:]
    assert not (broken / TARGET).exists()
    checkpoints = sorted(p.name for p in tmp.glob("epoch-*"))
    assert checkpoints and checkpoints[-1] in {"epoch-2", "epoch-3", "epoch-4"}, checkpoints

    rerun(broken)
    assert_same_as_unbroken(broken, unbroken)
