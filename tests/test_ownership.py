"""One trainer per split: a second job waits for the first, a dead one's record is taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT
from snakemaps import ownership
from snakemaps.ownership import own_split

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from snakemaps.ownership import own_split
    tmp, release = Path(sys.argv[2]), Path(sys.argv[3])
    with own_split(tmp, 0):
        (tmp / "held").write_text("yes")
        while not release.exists():
            time.sleep(0.02)
        if len(sys.argv) > 4:  # finish the split before letting go
            Path(sys.argv[4]).parent.mkdir(parents=True, exist_ok=True)
            Path(sys.argv[4]).write_bytes(b"weights")
    """
)


def start_holder(tmp: Path, release: Path, *extra: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ROOT / "scripts"), str(tmp), str(release), *extra]
    )
    deadline = time.monotonic() + 30
    while not (tmp / "held").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return process


def test_a_second_job_waits_for_the_first_and_names_it(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(ownership, "LOG_EVERY_S", 0.0)
    tmp, release = tmp_path / "tmp", tmp_path / "release"
    holder = start_holder(tmp, release)
    record = json.loads((tmp / "owner.json").read_text())
    assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
    entered = threading.Event()

    def second():
        with own_split(tmp, 0, poll=0.05) as owned:
            entered.set()
            assert owned.waited_for["pid"] == holder.pid
            assert json.loads((tmp / "owner.json").read_text())["pid"] == os.getpid()

    with caplog.at_level(logging.INFO, logger="snakemaps.ownership"):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        assert not entered.is_set(), "the second job did not wait for the first"
        release.touch()
        thread.join(timeout=30)
        assert holder.wait(timeout=30) == 0
    assert entered.is_set()
    waiting = [r.getMessage() for r in caplog.records if "is being trained by" in r.getMessage()]
    assert waiting and f"pid {holder.pid} on {socket.gethostname()}" in waiting[0]
    assert sorted(p.name for p in tmp.iterdir()) == ["held"]  # owner record and lock gone


def test_a_dead_jobs_record_is_taken_over(tmp_path, caplog):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    record = {
        "host": socket.gethostname(),
        "pid": int(dead.stdout),
        "slurm_job_id": None,
        "started": "2026-01-01T00:00:00Z",
    }
    (tmp / "owner.json").write_text(json.dumps(record))
    (tmp / "owner.lock").touch()  # left behind by a kill -9, not locked by anyone
    with caplog.at_level(logging.INFO, logger="snakemaps.ownership"):
        start = time.monotonic()
        with own_split(tmp, 3, poll=0.05) as owned:
            assert owned.waited_for is None and owned.previous == record
        assert time.monotonic() - start < 2
    assert any(
        "split-3: taking over from the job with pid" in r.getMessage() for r in caplog.records
    )
    assert list(tmp.iterdir()) == []


def test_a_live_slurm_job_on_another_host_is_waited_for(tmp_path, monkeypatch):
    """Where locks do not reach the other host, squeue says whether the recorded job runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "state"
    state.write_text("RUNNING")
    squeue = bin_dir / "squeue"
    squeue.write_text(f"#!/bin/sh\ncat {state}\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    record = {"host": "another-node", "pid": 1, "slurm_job_id": "4242", "started": "then"}
    (tmp / "owner.json").write_text(json.dumps(record))
    assert ownership.is_alive(record) is True
    done = threading.Event()

    def second():
        with own_split(tmp, 0, poll=0.05) as owned:
            assert owned.waited_for["slurm_job_id"] == "4242"
            done.set()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.4)
    assert not done.is_set()
    state.write_text("")  # squeue no longer lists the job
    thread.join(timeout=10)
    assert done.is_set()


def test_train_split_has_nothing_left_when_the_job_it_waited_for_finished(tmp_path, monkeypatch):
    """The waiting job returns the model that the other job wrote, training nothing."""
    from snakemaps.maps import Maps
    from snakemaps.train import train_split

    monkeypatch.setattr(ownership, "POLL_S", 0.05)
    split_dir = Maps(tmp_path / "maps").split(0)
    final = split_dir.models.final.model_pt
    release = tmp_path / "release"
    holder = start_holder(split_dir.tmp.path, release, str(final))
    result = {}

    def second():
        # No MAPS configuration exists: training would fail at once if it were tried.
        result["final"] = train_split(tmp_path / "maps", 0, train={})

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    release.touch()
    thread.join(timeout=60)
    assert holder.wait(timeout=30) == 0
    assert result["final"] == final and final.read_bytes() == b"weights"


@pytest.mark.parametrize("name", ["owner.json", "owner.lock"])
def test_emptying_tmp_spares_the_owner_files(name):
    assert ownership.keep_in_tmp(name)
    assert not ownership.keep_in_tmp("epoch-3")
