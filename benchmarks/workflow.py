"""Benchmarks that run real snakemake: workflow vs one process, resume, start-up costs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import (
    ROOT,
    Result,
    check,
    children_cpu,
    full_config,
    job_pids,
    load_avg,
    log_times,
    median,
    overlay,
    run_timed,
    snakemake_command,
    temp_dir,
    write_overlay,
)
from .training import prepare_maps

MAPS = "results/maps"
KEEP = bool(os.environ.get("SNAKEMAPS_BENCH_KEEP"))

# ---------------------------------------------------------------------- start-up


IMPORTS = {
    "python_bare": "pass",
    "import_torch": "import torch",
    "import_sklearn_metrics": "import sklearn.metrics",
    "import_torch_dynamo": "import torch._dynamo",
    # Building any torch.optim optimizer imports torch._dynamo (torch's _disable_dynamo).
    "torch_plus_first_optimizer": (
        "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"
    ),
}


def startup_costs(reps: int, log: Any) -> list[Result]:
    """Seconds for a fresh Python to import what every job imports (median of ``reps``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    times: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(reps):
        for name, code in IMPORTS.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env)
            times[name].append(time.perf_counter() - start)
    results = []
    for name, values in times.items():
        results.append(
            Result(
                f"startup_{name}",
                median(values),
                "(info)",
                None,
                "s",
                f"python -c {IMPORTS[name]!r}, median of {reps}",
                {"runs": values},
                load_avg(),
            )
        )
    log(
        "  "
        + ", ".join(f"{n} {median(v):.2f} s" for n, v in times.items())
        + f" [load {load_avg()}]"
    )
    return results


def train_job_phases(workdir: Path, split: int) -> dict[str, float]:
    """Where a train job's wall time goes, from its log timestamps and benchmark file."""
    log = workdir / f"logs/{MAPS}/train_split-{split}.log"
    lines = log_times(log)
    first = lines[0][0]
    begin = next(t for t, m in lines if " training " in m and "epochs on" in m)
    epochs = [t for t, m in lines if f"split-{split} epoch " in m]
    last = lines[-1][0]
    phases = {
        "log_start_to_first_epoch_s": begin - first,
        "first_epoch_to_end_s": last - begin,
        "epoch_s": (epochs[-1] - epochs[0]) / (len(epochs) - 1) if len(epochs) > 1 else None,
    }
    bench = workdir / f"logs/{MAPS}/train_split-{split}.benchmark.tsv"
    if bench.exists():
        import pandas as pd

        wall = float(pd.read_csv(bench, sep="\t")["s"].iloc[-1])
        phases["job_wall_s"] = wall
        phases["before_first_log_line_s"] = wall - (last - first)
    return phases


# ---------------------------------------------------------------------- workflow vs one process


def experiment_targets(config: Mapping[str, Any]) -> list[str]:
    """The experiment's outputs (common.smk's maps_targets): what single_process.py writes.

    The default target also draws the report figures; one process would not, so
    both sides are asked for the same files.
    """
    monitor = config["train"]["monitor"]
    models = [f"best_models/best-{m}" for m in monitor] + ["final"]
    targets = [f"{MAPS}/env/environment.txt"]
    for k in range(config["split"]["n_splits"]):
        targets += [
            f"{MAPS}/training/split-{k}/models/{d}/validation_metrics/aggregated.tsv"
            for d in models
        ]
    for group in config["test"]["groups"]:
        targets += [f"{MAPS}/test/group-{group}/summary-{m}.tsv" for m in monitor]
    return targets


def run_workflow(cohort: Mapping[str, Path], epochs: int, keep: list[dict]) -> float:
    with temp_dir(f"workflow-e{epochs}") as work:
        extra = overlay(cohort, epochs)
        config_file = write_overlay(work, extra)
        targets = experiment_targets(full_config(extra))
        command = snakemake_command(work, config_file, "--cores", "2", *targets)
        seconds, done = run_timed(command)
        check(done, "snakemake --cores 2")
        phases = [train_job_phases(work, k) for k in range(2)]
        keep.append(
            {"seconds": seconds, "cpu_s": done.cpu_s, "train_jobs": phases, "load": load_avg()}
        )
    return seconds


def run_single(cohort: Mapping[str, Path], epochs: int, threads: int, keep: list[dict]) -> float:
    with temp_dir(f"single-e{epochs}") as work:
        config = full_config(overlay(cohort, epochs))
        path = work / "config.json"
        path.write_text(json.dumps(config))
        command = [sys.executable, str(ROOT / "benchmarks" / "single_process.py"), str(path)]
        seconds, done = run_timed([*command, str(threads)], cwd=work)
        check(done, "single process")
        inner = json.loads(done.stdout.strip().splitlines()[-1])["in_process_s"]
        keep.append(
            {"seconds": seconds, "cpu_s": done.cpu_s, "in_process_s": inner, "load": load_avg()}
        )
    return seconds


