"""The demo through SLURM against the same demo run locally, side by side.

Needs a SLURM cluster (``tests/slurm/up.sh`` starts the single-node test
cluster); skipped, with a SKIP row, where ``sinfo`` does not answer. Measures
the ``sbatch`` submissions of one experiment (only train and test jobs should
reach the queue: the small steps are localrules) and the wall time under
``--profile profiles/slurm`` against ``--cores 2``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import (
    ROOT,
    Result,
    full_config,
    load_avg,
    overlay,
    run_timed,
    snakemake_command,
    temp_dir,
    write_overlay,
)
from .workflow import experiment_targets

SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid \d+")
RULE_OF_SUBMISSION = re.compile(r"--comment rule_(\w+?)_wildcards")


def cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    done = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, check=False)
    return done.returncode == 0 and any(s in done.stdout for s in ("idle", "mix", "alloc"))


def node_fit() -> list[str]:
    """Threads and memory that fit the test node (one CPU, 300 MB a job, 10 minutes)."""
    return [
        "--set-threads",
        "train=1",
        "test=1",
        "--set-resources",
        "train:mem_mb=300",
        "train:runtime=10",
        "train:gpu=0",
        "test:mem_mb=300",
        "test:runtime=10",
        "test:gpu=0",
    ]


def slurm_vs_local(cohort: Mapping[str, Path], epochs: int, log: Any) -> list[Result]:
    if not cluster_up():
        log("  no SLURM cluster answers sinfo: skipped (sudo tests/slurm/up.sh starts one)")
        return [Result("slurm_vs_local", None, "", None, note="no SLURM cluster")]
    extra = overlay(cohort, epochs)
    config = full_config(extra)
    targets = experiment_targets(config)
    n_splits, groups = config["split"]["n_splits"], len(config["test"]["groups"])
    expected = n_splits + groups  # one train job per split, one test job per group
    rows: dict[str, dict[str, Any]] = {}
    for mode in ("local", "slurm"):
        with temp_dir(f"slurm-{mode}") as work:
            config_file = write_overlay(work, extra)
            if mode == "local":
                args = [*targets, "--cores", "2"]
            else:
                args = [*targets, "--profile", "profiles/slurm", "--verbose", *node_fit()]
            seconds, done = run_timed(snakemake_command(work, config_file, *args), cwd=ROOT)
            output = done.stdout + done.stderr
            if done.returncode != 0:
                raise RuntimeError(f"{mode} demo failed: {output[-3000:]}")
            calls = [line for line in output.splitlines() if "sbatch call:" in line]
            rules = sorted({m[1] for line in calls for m in [RULE_OF_SUBMISSION.search(line)] if m})
            rows[mode] = {
                "seconds": seconds,
                "submissions": len(SUBMITTED.findall(output)),
                "submitted_rules": rules,
                "load": load_avg(),
            }
            log(
                f"  {mode}: {seconds:.1f} s, {rows[mode]['submissions']} sbatch submissions {rules}"
            )
    submissions = rows["slurm"]["submissions"]
    ratio = rows["slurm"]["seconds"] / rows["local"]["seconds"]
    return [
        Result(
            "sbatch_submissions_per_experiment",
            float(submissions),
            f"= {expected} (train and test jobs only)",
            submissions == expected and set(rows["slurm"]["submitted_rules"]) <= {"train", "test"},
            note=f"rules submitted: {', '.join(rows['slurm']['submitted_rules'])}",
            details=rows,
        ),
        Result(
            "slurm_vs_local_wall",
            ratio,
            "info (queue latency of the single-node test cluster)",
            None,
            unit="x",
            note=f"{rows['slurm']['seconds']:.0f} s under SLURM vs {rows['local']['seconds']:.0f} s "
            "with --cores 2",
            details=rows,
        ),
    ]
