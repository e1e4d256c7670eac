"""The dry-run benchmarks: ``snakemake -n`` of random searches, and bare Snakemake beside them."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .common import Result, load_avg, run_timed, snakemake_command, temp_dir


def count_jobs(stdout: str) -> int | None:
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            return int(parts[1])
    return None


def timed_dry_run(command: Sequence[str], timeout: float) -> dict[str, Any]:
    """Seconds, exit code, timeout and job count of one ``snakemake -n``."""
    seconds, done = run_timed(command, timeout=timeout)
    return {
        "seconds": seconds,
        "rc": done.returncode,
        "timed_out": done.returncode == 124,
        "jobs": count_jobs(done.stdout),
        "error": (done.stderr or "")[-600:] if done.returncode not in (0, 124) else None,
    }


def dry_run(work: Path, config: Mapping[str, Any], target: str, timeout: float) -> dict[str, Any]:
    config_file = work / "dag_config.yaml"
    config_file.write_text(yaml.safe_dump(dict(config)))
    command = snakemake_command(work, config_file, target, "-n", "--cores", "2", "--quiet", "rules")
    return timed_dry_run(command, timeout)


# The side the dry-runs are measured against: Snakemake planning the same
# number of trivial jobs (one output, a shell command, no input function).
BARE_SNAKEFILE = """\
rule all:
    input:
        expand("bare/{i}.txt", i=range(int(config["n_jobs"]) - 1)),


rule make:
    output:
        "bare/{i}.txt",
    shell:
        "touch {output}"
"""


def snakefile_dry_run(
    folder: Path, snakefile: str, n_jobs: int, timeout: float, files: Sequence[str] = ()
) -> dict[str, Any]:
    """``snakemake -n`` of ``snakefile`` with ``n_jobs`` jobs in ``folder``, as :func:`dry_run`
    runs ours; ``files`` are empty files the Snakefile needs (inputs, scripts)."""
    folder.mkdir(exist_ok=True)
    (folder / "Snakefile").write_text(snakefile)
    for name in files:
        (folder / name).write_text("")
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(folder / "Snakefile"),
        "--directory",
        str(folder),
        "-n",
        "--cores",
        "2",
        "--quiet",
        "rules",
        "--config",
        f"n_jobs={n_jobs}",
    ]
    return timed_dry_run(command, timeout)


def bare_dry_run(work: Path, n_jobs: int, timeout: float) -> dict[str, Any]:
    """``snakemake -n`` of ``n_jobs`` trivial jobs (all included)."""
    return snakefile_dry_run(work / "bare", BARE_SNAKEFILE, n_jobs, timeout)


# The same number of jobs, each shaped like a train job (an input file, three
# outputs, a log, a params function, threads, resources and a script): what
# Snakemake itself spends on jobs of that shape, with no code of ours.
SHAPED_SNAKEFILE = """\
rule all:
    input:
        expand("shaped/{i}/final.pt", i=range(int(config["n_jobs"]) - 1)),


rule make:
    input:
        "manifest.json",
    output:
        final="shaped/{i}/final.pt",
        loss="shaped/{i}/best-loss.pt",
        accuracy="shaped/{i}/best-accuracy.pt",
    log:
        "logs/{i}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        index=lambda wildcards: wildcards.i,
    script:
        "step.py"
