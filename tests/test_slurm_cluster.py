"""Run a toy workflow through a real single-node SLURM cluster with profiles/slurm.

The cluster comes from tests/slurm/up.sh (needs root; installs munge and slurm
with apt when missing). It is left running afterwards: tests/slurm/down.sh
stops it. Outside CI the tests are skipped when up.sh cannot run (not root, no
apt) or the SLURM executor plugin is missing; with CI=true they fail instead.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
UP = ROOT / "tests" / "slurm" / "up.sh"
TOY = ROOT / "tests" / "slurm" / "toy" / "Snakefile"
PROFILE = ROOT / "profiles" / "slurm"
PARTITION = "debug"  # the partition up.sh creates

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


def _profile_overrides(
    runtime: dict[str, str] | None = None, extra: dict[str, dict[str, str]] | None = None
) -> list[str]:
    """Command-line arguments that fit profiles/slurm onto the 2-core test node.

    `--set-threads` and `--set-resources` on the command line replace those keys
    of the profile as a whole, so every per-rule entry of the profile is carried
    over, with threads, CPUs, memory and time limit (10 minutes, or the
    expression in ``runtime[rule]``) shrunk to what the test node has, plus the
    resources in ``extra[rule]``. Everything else (slurm_extra, gpu, ...) is
    passed on unchanged. The first status check comes after 1 s instead of 5 s.
    """
    import yte

    with open(PROFILE / "config.yaml") as fh:
        profile = yte.process_yaml(fh, require_use_yte=True)
    threads = [f"{rule}=1" for rule in profile.get("set-threads") or {}]
    resources = []
    for rule, res in (profile.get("set-resources") or {}).items():
        res = dict(res)
        res["mem_mb"] = 300
        res["runtime"] = (runtime or {}).get(rule, 10)
        if "cpus_per_task" in res:
            res["cpus_per_task"] = 1
        res.update((extra or {}).get(rule, {}))
        resources += [f"{rule}:{key}={value}" for key, value in res.items()]
    # The shipped profile checks the jobs' state 5 s after a change, then backs
    # off by 10 s while nothing finishes; from 1 s, each wave of the tests' jobs
    # is seen about 4 s sooner (the CI suite has to stay under 15 minutes).
    args = ["--slurm-init-seconds-before-status-checks", "1"]
    if threads:
        args += ["--set-threads", *threads]
    if resources:
        args += ["--set-resources", *resources]
    return args


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    for module in ("snakemake", "snakemake_executor_plugin_slurm"):
        if importlib.util.find_spec(module) is None:
            _skip_or_fail(f"python module {module} is missing: pip install 'snakemaps[slurm]'")
    proc = subprocess.run(
        ["bash", str(UP)], check=False, capture_output=True, text=True, timeout=300
    )
    output = proc.stdout + proc.stderr
    if proc.returncode == 2:
        _skip_or_fail(f"the SLURM test cluster is not up and needs root:\n{output}")
    if proc.returncode == 3:
        _skip_or_fail(f"could not install the SLURM packages with apt:\n{output}")
    assert proc.returncode == 0, f"tests/slurm/up.sh failed:\n{output}"
    # Left running on purpose: other tests may share it; down.sh stops it.


def _scontrol_job(jobid: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", jobid],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", out))


def _read_kv(path: Path) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", path.read_text()))


def test_toy_workflow_runs_through_slurm(slurm_cluster, tmp_path: Path) -> None:
    workdir = tmp_path / "toy"
    workdir.mkdir()
    env = dict(os.environ)
    for var in ("SNAKEMAKE_PROFILE", "SNAKEMAPS_SLURM_ACCOUNT"):
        env.pop(var, None)
    # also checks that the profile takes the partition from the environment
    env["SNAKEMAPS_SLURM_PARTITION"] = PARTITION
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(TOY.relative_to(ROOT)),
        "--profile",
        str(PROFILE.relative_to(ROOT)),
        "--directory",
        str(workdir),
        "--verbose",  # prints the sbatch calls
        *_profile_overrides(),
    ]
    start = time.monotonic()
    # cwd=ROOT: like a user in the project root, so profiles/default is
    # loaded on top of profiles/slurm and must not break it
    proc = subprocess.run(
        cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    wall = time.monotonic() - start
    log = proc.stdout + proc.stderr
    print(f"toy workflow through SLURM: {wall:.1f} s")
    assert proc.returncode == 0, f"snakemake failed ({wall:.0f} s):\n{log[-15000:]}"
    assert "workflow specific profile profiles/default" in log, log[-5000:]

    results = workdir / "results"
    jobs = {
        "train/0": _read_kv(results / "train" / "fold-0.txt"),
        "train/1": _read_kv(results / "train" / "fold-1.txt"),
        "gpu_check": _read_kv(results / "gpu.txt"),
    }
    summary = (results / "summary.txt").read_text().splitlines()
    jobs["aggregate"] = _read_kv(results / "summary.txt")  # last job= wins
    assert len(summary) == 4, summary

    # every job ran inside its own SLURM job
    ids = {name: info.get("job", "none") for name, info in jobs.items()}
    assert all(i.isdigit() for i in ids.values()), ids
    assert len(set(ids.values())) == len(ids), ids
    assert jobs["train/0"]["cpus"] == "1"
    assert jobs["gpu_check"]["cuda"] == "0"  # the fake GPU of up.sh

    # the plugin's SLURM logs are kept (slurm-keep-successful-logs) and named
    # after the job id
    logdir = workdir / ".snakemake" / "slurm_logs"
    expected_logs = {
        "train/0": logdir / "rule_train" / "0" / f"{ids['train/0']}.log",
        "train/1": logdir / "rule_train" / "1" / f"{ids['train/1']}.log",
        "gpu_check": logdir / "rule_gpu_check" / f"{ids['gpu_check']}.log",
        "aggregate": logdir / "rule_aggregate" / f"{ids['aggregate']}.log",
    }
    for name, path in expected_logs.items():
        assert path.is_file(), f"no SLURM log for {name}: {sorted(logdir.rglob('*.log'))}"
        assert path.stat().st_size > 0, path

    # and SLURM itself knows the jobs (MinJobAge=300 keeps them for 5 minutes)
    comments = {
        "train/0": "rule_train_wildcards_0",
        "train/1": "rule_train_wildcards_1",
        "gpu_check": "rule_gpu_check",
        "aggregate": "rule_aggregate",
    }
    info = {name: _scontrol_job(jobid) for name, jobid in ids.items()}
    for name, job in info.items():
        assert job.get("JobState") == "COMPLETED", (name, job)
        assert job.get("Partition") == PARTITION, (name, job)
        assert job.get("Comment") == comments[name], (name, job)
        assert Path(job.get("WorkDir", "")) == workdir, (name, job)
    assert info["gpu_check"].get("TresPerJob") == "gres:gpu:1", info["gpu_check"]
    assert info["train/0"].get("NumCPUs") == "1", info["train/0"]
    assert info["train/0"].get("MinMemoryNode") == "300M", info["train/0"]

    # the sbatch calls carried what the profile asked for
    sbatch = [line for line in log.splitlines() if "sbatch call:" in line]
    assert len(sbatch) == 4, sbatch
    assert all(f"-p {PARTITION} " in line for line in sbatch), sbatch
    gpu_calls = [line for line in sbatch if "--comment rule_gpu_check " in line]
    assert len(gpu_calls) == 1 and "--gpus=1" in gpu_calls[0], gpu_calls

    # several 1-CPU jobs ran side by side on the 2-core node (cons_tres)
    def span(job: dict[str, str]) -> tuple[datetime, datetime]:
        return (
            datetime.fromisoformat(job["StartTime"]),
            datetime.fromisoformat(job["EndTime"]),
        )

    first_wave = [span(info[n]) for n in ("train/0", "train/1", "gpu_check")]
    overlaps = [
        (a, b)
        for i, a in enumerate(first_wave)
        for b in first_wave[i + 1 :]
        if a[0] < b[1] and b[0] < a[1]
    ]
    assert overlaps, f"no two jobs ran at the same time: {first_wave}"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "profile as shipped",
            (
                r"rule train \(maps=results/maps, split=\d\) asks SLURM for 4 CPUs, 16000 MB of "
                r"memory on one node of partition 'debug', but its largest node \(\S+\) has "
                r"\d+ CPUs, \d+ MB and GPUs: 1 fake: SLURM would leave it pending for ever\. "
                r"Lower `set-threads: train \(CPUs per job\)` in profiles/slurm/config\.yaml"
            ),
        ),
        (
            "unknown partition",
            (
                r"asks for SLURM partition 'nosuch', which this cluster does not have "
                r"\(sinfo lists: debug\)\. Set SNAKEMAPS_SLURM_PARTITION"
            ),
        ),
        (
            "unknown GPU type",
            (
                r"rule train \(.*\) asks for GPU type 'a100', which no node of partition 'debug' "
                r"has \(GPU types there: fake\)\. Change `set-resources: train: gpu_model`"
            ),
        ),
        (
            "too many GPUs",
            (
                r"asks SLURM for 1 CPU, 300 MB of memory, 2 GPUs on one node of partition "
                r"'debug'.*Lower `set-resources: train: gpu / gpu_model`"
            ),
        ),
    ],
)
def test_a_request_slurm_can_never_start_stops_the_run_before_any_sbatch(
    slurm_cluster, tmp_path: Path, case: str, expected: str
) -> None:
    import yaml

    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(TINY))  # never trained: refused first
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    env["SNAKEMAPS_SLURM_PARTITION"] = "nosuch" if case == "unknown partition" else PARTITION
    overrides = [] if case == "profile as shipped" else _profile_overrides()
    if case == "unknown GPU type":
        overrides += ["train:gpu=1", "train:gpu_model='a100'"]
    if case == "too many GPUs":
        overrides += ["train:gpu=2"]
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "profiles/slurm",
        "--directory",
        str(tmp_path),
        "--configfile",
        "config/config.yaml",
        str(tmp_path / "demo.yaml"),
        *overrides,
    ]
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    wall = time.monotonic() - start
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-5000:]
    assert "SLURM could never start these jobs (nothing was submitted)" in log, log[-5000:]
    assert re.search(expected, log), log[-5000:]
    assert wall < 60, wall
    assert not (tmp_path / ".snakemake" / "slurm_logs").exists()  # no sbatch
    assert not (tmp_path / "results").exists()  # no step ran, no MAPS file written
