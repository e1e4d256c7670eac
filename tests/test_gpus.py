"""The local GPU pool: concurrent jobs get distinct GPUs, SLURM's choice is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT
from snakemaps import gpus

CHILD = """
import json, os, sys, time
sys.path.insert(0, {scripts!r})
from pathlib import Path
from snakemaps.gpus import claim
os.environ.pop("CUDA_VISIBLE_DEVICES", None); os.environ.pop("SLURM_JOB_ID", None)
with claim(1, n_gpus=3, poll_s=0.05, directory=Path({pool!r})) as chosen:
    start = time.time(); time.sleep(0.6)
    print(json.dumps({{"gpu": chosen, "env": os.environ["CUDA_VISIBLE_DEVICES"],
                       "start": start, "end": time.time()}}))
"""


def test_concurrent_jobs_get_distinct_gpus_and_wait_when_all_busy(tmp_path):
    code = CHILD.format(scripts=str(ROOT / "scripts"), pool=str(tmp_path))
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(5)
    ]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(r["env"] == str(r["gpu"][0]) for r in results)
    # At no moment do two jobs hold the same GPU.
    for i, a in enumerate(results):
        for b in results[i + 1 :]:
            if a["gpu"] == b["gpu"]:
                assert a["end"] <= b["start"] + 0.05 or b["end"] <= a["start"] + 0.05
    assert {tuple(r["gpu"]) for r in results} <= {(0,), (1,), (2,)}
    assert len({tuple(r["gpu"]) for r in results}) == 3  # 5 jobs on 3 GPUs used all three


def test_slurm_allocation_and_explicit_devices_are_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with gpus.claim(1, n_gpus=2, directory=tmp_path) as chosen:
        assert chosen == [] and "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with gpus.claim(1, n_gpus=4, directory=tmp_path) as chosen:
        assert chosen == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_no_gpu_machine_claims_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with gpus.claim(1, n_gpus=0, directory=tmp_path) as chosen:
        assert chosen == []
    with gpus.claim(2, n_gpus=2, directory=tmp_path) as chosen:
        assert chosen == [0, 1] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
