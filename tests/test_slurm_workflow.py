"""The demo through a real SLURM cluster: a training job scancel'ed mid-run resumes on retry."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT, TINY
from snakemaps.maps import Maps
from test_slurm_cluster import PARTITION, _profile_overrides, slurm_cluster  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.workflow]

CONFIG = {**TINY, "train": {**TINY["train"], "epochs": 8}}
MAPS_TARGETS = [
    "results/maps/env/environment.txt",
    "results/maps/test/group-test/summary-loss.tsv",
    "results/maps/test/group-test/summary-BalancedAccuracy.tsv",
    *[
        f"results/maps/training/split-{k}/models/{model}/validation_metrics/aggregated.tsv"
        for k in (0, 1)
        for model in ("best_models/best-loss", "best_models/best-BalancedAccuracy", "final")
    ],
]


def slurm_job_of(comment: str) -> str | None:
    """The id of the running SLURM job whose comment (set by the plugin) is ``comment``."""
    out = subprocess.run(
        ["squeue", "--noheader", "--format=%i %k %T"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        jobid, job_comment, state = line.split()
        if job_comment == comment and state == "RUNNING":
            return jobid
    return None


def test_demo_through_slurm_survives_scancel(slurm_cluster, tmp_path):  # noqa: F811
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    env["SNAKEMAPS_SLURM_PARTITION"] = PARTITION
    command = [
        sys.executable,
        "-m",
        "snakemake",
        *MAPS_TARGETS,  # the MAPS only: the report's figures would be 6 more SLURM jobs
        "--profile",
        "profiles/slurm",
        "--directory",
        str(tmp_path),
        "--configfile",
        "config/config.yaml",
        str(tmp_path / "config.yaml"),
        *_profile_overrides(),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    tmp = tmp_path / "results/maps/training/split-0/tmp"
    cancelled, deadline = None, time.monotonic() + 600
    while cancelled is None:
        assert process.poll() is None, process.stdout.read()[-5000:]
        assert time.monotonic() < deadline, "split-0 wrote no second checkpoint in time"
        if any((tmp / f"epoch-{e}").exists() for e in (2, 3, 4, 5)):
            cancelled = slurm_job_of("rule_train_wildcards_results/maps_0")
            if cancelled is None:  # the comment format differs: find it by name
                out = subprocess.run(
                    ["squeue", "--noheader", "--format=%i %k"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                ids = [
                    line.split()[0] for line in out.splitlines() if "train" in line and "_0" in line
                ]
                cancelled = ids[0] if ids else None
            if cancelled:
                subprocess.run(["scancel", cancelled], check=True)
        time.sleep(0.2)
    output = process.communicate(timeout=900)[0]
    assert process.returncode == 0, output[-8000:]

    maps = Maps(tmp_path / "results/maps").read()
    log = (tmp_path / "logs/results/maps/train_split-0.log").read_text()
    assert "resuming from checkpoint" in log, log[-3000:]
    assert len(maps.open_file(maps.split(0).validation_metrics.aggregated_tsv)) == 8
    jobs = {
        r["slurm_job_id"]
        for name in maps.exec.runs
        for r in maps.open_file(maps.exec.runs[name].provenance_json)
    }
    assert None not in jobs and cancelled in jobs  # every step ran inside a SLURM job
    state = subprocess.run(
        ["scontrol", "show", "job", cancelled], capture_output=True, text=True, check=False
    ).stdout
    assert re.search(r"JobState=(CANCELLED|FAILED)", state) or not state, state
    logs = list((tmp_path / ".snakemake/slurm_logs").rglob("*.log"))
    assert any("rule_train" in str(p) for p in logs), logs
