"""The demo through a real SLURM cluster, with two faults in one run (to save CI time).

- split-0's training job is cancelled with ``scancel`` mid-run; the profile's
  retry resumes it from its last checkpoint.
- split-1's training job reaches its wall-time limit (1 minute, the least
  SLURM allows); SLURM sends SIGTERM, the trainer checkpoints before SIGKILL
  (KillWait, 10 s in tests/slurm/up.sh) and the retry resumes from that
  checkpoint. A tiny job trains in seconds, so the test pauses its training
  process with SIGSTOP after the first checkpoint: the job then overruns its
  limit without burning the CI machine's CPU. At the limit SLURM sends
  SIGCONT before SIGTERM (as to any stopped task), so the trainer wakes up,
  finishes its batch and checkpoints, like a long job would.

Both jobs run side by side, so the time limit costs about half a minute of
wall time on top of the scancel run.

Then split-0 is trained once more in a copy of that run as one 2-task SLURM
job (``train.distributed.processes: 2``, set-resources ``tasks: 2`` and
``mpi``): the train job starts one gloo rank per task with ``srun``.

Last, in another copy (its prepared cohort reused, a new one-split MAPS),
Snakemake itself is SIGKILLed while its train job runs; the SLURM job goes on
without it. The same command, rerun at once (after ``--unlock``), submits the
split's training again: that job waits for the orphan, finds the split
finished and trains nothing, and the MAPS ends complete with consistent logs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY
from snakemaps.maps import Maps
from test_slurm_cluster import (  # noqa: F401
    PARTITION,
    _profile_overrides,
    _scontrol_job,
    slurm_cluster,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.workflow]

CONFIG = {**TINY, "train": {**TINY["train"], "epochs": 8}}
CANCELLED, TIMED_OUT = 0, 1  # the split whose training job meets each fault
# Time limit in minutes of the train jobs: 1 for the split that times out.
TRAIN_RUNTIME = f"1 if wildcards.split == '{TIMED_OUT}' else 10"
SLURMCTLD_LOG = Path("/var/log/slurm-snakemaps/slurmctld.log")  # tests/slurm/up.sh
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


def running_train_job(split: int) -> str | None:
    """The id of split ``split``'s running training job (the plugin sets its comment)."""
    out = subprocess.run(
        ["squeue", "--noheader", "--format=%i %k %T"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        jobid, comment, state = line.split()
        if comment == f"rule_train_wildcards_results_maps_{split}" and state == "RUNNING":
            return jobid
    return None


def training_pids(jobid: str) -> list[int]:
    """PIDs of the rule script train.py running inside SLURM job ``jobid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train.py" in cmdline and f"SLURM_JOB_ID={jobid}".encode() in environ:
            pids.append(int(entry.name))
    return pids


def checkpoints(split: int, workdir: Path) -> list[int]:
    tmp = workdir / f"results/maps/training/split-{split}/tmp"
    return [int(p.name.removeprefix("epoch-")) for p in tmp.glob("epoch-*")]


@dataclass
class Run:
    """One run of the demo through SLURM with both faults."""

    workdir: Path
    output: str  # snakemake's stdout and stderr
    cancelled: str  # SLURM job id of split CANCELLED's first training job
    timed_out: str  # SLURM job id of split TIMED_OUT's first training job
    checkpoints_before_stop: list[int]  # tmp/epoch-<e> of TIMED_OUT when it was paused

    def maps(self):
        return Maps(self.workdir / "results/maps").read(strict=True)

    def train_log(self, split: int) -> str:
        """The rule's log: Snakemake empties it before each attempt, so the retry's only."""
        return (self.workdir / f"logs/results/maps/train_split-{split}.log").read_text()

    def slurm_log(self, split: int, jobid: str) -> str:
        path = self.workdir / f".snakemake/slurm_logs/rule_train/results_maps_{split}/{jobid}.log"
        return path.read_text()

    def train_jobs(self, split: int) -> list[str]:
        """SLURM job ids of the attempts at training ``split``, from the MAPS provenance."""
        maps = self.maps()
        records = [
            r
            for name in maps.exec.runs
            for r in maps.open_file(maps.exec.runs[name].provenance_json)
            if r.get("step") == f"train split-{split}"
        ]
        return [r["slurm_job_id"] for r in sorted(records, key=lambda r: r["timestamp"])]


def slurm_env() -> dict[str, str]:
    """The environment of a snakemake run under profiles/slurm on the test cluster."""
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    env["SNAKEMAPS_SLURM_PARTITION"] = PARTITION
    return env


def slurm_command(workdir: Path, *args: str) -> list[str]:
    """snakemake under profiles/slurm in ``workdir`` with its config.yaml; ``args`` first."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        *args,
        "--profile",
        "profiles/slurm",
        "--directory",
        str(workdir),
        "--configfile",
        "config/config.yaml",
        str(workdir / "config.yaml"),
    ]


@pytest.fixture(scope="module")
def run(slurm_cluster, tmp_path_factory) -> Run:  # noqa: F811
    workdir = tmp_path_factory.mktemp("slurm_demo")
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    env = slurm_env()
    # the MAPS only: the report's figures would be 6 more SLURM jobs
    command = [
        *slurm_command(workdir, *MAPS_TARGETS),
        *_profile_overrides(runtime={"train": TRAIN_RUNTIME}),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    cancelled = stopped = None
    try:
        deadline = time.monotonic() + 600
        while cancelled is None or stopped is None:
            assert process.poll() is None, process.stdout.read()[-5000:]
            assert time.monotonic() < deadline, f"no fault in time: {cancelled=} {stopped=}"
            if cancelled is None and {2, 3, 4, 5} & set(checkpoints(CANCELLED, workdir)):
                cancelled = running_train_job(CANCELLED)
                if cancelled:
                    subprocess.run(["scancel", cancelled], check=True)
            if stopped is None and checkpoints(TIMED_OUT, workdir):
                stopped = running_train_job(TIMED_OUT)
                pids = training_pids(stopped) if stopped else []
                assert stopped is None or pids, f"no train.py in SLURM job {stopped}"
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                if pids:
                    before_stop = checkpoints(TIMED_OUT, workdir)
                else:
                    stopped = None
            time.sleep(0.2)
        output = process.communicate(timeout=900)[0]
    finally:
        if process.poll() is None:  # a failed assertion: stop snakemake and its jobs
            process.terminate()
            process.wait(timeout=120)
    assert process.returncode == 0, output[-8000:]
    return Run(workdir, output, cancelled, stopped, before_stop)


def assert_resumed_from_sigterm_checkpoint(run: Run, split: int, jobid: str) -> None:
    """The trainer of job ``jobid`` checkpointed on SIGTERM, and the retry resumed from it."""
    failed = run.slurm_log(split, jobid)
    assert "received SIGTERM: checkpointing after this batch" in failed, failed[-3000:]
    written = re.search(
        r"TrainingInterrupted: stopped by signal 15; checkpoint (\S+) written", failed
    )
    assert written, f"no checkpoint written on SIGTERM by job {jobid}:\n{failed[-4000:]}"
    retry = run.train_log(split)
    assert f"resuming from checkpoint {written[1]}" in retry, retry[-3000:]
    # an epoch-end checkpoint says batch 0; one written on a signal, after a batch
    resumed = re.search(r"resumed at epoch \d+ \(batch (\d+) of the next\)", retry)
    assert resumed and int(resumed[1]) >= 1, retry[-3000:]


def test_demo_maps_complete_through_slurm(run):
    maps = run.maps()
    records = [
        r for name in maps.exec.runs for r in maps.open_file(maps.exec.runs[name].provenance_json)
    ]
    # training (and its validation, the end of each train job) and test ran in
    # SLURM jobs; the small steps on the submit host
    submitted = [r for r in records if r["step"].startswith(("train ", "validate ", "test "))]
    assert submitted and all(r["slurm_job_id"] for r in submitted), records
    assert all(not r["slurm_job_id"] for r in records if r not in submitted), records
    rules = sorted(p.name for p in (run.workdir / ".snakemake/slurm_logs").iterdir())
    assert rules == ["rule_test", "rule_train"], rules
    # one sbatch per train job and one for the test group, plus the retries of the two faults
    submissions = re.findall(r"has been submitted with SLURM jobid", run.output)
    assert len(submissions) == 2 + 1 + 2, run.output[-5000:]
    for split in (CANCELLED, TIMED_OUT):
        assert len(maps.open_file(maps.split(split).validation_metrics.aggregated_tsv)) == 8
        assert checkpoints(split, run.workdir) == []
    for target in MAPS_TARGETS:
        assert (run.workdir / target).is_file(), target


def test_scancelled_training_job_resumes_on_retry(run):
    job = _scontrol_job(run.cancelled)
    assert job.get("JobState") == "CANCELLED", job
    # the first attempt and the retry each ran in their own SLURM job
    jobs = run.train_jobs(CANCELLED)
    assert len(jobs) == 2 and jobs[0] == run.cancelled and jobs[1] != run.cancelled, jobs
    assert_resumed_from_sigterm_checkpoint(run, CANCELLED, run.cancelled)


def test_training_job_at_time_limit_checkpoints_and_resumes_on_retry(run):
    # the job really ended by TIMEOUT at its 1-minute limit, not by another failure
    job = _scontrol_job(run.timed_out)
    assert job.get("JobState") == "TIMEOUT" and job.get("Reason") == "TimeLimit", job
    assert job.get("TimeLimit") == "00:01:00", job
    assert f"SLURM-job '{run.timed_out}' failed, SLURM status is: 'TIMEOUT'" in run.output
    failed = run.slurm_log(TIMED_OUT, run.timed_out)
    limit = rf"JOB {run.timed_out} ON \S+ CANCELLED AT \S+ DUE TO TIME LIMIT"
    assert re.search(limit, failed), failed[-3000:]
    if os.access(SLURMCTLD_LOG, os.R_OK):
        assert f"Time limit exhausted for JobId={run.timed_out}" in SLURMCTLD_LOG.read_text()
    jobs = run.train_jobs(TIMED_OUT)
    assert len(jobs) == 2 and jobs[0] == run.timed_out and jobs[1] != run.timed_out, jobs
    # the retry did not start again at epoch 0 ...
    retry = run.train_log(TIMED_OUT)
    resumed = re.search(r"resumed at epoch (\d+)", retry)
    assert resumed, retry[-3000:]
    assert int(resumed[1]) >= max(run.checkpoints_before_stop) >= 1, resumed[0]
    # ... but from the checkpoint the trainer wrote on SLURM's SIGTERM
    assert_resumed_from_sigterm_checkpoint(run, TIMED_OUT, run.timed_out)


@pytest.fixture(scope="module")
def two_tasks(run, tmp_path_factory) -> tuple[Path, str]:
    """Split-0 retrained in a copy of ``run`` as one 2-task job; (workdir, snakemake output)."""
    workdir = tmp_path_factory.mktemp("slurm_two_tasks")
    shutil.copytree(run.workdir, workdir, symlinks=True, dirs_exist_ok=True)
    config = {
        **CONFIG,
        "train": {**CONFIG["train"], "epochs": 3, "distributed": {"processes": 2}},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = slurm_env()
    command = [
        *slurm_command(
            workdir, "results/maps/training/split-0/models/final/model.pt", "--forcerun", "train"
        ),
        *_profile_overrides(extra={"train": {"tasks": 2, "mpi": "'srun'"}}),
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    return workdir, output


def test_two_task_job_trains_one_split_with_a_rank_per_task(two_tasks):
    workdir, _ = two_tasks
    maps = Maps(workdir / "results/maps")
    split = maps.split(0)
    records = [
        r
        for name in maps.exec.runs
        for r in maps.open_file(maps.exec.runs[name].provenance_json)
        if r.get("step") == "train split-0" and r.get("world_size") == 2
    ]
    assert len(records) == 1, records  # rank 0 alone records the run
    jobid = records[0]["slurm_job_id"]
    job = _scontrol_job(jobid)
    assert job.get("NumTasks") == "2" and job.get("JobState") == "COMPLETED", job
    slurm_log = (
        workdir / f".snakemake/slurm_logs/rule_train/results_maps_0/{jobid}.log"
    ).read_text()
    assert "starting 2 ranks on 1 node(s) with srun" in slurm_log, slurm_log[-3000:]
    assert maps.open_file(split.computational_json)["world_size"] == 2
    assert split.models.final.model_pt.is_file()
    aggregated = maps.open_file(split.validation_metrics.aggregated_tsv)
    assert list(aggregated["epoch"]) == [1, 2, 3]


KILLED_MAPS = "results/maps-killed"
KILLED_CONFIG = {**CONFIG, "maps_dir": KILLED_MAPS, "split": {"n_splits": 1}}
# The MAPS of one split without test groups: its only SLURM jobs are the two trainings.
KILLED_TARGETS = [
    target.replace("results/maps/", f"{KILLED_MAPS}/")
    for target in MAPS_TARGETS
    if "split-1" not in target and "/test/" not in target
]


@dataclass
class Killed:
    """A run whose Snakemake was SIGKILLed while its train job ran, and its rerun."""

    workdir: Path
    orphan: str  # SLURM job id of the train job left running by the killed Snakemake
    waiting_log: str  # the rerun's train log while it waited for the orphan
    output: str  # the rerun's snakemake output

    def maps(self):
        return Maps(self.workdir / KILLED_MAPS).read(strict=True)


@pytest.fixture(scope="module")
def killed(run, tmp_path_factory) -> Killed:
    workdir = tmp_path_factory.mktemp("slurm_killed")
    shutil.copytree(run.workdir, workdir, symlinks=True, dirs_exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(KILLED_CONFIG))
    env = slurm_env()
    command = [*slurm_command(workdir, *KILLED_TARGETS), *_profile_overrides()]
    tmp = workdir / KILLED_MAPS / "training/split-0/tmp"
    train_log = workdir / f"logs/{KILLED_MAPS}/train_split-0.log"
    first_out = workdir / "first.out"
    with first_out.open("w") as out:
        first = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 300
        orphan = None
        while orphan is None:
            assert first.poll() is None, first_out.read_text()[-5000:]
            assert time.monotonic() < deadline, "no checkpoint of split-0 in time"
            owner = tmp / "owner.json"
            if list(tmp.glob("epoch-*")) and owner.exists():
                orphan = yaml.safe_load(owner.read_text())["slurm_job_id"]
            time.sleep(0.2)
        pids = training_pids(orphan)
        assert pids, f"no train.py in SLURM job {orphan}"
        for pid in pids:  # held still, so that the rerun finds it training
            os.kill(pid, signal.SIGSTOP)
        first.kill()  # Snakemake alone: its SLURM job goes on
        first.wait(timeout=30)
        assert _scontrol_job(orphan).get("JobState") == "RUNNING"
        unlock = subprocess.run(
            [*command, "--unlock"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        assert unlock.returncode == 0, unlock.stderr[-3000:]
        rerun = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 300
        waiting = ""
        while f"is being trained by SLURM job {orphan}" not in waiting:
            assert rerun.poll() is None, rerun.stdout.read()[-5000:]
            assert time.monotonic() < deadline, f"the rerun's job did not wait:\n{waiting}"
            waiting = train_log.read_text() if train_log.exists() else ""
            time.sleep(0.2)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        if first.poll() is None:
            first.kill()
    try:
        output = rerun.communicate(timeout=600)[0]
    finally:
        if rerun.poll() is None:
            rerun.terminate()
            rerun.wait(timeout=120)
    assert rerun.returncode == 0, output[-8000:]
    return Killed(workdir, orphan, waiting, output)


def test_rerun_after_snakemake_was_killed_waits_for_its_orphaned_slurm_job(killed):
    split = killed.maps().split(0)  # strict: every file the MAPS format requires
    # the rerun's job waited for the orphan, named it, and trained nothing itself
    assert "waiting for it to end before touching its checkpoints or logs" in killed.waiting_log
    log = (killed.workdir / f"logs/{KILLED_MAPS}/train_split-0.log").read_text()
    assert "was finished by the job this one waited for: nothing left to train" in log, log
    assert "resuming from checkpoint" not in log and "taking over" not in log, log
    job = _scontrol_job(killed.orphan)
    assert job.get("JobState") == "COMPLETED", job
    orphan_log = (
        killed.workdir
        / f".snakemake/slurm_logs/rule_train/{KILLED_MAPS.replace('/', '_')}_0"
        / f"{killed.orphan}.log"
    )
    if orphan_log.exists():  # the plugin keeps it (slurm-keep-successful-logs)
        assert "resuming from checkpoint" not in orphan_log.read_text()
    # every log of the split has each epoch (and batch) once: nobody wrote it twice
    epochs = list(range(1, CONFIG["train"]["epochs"] + 1))
    for table in (split.validation_metrics.aggregated_tsv, split.logs.computational_tsv):
        frame = Maps(killed.workdir / KILLED_MAPS).open_file(table)
        assert list(frame["epoch"]) == epochs, (table, frame)
    batches = Maps(killed.workdir / KILLED_MAPS).open_file(split.logs.training_loss_tsv)
    keys = list(zip(batches["epoch"], batches["batch"]))
    assert len(keys) == len(set(keys)) and sorted(keys) == keys, keys
    assert sorted({epoch for epoch, _ in keys}) == epochs, keys
    assert list((killed.workdir / KILLED_MAPS / "training/split-0/tmp").iterdir()) == []
    for target in KILLED_TARGETS:
        assert (killed.workdir / target).is_file(), target