"""


def shaped_dry_run(work: Path, n_jobs: int, timeout: float) -> dict[str, Any]:
    """``snakemake -n`` of ``n_jobs`` jobs shaped like a train job (SHAPED_SNAKEFILE)."""
    files = ("manifest.json", "step.py")
    return snakefile_dry_run(work / "shaped", SHAPED_SNAKEFILE, n_jobs, timeout, files)


def versus_shaped(work: Path, n_runs: int, row: Mapping[str, Any], log: Any) -> Result | None:
    """Our dry-run over Snakemake's for as many train-shaped jobs (info: Snakemake's own floor)."""
    if row["timed_out"] or not row["jobs"]:
        return None
    shaped = shaped_dry_run(work, row["jobs"], timeout=max(120.0, 4 * row["seconds"]))
    if shaped["rc"] != 0:
        log(f"  train-shaped dry-run of {row['jobs']} jobs failed: {shaped['error']!r}")
        return None
    ratio = row["seconds"] / shaped["seconds"]
    log(
        f"  snakemake, {shaped['jobs']} train-shaped jobs: {shaped['seconds']:.1f} s ({ratio:.2f}x)"
    )
    return Result(
        f"dag_vs_train_shaped_snakemake[{n_runs} runs x 5 splits]",
        ratio,
        "(info)",
        None,
        "x",
        f"ours {row['seconds']:.1f} s vs {shaped['seconds']:.1f} s for {shaped['jobs']} jobs "
        "shaped like a train job (input, 3 outputs, log, params function, resources, "
        "script) and no code of ours, run right after",
        {"ours": dict(row), "shaped": shaped, "n_runs": n_runs},
        load_avg(),
    )


def versus_bare(work: Path, n_runs: int, row: Mapping[str, Any], log: Any) -> Result | None:
    """Our dry-run over bare Snakemake's for the same number of jobs, right after it.

    Where ours was stopped at the timeout there is no ratio (a bound from a
    stopped run says nothing), and bare Snakemake is not run either: quick
    mode stays short.
    """
    goal = n_runs == 1000
    name = f"dag_vs_bare_snakemake[{n_runs} runs x 5 splits]"
    if row["timed_out"]:
        return Result(
            name,
            None,
            "<= 1.5" if goal else "(info)",
            False if goal else None,
            "x",
            f"ours stopped after {row['seconds']:.0f} s: not compared (full mode runs it to "
            "the end)",
            {"ours": dict(row), "n_runs": n_runs},
            load_avg(),
        )
    if not row["jobs"]:
        return None
    bare = bare_dry_run(work, row["jobs"], timeout=max(120.0, 4 * row["seconds"]))
    if bare["rc"] != 0:
        log(f"  bare snakemake dry-run of {row['jobs']} jobs failed: {bare['error']!r}")
        return None
    ratio = row["seconds"] / bare["seconds"]
    log(f"  bare snakemake, {bare['jobs']} trivial jobs: {bare['seconds']:.1f} s ({ratio:.2f}x)")
    return Result(
        name,
        ratio,
        "<= 1.5" if goal else "(info)",
        ratio <= 1.5 if goal else None,
        "x",
        f"ours {row['seconds']:.1f} s vs bare snakemake {bare['seconds']:.1f} s for "
        f"{bare['jobs']} trivial jobs (one output, a shell command, no input function), "
        "run right after",
        {"ours": dict(row), "bare": bare, "n_runs": n_runs},
        load_avg(),
    )


def dag_benchmark(
    runs_list: Sequence[int], single_job_runs: Sequence[int], timeout: float, log: Any
) -> list[Result]:
    """``snakemake -n`` seconds for random searches of N runs x 5 splits."""
    results = []
    with temp_dir("dag") as work:
        base = dry_run(work, {"split": {"n_splits": 5}}, "all", timeout=600)
        log(
            f"  baseline dry-run (one 5-split experiment, {base['jobs']} jobs): "
            f"{base['seconds']:.1f} s"
        )
        wired = True
        per_1000 = []
        for n_runs in runs_list:
            row = None
            if wired:
                config = {"random_search": {"n_runs": n_runs}, "split": {"n_splits": 5}}
                row = dry_run(work, config, "random_search", timeout)
                if row["rc"] not in (0, 124) or (row["rc"] == 0 and not row["jobs"]):
                    wired = False
                    log(f"  random search dry-run fails: {(row['error'] or '')[-300:]!r}")
            if not wired:
                row = dry_run(work, {"split": {"n_splits": 5 * n_runs}}, "all", timeout)
            mode = "random_search" if wired else "FALLBACK main experiment, n_splits = runs x 5"
            shown = f">{timeout:.0f} s (stopped)" if row["timed_out"] else f"{row['seconds']:.1f} s"
            log(f"  {n_runs} runs x 5 splits: {row['jobs']} jobs, {shown} [load {load_avg()}]")
            if row["rc"] not in (0, 124):
                raise RuntimeError(f"dry-run of {n_runs} runs failed: {row['error']}")
            if row["jobs"]:
                per_1000.append(1000 * row["seconds"] / row["jobs"])
            goal = n_runs == 1000
            results.append(
                Result(
                    f"dag_dry_run[{n_runs} runs x 5 splits]",
                    row["seconds"],
                    "< 10" if goal else "(info)",
                    (not row["timed_out"] and row["seconds"] < 10) if goal else None,
                    "s",
                    (f"{row['jobs']} jobs; " if row["jobs"] else "")
                    + (f"stopped after {timeout:.0f} s; " if row["timed_out"] else "")
                    + mode,
                    {**row, "n_runs": n_runs, "mode": mode, "baseline": base},
                    load_avg(),
                )
            )
            if wired:
                for compare in (versus_bare, versus_shaped):
                    against = compare(work, n_runs, row, log)
                    if against is not None:
                        results.append(against)
        if wired:
            results += single_job_of_search(work, single_job_runs, 600, base, log)
    if per_1000:
        results.insert(
            0,
            Result(
                "dag_seconds_per_1000_jobs",
                per_1000[-1],
                "(info)",
                None,
                "s",
                f"snakemake -n seconds per 1000 jobs (largest completed search); one 5-split "
                f"experiment ({base['jobs']} jobs): {base['seconds']:.1f} s",
                {"per_1000": per_1000, "baseline": base},
                load_avg(),
            ),
        )
    return results


def single_job_of_search(
    work: Path, runs_list: Sequence[int], timeout: float, base: Mapping[str, Any], log: Any
) -> list[Result]:
    """``snakemake -n`` of ONE train job of an N-run search: what every cluster job re-parses."""
    results = []
    for n_runs in runs_list:
        config = {"random_search": {"n_runs": n_runs}, "split": {"n_splits": 5}}
        target = "results/random_search/job-0/maps/training/split-0/models/final/model.pt"
        row = dry_run(work, config, target, timeout)
        if row["rc"] not in (0, 124):
            log(f"  single job of a {n_runs}-run search: dry-run failed {row['error']!r}")
            continue
        extra = row["seconds"] - base["seconds"]
        shown = f">{timeout:.0f} s (stopped)" if row["timed_out"] else f"{row['seconds']:.1f} s"
        log(f"  one train job of a {n_runs}-run search: {row['jobs']} jobs, {shown}")
        results.append(
            Result(
                f"dag_one_job_of_search[{n_runs} runs]",
                row["seconds"],
                "(info)",
                None,
                "s",
                f"snakemake -n of job-0 split-0 alone ({row['jobs']} jobs): {extra:+.1f} s over a "
                f"plain experiment's whole dry-run; a cluster job re-parses the Snakefile and "
                f"pays this before it starts",
                {**row, "n_runs": n_runs, "baseline": base},
                load_avg(),
            )
        )
    return results
