"""One trainer per split: the job that trains a split holds its lock, and says who it is.

A second job for the same split (a rerun after Snakemake itself was killed
while its jobs went on, a duplicate submission) must neither overwrite the
first one's checkpoints nor interleave rows into its logs. The trainer of a
split holds an exclusive ``flock`` on ``training/split-<k>/tmp/owner.lock``
(released by the kernel when the process dies; on NFS, Linux maps it to a
lock the server keeps) and records who it is in ``tmp/owner.json``: host,
pid, SLURM job id, start time. Both files go when the job lets go, so tmp/ is
empty after training, as the MAPS format wants. The lock file is unlinked
while it is held and a job that then gets the lock on the unlinked file tries
again: that is why this is ``fcntl.flock`` and not ``filelock``, which cannot
remove its file safely.

Another job that finds the lock taken waits, logging who holds it, until it
is released. If the holder finished the split meanwhile, the waiter has
nothing left to do; if the holder died, the waiter resumes from its last
checkpoint. A record left by a dead job (no lock held) is stale: it is
logged and taken over. Where locks do not cross hosts (NFS without lock
support), a record naming a job that is still alive (the same host and a live
pid, or a SLURM job that ``squeue`` still lists) is waited for as well.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import io

logger = logging.getLogger("snakemaps.ownership")

OWNER_FILE = "owner.json"
LOCK_FILE = "owner.lock"
POLL_S = 5.0
LOG_EVERY_S = 60.0
LIVE_SLURM_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "RESIZING",
    "STOPPED",
}


def me() -> dict[str, Any]:
    """This job's record: host, pid, SLURM job id (if any), start time."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def describe(record: dict[str, Any] | None) -> str:
    """``SLURM job 123 (pid 45 on node1, since ...)``, or what is known."""
    if not record:
        return "another job (no owner record yet)"
    where = f"pid {record.get('pid')} on {record.get('host')}, since {record.get('started')}"
    job = record.get("slurm_job_id")
    return f"SLURM job {job} ({where})" if job else f"the job with {where}"


def is_alive(record: dict[str, Any]) -> bool | None:
    """Whether the job of ``record`` still runs: True, False, or None (cannot tell)."""
    job = record.get("slurm_job_id")
    if job and job != os.environ.get("SLURM_JOB_ID"):
        try:
            out = subprocess.run(
                ["squeue", "-h", "-j", str(job), "-o", "%T"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            out = None
        if out is not None and out.returncode == 0:
            return out.stdout.strip() in LIVE_SLURM_STATES
    if record.get("host") == socket.gethostname():
        pid = record.get("pid")
        if pid == os.getpid():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, TypeError, ValueError):
            return True
        return True
    return None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class Ownership:
    """The lock of one split's training, held by this job."""

    owner_json: Path
    waited_for: dict[str, Any] | None = None  # the holder this job waited for, if any
    previous: dict[str, Any] | None = None  # a stale record this job took over


def _try_lock(path: Path) -> int | None:
    """An fd holding ``flock`` on ``path`` (the file now at that path), or None if taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # the holder unlinked it as it let go: lock the new file instead
        os.close(fd)
        return _try_lock(path)
    return fd


@contextmanager
def own_split(tmp_dir: str | Path, split: int, poll: float | None = None) -> Iterator[Ownership]:
    """Hold the training lock of split ``split`` (whose resume folder is ``tmp_dir``).

    Waits while another live job holds it (checking every ``poll`` seconds,
    ``POLL_S`` by default), logging who every minute.
    """
    poll = POLL_S if poll is None else poll
    tmp_dir = Path(tmp_dir)
    owner_json, lock_path = tmp_dir / OWNER_FILE, tmp_dir / LOCK_FILE
    tmp_dir.mkdir(parents=True, exist_ok=True)
    ownership = Ownership(owner_json)
    last_log = -LOG_EVERY_S
    start = time.monotonic()
    while True:
        fd = _try_lock(lock_path)
        holder = _read(owner_json)
        # On one host the lock is the truth; across hosts it may not be (NFS
        # without locks), so there a record naming a job that still runs wins.
        if fd is not None and (
            holder is None
            or holder.get("host") == socket.gethostname()
            or is_alive(holder) is not True
        ):
            break
        if fd is not None:
            os.close(fd)
        ownership.waited_for = holder or ownership.waited_for or {}
        now = time.monotonic()
        if now - last_log >= LOG_EVERY_S:
            logger.warning(
                "split-%d is being trained by %s; waiting for it to end before touching its "
                "checkpoints or logs (%.0f s so far). If that job is not wanted, end it "
                "(scancel or kill): this one then resumes from its last checkpoint.",
                split,
                describe(holder),
                now - start,
            )
            last_log = now
        time.sleep(poll)
    try:
        if holder is not None and ownership.waited_for is None:
            ownership.previous = holder
            logger.warning(
                "split-%d: taking over from %s, which ended without finishing "
                "(its lock was free); resuming from its last checkpoint, if any",
                split,
                describe(holder),
            )
        elif ownership.waited_for is not None:
            logger.info("split-%d: %s has ended", split, describe(ownership.waited_for))
        io.atomic_write_text(owner_json, json.dumps(me(), indent=4) + "\n")
        yield ownership
    finally:
        owner_json.unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)  # still held: a waiter on this file tries again
        os.close(fd)


def keep_in_tmp(name: str) -> bool:
    """Whether emptying tmp/ at the end of training must spare the entry ``name``."""
    return name in {OWNER_FILE, LOCK_FILE}