def workflow_vs_single(
    cohort: Mapping[str, Path],
    epochs_list: Sequence[int],
    reps: int,
    threads_list: Sequence[int],
    log: Any,
) -> list[Result]:
    """Wall time of snakemake --cores 2 over the same experiment in one process."""
    results = []
    medians: dict[int, tuple[float, float]] = {}
    all_jobs: list[dict[str, float]] = []
    for epochs in epochs_list:
        workflow: list[dict] = []
        single: dict[int, list[dict]] = {t: [] for t in threads_list}
        for rep in range(reps):
            run_workflow(cohort, epochs, workflow)
            for threads in threads_list:
                run_single(cohort, epochs, threads, single[threads])
            log(
                f"  E={epochs} rep {rep + 1}/{reps}: snakemake {workflow[-1]['seconds']:.1f} s, "
                + ", ".join(
                    f"one process ({t} thr) {single[t][-1]['seconds']:.1f} s" for t in threads_list
                )
                + f" [load {load_avg()}]"
            )
        wf = median([r["seconds"] for r in workflow])
        jobs = [p for r in workflow for p in r["train_jobs"]]
        all_jobs += jobs
        startup = median([p["log_start_to_first_epoch_s"] for p in jobs])
        before = [p["before_first_log_line_s"] for p in jobs if "before_first_log_line_s" in p]
        for i, threads in enumerate(threads_list):
            one = median([r["seconds"] for r in single[threads]])
            # Paired: each repeat's workflow run against the single-process run right after it.
            pairs = list(zip(workflow, single[threads], strict=True))
            ratio = median([w["seconds"] / s["seconds"] for w, s in pairs])
            cpu_ratio = median([w["cpu_s"] / s["cpu_s"] for w, s in pairs])
            if i == 0:
                medians[epochs] = (wf, one)
            results.append(
                Result(
                    f"workflow_vs_single_process[E={epochs},{threads}thr]",
                    ratio,
                    "<= 1.05" if i == 0 else "(info)",
                    ratio <= 1.05 if i == 0 else None,
                    "x",
                    f"snakemake {wf:.1f} s vs one process {one:.1f} s (CPU time x{cpu_ratio:.2f}: "
                    f"{median([r['cpu_s'] for r in workflow]):.0f} vs "
                    f"{median([r['cpu_s'] for r in single[threads]]):.0f} CPU-s); train job: "
                    f"{median(before) if before else float('nan'):.1f} s to first log line + "
                    f"{startup:.1f} s to first epoch",
                    {
                        "epochs": epochs,
                        "single_threads": threads,
                        "cpu_time_ratio": cpu_ratio,
                        "workflow": workflow,
                        "single": single[threads],
                    },
                    load_avg(),
                )
            )
    if len(medians) >= 2:
        results.append(break_even(medians))
    before = median([p.get("before_first_log_line_s", float("nan")) for p in all_jobs])
    to_epoch = median([p["log_start_to_first_epoch_s"] for p in all_jobs])
    epoch = median([p["epoch_s"] for p in all_jobs if p["epoch_s"]])
    results.append(
        Result(
            "startup_train_job_in_workflow",
            before + to_epoch,
            "(info)",
            None,
            "s",
            f"job start to first log line {before:.1f} s (benchmark file) + first log line to "
            f"first epoch {to_epoch:.1f} s (log timestamps) = {(before + to_epoch) / epoch:.1f} "
            f"epochs of {epoch:.2f} s; median of {len(all_jobs)} train jobs",
            {"train_jobs": all_jobs},
            load_avg(),
        )
    )
    return results


def break_even(medians: Mapping[int, tuple[float, float]]) -> Result:
    """Epochs from which the workflow is within 5% of one process (straight lines in E)."""
    (e1, (w1, s1)), (e2, (w2, s2)) = min(medians.items()), max(medians.items())
    w_slope, s_slope = (w2 - w1) / (e2 - e1), (s2 - s1) / (e2 - e1)
    w_fixed, s_fixed = w1 - w_slope * e1, s1 - s_slope * e1
    # w_fixed + w_slope E <= 1.05 (s_fixed + s_slope E)
    denominator = 1.05 * s_slope - w_slope
    usable = w_slope > 0 and s_slope > 0 and denominator > 0
    epochs = max(0.0, (w_fixed - 1.05 * s_fixed) / denominator) if usable else None
    return Result(
        "workflow_break_even_epochs",
        epochs,
        "(info)",
        None,
        "epochs",
        f"snakemake {w_fixed:.1f} s + {w_slope:.2f} s/epoch vs one process {s_fixed:.1f} s + "
        f"{s_slope:.2f} s/epoch (lines through E={e1} and E={e2}); ratio <= 1.05 from this E"
        + (
            ""
            if epochs is not None
            else ": not computable (a slope is not positive: too noisy, or the workflow's "
            "per-epoch cost is higher)"
        ),
        {
            "workflow_fixed_s": w_fixed,
            "workflow_per_epoch_s": w_slope,
            "single_fixed_s": s_fixed,
            "single_per_epoch_s": s_slope,
        },
        load_avg(),
    )


