"""Every performance claim of snakemaps as a ratio measured side by side in one run.

    python benchmarks/run.py --quick --json /tmp/bench.json   # < 5 min on 2 CPU cores
    python benchmarks/run.py                                  # full: more repeats, more sizes

Prints a table (figure, value, goal, PASS/MISS) and, with --json, writes every
figure with its raw measurements, the machine and the load average. See
docs/benchmarks.md for what each figure measures and the latest results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import augmentation, dag, distributed, modes, slurm, training, workflow
from benchmarks.common import (
    Result,
    fmt,
    load_avg,
    machine,
    make_cohort,
    now_utc,
    temp_dir,
)

ALL = (
    "startup",
    "trainer",
    "augmentation",
    "ablation",
    "workflow",
    "resume",
    "dag",
    "slurm",
    "gpu",
    "distributed",
    "modes",
)

# Sizes per mode: quick must finish in < 5 minutes on 2 CPU cores.
PLANS = {
    "quick": {
        "startup_reps": 1,
        "trainer_epochs": 3,
        "trainer_pairs": 3,
        "ablation_pairs": 2,
        "workflow_epochs": [3],
        "workflow_reps": 1,
        "single_threads": [1],
        "resume_epochs": 6,
        "resume_kill_at": 3,
        "dag_runs": [100, 1000],
        "dag_single_job_runs": [100],
        "dag_timeout": 60.0,
        "slurm_epochs": 2,
        "gpu_steps": 20,
        "distributed_epochs": 4,
        "distributed_pairs": 2,
        "augmentation_epochs": 2,
        "augmentation_rounds": 1,
        "modes_epochs": 3,
    },
    "full": {
        "startup_reps": 3,
        "trainer_epochs": 5,
        "trainer_pairs": 5,
        "ablation_pairs": 3,
        "workflow_epochs": [2, 8],
        "workflow_reps": 2,
        "single_threads": [1, 2],
        "resume_epochs": 8,
        "resume_kill_at": 4,
        "dag_runs": [100, 1000, 5000],
        "dag_single_job_runs": [100, 1000],
        "dag_timeout": 300.0,
        "slurm_epochs": 4,
        "gpu_steps": 100,
        "distributed_epochs": 8,
        "distributed_pairs": 3,
        "augmentation_epochs": 3,
        "augmentation_rounds": 3,
        "modes_epochs": 5,
    },
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(results: list[Result]) -> str:
    rows = [("figure", "value", "unit", "goal", "result", "load", "notes")]
    for r in results:
        load = f"{r.load_avg[0]:.1f}" if r.load_avg else "-"
        rows.append((r.name, fmt(r.value), r.unit, r.goal, r.status, load, r.note))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[j].ljust(widths[j]) for j in range(6)]
        lines.append("  ".join(cells) + "  " + row[6])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 5)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 5 min on 2 cores")
    parser.add_argument("--json", type=Path, help="write every figure and raw measurement here")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=ALL,
        help="run only these groups (default: all; quick mode leaves out ablation)",
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    if args.only is None:
        args.only = [g for g in ALL if not (args.quick and g == "ablation")]
    plan = PLANS[mode]
    started, start_load = time.perf_counter(), load_avg()
    facts = machine()
    log(
        f"snakemaps benchmarks ({mode}) on {facts['cpu']}, {facts['cores']} cores; "
        f"load {start_load}"
    )

    results: list[Result] = []
    with temp_dir("cohort") as cohort_dir:
        if "startup" in args.only:
            log("start-up costs (fresh python per import)")
            results += workflow.startup_costs(plan["startup_reps"], log)
        needs_cohort = {
            "trainer",
            "augmentation",
            "ablation",
            "workflow",
            "resume",
            "slurm",
            "gpu",
            "distributed",
            "modes",
        } & set(args.only)
        cohort = make_cohort(cohort_dir) if needs_cohort else {}
        if "trainer" in args.only:
            log("trainer vs plain loop, checkpoint cost, data loading (in process)")
            with temp_dir("trainer") as work:
                results += training.trainer_benchmarks(
                    work, cohort, plan["trainer_epochs"], plan["trainer_pairs"], log
                )
        if "augmentation" in args.only:
            log("augmentation: data waiting share and samples/s, 0 and 2 DataLoader workers")
            with temp_dir("augmentation") as work:
                results += augmentation.augmentation_cost(
                    work,
                    cohort,
                    plan["augmentation_epochs"],
                    plan["augmentation_rounds"],
                    log,
                )
        if "ablation" in args.only:
            log("trainer vs plain loop with parts of the trainer switched off (what-if)")
            with temp_dir("ablation") as work:
                results += training.trainer_ablation(
                    work, cohort, plan["trainer_epochs"], plan["ablation_pairs"], log
                )
        if "workflow" in args.only:
            log("snakemake --cores 2 vs one process")
            results += workflow.workflow_vs_single(
                cohort,
                plan["workflow_epochs"],
                plan["workflow_reps"],
                plan["single_threads"],
                log,
            )
        if "resume" in args.only:
            log("kill at a checkpoint and resume vs unbroken")
            results += workflow.resume_overhead(
                cohort, plan["resume_epochs"], plan["resume_kill_at"], log
            )
        if "dag" in args.only:
            log("snakemake -n for random searches")
            results += dag.dag_benchmark(
                plan["dag_runs"], plan["dag_single_job_runs"], plan["dag_timeout"], log
            )
        if "slurm" in args.only:
            log("the demo through SLURM vs locally (needs tests/slurm/up.sh's cluster)")
            results += slurm.slurm_vs_local(cohort, plan["slurm_epochs"], log)
        if "gpu" in args.only:
            log("GPU: AMP + channels_last_3d + pinned + non_blocking vs fp32")
            with temp_dir("gpu") as work:
                results.append(training.gpu_benchmark(work, cohort, plan["gpu_steps"], log))
        if "distributed" in args.only:
            log("data-parallel training: samples/s with 1 and 2 processes (gloo on the CPU)")
            with temp_dir("distributed") as work:
                results += distributed.scaling(
                    work,
                    cohort,
                    plan["distributed_epochs"],
                    2,
                    plan["distributed_pairs"],
                    log,
                )
        if "modes" in args.only:
            log("patch and slice modes vs image mode: data waiting share, peak memory")
            with temp_dir("modes") as work:
                results += modes.modes_benchmark(work, cohort, plan["modes_epochs"], log)

    elapsed = time.perf_counter() - started
    print(
        f"snakemaps benchmarks, {mode} mode, {now_utc()}, commit {facts['commit']}: "
        f"{facts['cpu']}, {facts['cores']} cores, "
        f"python {facts['python']}, torch {facts['torch']}, snakemake {facts['snakemake']}; "
        f"load average {start_load} at start, {load_avg()} at end; {elapsed:.0f} s"
    )
    print(table(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": now_utc(),
                    "mode": mode,
                    "plan": plan,
                    "machine": facts,
                    "load_avg_start": start_load,
                    "load_avg_end": load_avg(),
                    "seconds": elapsed,
                    "results": [r.as_dict() for r in results],
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
