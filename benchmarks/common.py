"""Shared helpers of the benchmarks: results, machine facts, configs, snakemake runs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from snakemaps.search.launch import deep_merge

SNAKEFILE = ROOT / "Snakefile"
BASE_CONFIG = ROOT / "config" / "config.yaml"
SCHEMA = ROOT / "config" / "config.schema.yaml"

# The synthetic cohort every benchmark uses (small enough for 2 CPU cores).
COHORT = {"n_participants": 40, "n_test_participants": 10, "n_sessions": 3, "shape": [32, 40, 32]}
N_SPLITS = 2
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclasses.dataclass
class Result:
    """One figure: a ratio (or time) with its goal; ``passed`` is None for figures without one."""

    name: str
    value: float | None
    goal: str
    passed: bool | None
    unit: str = ""
    note: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    load_avg: list[float] = dataclasses.field(default_factory=list)

    @property
    def status(self) -> str:
        if self.value is None and self.passed is None:
            return "SKIP"
        if self.passed is None:
            return "INFO"
        return "PASS" if self.passed else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "status": self.status}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and the versions that matter for the figures."""
    import snakemake
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return {
        "commit": commit + (f" + {len(changed)} modified file(s)" if changed else ""),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "snakemake": snakemake.__version__,
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@contextmanager
def temp_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"snakemaps-bench-{prefix}-", dir="/tmp"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def make_cohort(folder: Path) -> dict[str, Path]:
    """The synthetic cohort's NIfTI files and tables (participants.tsv, test.tsv)."""
    from snakemaps.data.synthetic import generate_cohort

    return generate_cohort(
        folder,
        n_participants=COHORT["n_participants"],
        n_test_participants=COHORT["n_test_participants"],
        max_sessions=COHORT["n_sessions"],
        shape=tuple(COHORT["shape"]),
        seed=0,
    )


def overlay(cohort: Mapping[str, Path], epochs: int, **train: Any) -> dict[str, Any]:
    """Config overlay: the benchmark cohort as a user table, N_SPLITS folds, ``epochs``."""
    return {
        "data": {"tsv": str(cohort["participants"])},
        "test": {"groups": {"test": str(cohort["test"])}},
        "split": {"n_splits": N_SPLITS},
        "train": {"epochs": epochs, "save_epochs": [], **train},
    }


def full_config(extra: Mapping[str, Any]) -> dict[str, Any]:
    """config/config.yaml + ``extra``, with every schema default filled in (as snakemake does)."""
    from snakemake.utils import validate

    config = deep_merge(yaml.safe_load(BASE_CONFIG.read_text()), extra)
    validate(config, str(SCHEMA), set_default=True)
    from snakemaps.tasks import resolve_defaults

    return resolve_defaults(config)


def snakemake_command(workdir: Path, overlay_file: Path | None, *args: str) -> list[str]:
    configfiles = [str(BASE_CONFIG)] + ([str(overlay_file)] if overlay_file else [])
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        *args,
        "--configfile",  # last: it takes every following word as a config file
        *configfiles,
    ]


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


def write_overlay(workdir: Path, config: Mapping[str, Any]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "bench_config.yaml"
    path.write_text(yaml.safe_dump(dict(config)))
    return path


def children_cpu() -> float:
    """CPU seconds (user + system) of every waited-for descendant of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def local_snakemake_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a snakemake run that does not use SLURM.

    When snakemake starts, the SLURM executor plugin (the ``slurm`` extra) runs
    ``scontrol show config`` to word its help text. Where a ``slurm.conf``
    exists but no controller answers (the test cluster of tests/slurm/up.sh
    installed, then stopped), scontrol retries for about 9 s on every start of
    snakemake. A run that does not use SLURM then gets ``SLURM_CONF`` pointing
    at a copy of that configuration with ``MessageTimeout=1``, so the call
    fails at once. Where the controller answers, or SLURM is not installed,
    nothing changes.
    """
    env = dict(os.environ if env is None else env)
    conf = Path(env.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    if shutil.which("scontrol") is None or not conf.is_file():
        return env
    try:
        ping = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=5, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return env
    if "DOWN" in ping.stdout:
        env["SLURM_CONF"] = str(_fail_fast_slurm_conf(str(conf)))
    return env


@functools.cache
def _fail_fast_slurm_conf(conf: str) -> Path:
    lines = [
        line
        for line in Path(conf).read_text().splitlines()
        if not line.strip().lower().startswith("messagetimeout")
    ]
    folder = Path(tempfile.mkdtemp(prefix="snakemaps-slurm-conf-"))
    path = folder / "slurm.conf"
    path.write_text("\n".join([*lines, "MessageTimeout=1", ""]))
    return path


def run_timed(
    command: Sequence[str], timeout: float = 1800, cwd: Path | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds and the finished process; ``done.cpu_s`` is the CPU time of its tree."""
    env = {**local_snakemake_env(), "PYTHONUNBUFFERED": "1"}
    cpu = children_cpu()
    start = time.perf_counter()
    try:
        done = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        elapsed = time.perf_counter() - start
        out = error.stdout.decode() if isinstance(error.stdout, bytes) else error.stdout or ""
        err = error.stderr.decode() if isinstance(error.stderr, bytes) else error.stderr or ""
        done = subprocess.CompletedProcess(list(command), 124, out, err)
        done.cpu_s = children_cpu() - cpu
        return elapsed, done
    elapsed = time.perf_counter() - start
    done.cpu_s = children_cpu() - cpu
    return elapsed, done


def check(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {done.returncode}):\n{(done.stderr or '')[-4000:]}"
            f"\n{(done.stdout or '')[-2000:]}"
        )


def log_times(path: Path) -> list[tuple[float, str]]:
    """(seconds since the epoch, message) of each timestamped line of a snakemaps log."""
    found = []
    for line in path.read_text().splitlines():
        match = LOG_TIME.match(line)
        if match:
            stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            found.append((stamp.replace(tzinfo=dt.timezone.utc).timestamp(), line[24:]))
    return found


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.2f}"