# ---------------------------------------------------------------------- resume


def resume_overhead(
    cohort: Mapping[str, Path], epochs: int, kill_at: int, log: Any
) -> list[Result]:
    """(killed at epoch k + resumed) - (unbroken), in epochs of the unbroken run."""
    target = f"{MAPS}/training/split-0/models/final/model.pt"
    with temp_dir("resume", keep=KEEP) as work:
        # Tensor cache and split made in this process (snakemake then runs only the train
        # job: the prepare and split outputs exist and are newer than their inputs).
        prepared = work / "prepared"
        write_overlay(prepared, overlay(cohort, epochs))
        prepare_maps(prepared / "results", cohort, epochs)
        unbroken, broken = work / "unbroken", work / "broken"
        shutil.copytree(prepared, unbroken, symlinks=True)
        shutil.copytree(prepared, broken, symlinks=True)

        def command(workdir: Path) -> list[str]:
            return snakemake_command(workdir, workdir / "bench_config.yaml", "--cores", "2", target)

        clean_s, done = run_timed(command(unbroken))
        check(done, "unbroken training run")
        clean_cpu = done.cpu_s
        phases = train_job_phases(unbroken, 0)

        tmp = broken / f"{MAPS}/training/split-0/tmp"
        cpu = children_cpu()
        start = time.perf_counter()
        process = subprocess.Popen(
            command(broken), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while not (tmp / f"epoch-{kill_at}").exists():
            if process.poll() is not None:
                raise RuntimeError("the training run ended before the kill")
            time.sleep(0.01)
        killed_at = time.perf_counter() - start
        for pid in job_pids(broken, "train.py"):
            os.kill(pid, signal.SIGKILL)
        process.wait(timeout=120)
        first_s = time.perf_counter() - start
        first_cpu = children_cpu() - cpu
        rerun_s, done = run_timed(command(broken))
        check(done, "resumed run")
        text = (broken / f"logs/{MAPS}/train_split-0.log").read_text()
        if "resumed at epoch" not in text:
            raise RuntimeError("the rerun did not resume from the checkpoint")
        lines = log_times(broken / f"logs/{MAPS}/train_split-0.log")
        second = [t for t, m in lines if "rule train" in m][-1]
        resuming = next(t for t, m in lines if "resuming from checkpoint" in m)
        resumed = next(t for t, m in lines if "resumed at epoch" in m)

    epoch_s = phases["epoch_s"]
    overhead = first_s + rerun_s - clean_s
    overhead_cpu = first_cpu + done.cpu_s - clean_cpu
    value = overhead / epoch_s
    log(
        f"  unbroken {clean_s:.1f} s; killed after {killed_at:.1f} s (exit after {first_s:.1f} s) "
        f"+ resumed {rerun_s:.1f} s; epoch {epoch_s:.2f} s [load {load_avg()}]"
    )
    mechanics = (resumed - resuming) / epoch_s
    return [
        Result(
            "resume_overhead_epochs",
            value,
            "< 1",
            value < 1,
            "epochs",
            f"{overhead:+.1f} s over an unbroken {clean_s:.1f} s run ({epochs} epochs of "
            f"{epoch_s:.2f} s, killed right after checkpoint {kill_at}); the restarted job took "
            f"{resuming - second:.1f} s from its first log line to the checkpoint load; "
            f"{overhead_cpu:+.1f} CPU-s",
            {
                "epochs": epochs,
                "kill_after_checkpoint": kill_at,
                "unbroken_s": clean_s,
                "killed_run_s": first_s,
                "kill_after_s": killed_at,
                "resumed_run_s": rerun_s,
                "overhead_s": overhead,
                "overhead_cpu_s": overhead_cpu,
                "unbroken_cpu_s": clean_cpu,
                "epoch_s": epoch_s,
                "restarted_job_log_start_to_resuming_s": resuming - second,
                "checkpoint_load_s": resumed - resuming,
                "unbroken_train_job": phases,
            },
            load_avg(),
        ),
        Result(
            "resume_checkpoint_load_epochs",
            mechanics,
            "(info)",
            None,
            "epochs",
            f"loading tmp/epoch-{kill_at} and trimming the logs took {resumed - resuming:.2f} s "
            "(the resume itself, without the job's restart)",
            {"checkpoint_load_s": resumed - resuming, "epoch_s": epoch_s},
            load_avg(),
        ),
    ]
