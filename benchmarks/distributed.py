"""Data-parallel scaling of one split: samples per second with 1 and N processes.

The real ``train_split`` trains split 0 with ``train.distributed.processes`` 1
and N at a fixed per-process batch (``train.batch_size``), one torch thread per
process. Samples per second come from the trainer's own
``logs/computational.tsv`` (every rank's samples over rank 0's training-loop
time), median over the epochs after the first (which pays the allocator and
DDP's bucket set-up). On the CPU (gloo) this is a correctness check of the
scaling only: N processes also need N free cores. On CUDA the same figure is
measured with one GPU per process, goal 0.9 x N.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import Result, load_avg, median
from .training import prepare_maps


def samples_per_s(maps: Path, split: int = 0) -> list[float]:
    import pandas as pd

    frame = pd.read_csv(maps / f"training/split-{split}/logs/computational.tsv", sep="\t")
    return [float(v) for v in frame["samples_per_s"]]


def run_split(maps: Path, train: Mapping[str, Any], processes: int) -> dict[str, Any]:
    """One fresh train_split of split 0 with ``processes`` ranks; its figures."""
    import shutil

    from snakemaps.train import train_split

    shutil.rmtree(maps / "training/split-0/tmp", ignore_errors=True)
    settings = {**train, "distributed": {**train["distributed"], "processes": processes}}
    start = time.perf_counter()
    train_split(maps, 0, settings, threads=processes)
    wall = time.perf_counter() - start
    per_epoch = samples_per_s(maps)
    return {
        "processes": processes,
        "wall_s": wall,
        "samples_per_s_per_epoch": per_epoch,
        "samples_per_s": median(per_epoch[1:] or per_epoch),
    }


def scaling(
    work: Path, cohort: Mapping[str, Path], epochs: int, processes: int, pairs: int, log: Any
) -> list[Result]:
    """distributed_scaling[cpu, N]: samples/s with N processes over 1, side by side."""
    import torch

    config = prepare_maps(work, cohort, epochs)
    maps = work / "maps"
    results = []
    devices = [("cpu", processes)]
    if torch.cuda.device_count() >= 2:
        devices.append(("cuda", torch.cuda.device_count()))
    for device, n in devices:
        train = {**config["train"], "device": device}
        rows: dict[int, list[dict[str, Any]]] = {1: [], n: []}
        for i in range(pairs):  # 1 N, N 1, ...: neither side always first
            for count in (1, n) if i % 2 == 0 else (n, 1):
                rows[count].append(run_split(maps, train, count))
            log(
                f"  {device} pair {i + 1}/{pairs}: 1 process {rows[1][-1]['samples_per_s']:.1f}, "
                f"{n} processes {rows[n][-1]['samples_per_s']:.1f} samples/s [load {load_avg()}]"
            )
        ratios = [b["samples_per_s"] / a["samples_per_s"] for a, b in zip(rows[1], rows[n])]
        ratio = median(ratios)
        one, many = (median([r["samples_per_s"] for r in rows[c]]) for c in (1, n))
        walls = [median([r["wall_s"] for r in rows[c]]) for c in (1, n)]
        goal = 0.9 * n
        note = (
            f"{one:.1f} -> {many:.1f} samples/s (per pair "
            f"{', '.join(f'{r:.2f}' for r in ratios)}); batch {train['batch_size']} per "
            f"process, {epochs} epochs, 1 thread per process; train_split wall "
            f"{walls[0]:.1f} s vs {walls[1]:.1f} s (rank start-up included)"
        )
        results.append(
            Result(
                f"distributed_scaling[{device},{n}]",
                ratio,
                f">= {goal:.1f}" if device == "cuda" else f"(info; ideal {n})",
                ratio >= goal if device == "cuda" else None,
                "x",
                note,
                {"pairs": pairs, "epochs": epochs, "ratios": ratios, "runs": rows},
                load_avg(),
            )
        )
    if len(devices) == 1:
        results.append(
            Result(
                "distributed_scaling[cuda,N]",
                None,
                ">= 0.9 N",
                None,
                "x",
                "fewer than 2 GPUs: skipped",
            )
        )
    return results
