"""Give each local job its own GPU(s) through CUDA_VISIBLE_DEVICES.

Snakemake's ``gpu`` resource limits how many GPU jobs run at once; this pool
decides *which* GPU each one gets. Every GPU is a lock file in a per-user
folder of the machine's temp directory; a job holds the locks of its GPUs for
its whole life, so two concurrent jobs never share one. Under SLURM (or when
CUDA_VISIBLE_DEVICES is already set) the scheduler has chosen: nothing is
claimed. Set SNAKEMAPS_SHARE_GPUS=1 to let jobs share GPUs on purpose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

logger = logging.getLogger("snakemaps.gpus")


def visible_gpus() -> int:
    """GPUs nvidia-smi lists (0 without a driver); never imports torch."""
    if not shutil.which("nvidia-smi"):
        return 0
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return len(result.stdout.split()) if result.returncode == 0 else 0


def pool_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"snakemaps-gpus-{os.getuid()}"


@contextlib.contextmanager
def claim(
    count: int, n_gpus: int | None = None, poll_s: float = 0.5, directory: Path | None = None
) -> Iterator[list[int]]:
    """Hold ``count`` free GPUs and expose only them to this process and its children."""
    if count <= 0 or "SLURM_JOB_ID" in os.environ or "CUDA_VISIBLE_DEVICES" in os.environ:
        yield []
        return
    total = visible_gpus() if n_gpus is None else n_gpus
    if total == 0:
        yield []
        return
    if count > total:
        raise RuntimeError(f"a job asks for {count} GPUs but this machine has {total}")
    if os.environ.get("SNAKEMAPS_SHARE_GPUS") == "1":
        chosen = list(range(count))
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, chosen))
        yield chosen
        return
    directory = directory or pool_dir()
    directory.mkdir(parents=True, exist_ok=True)
    held: list[tuple[int, FileLock]] = []
    waited = False
    try:
        while len(held) < count:
            for index in range(total):
                if len(held) == count or any(i == index for i, _ in held):
                    continue
                lock = FileLock(directory / f"gpu-{index}.lock")
                try:
                    lock.acquire(timeout=0)
                    held.append((index, lock))
                except Timeout:
                    continue
            if len(held) < count:
                if not waited:
                    logger.info("waiting for a free GPU (%d of %d busy)", total - len(held), total)
                    waited = True
                time.sleep(poll_s)
        chosen = sorted(i for i, _ in held)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, chosen))
        logger.info("using GPU(s) %s", os.environ["CUDA_VISIBLE_DEVICES"])
        yield chosen
    finally:
        for _, lock in held:
            lock.release()
