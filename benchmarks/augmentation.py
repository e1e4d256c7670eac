"""The cost of train.data_augmentation: data waiting share and samples/s, side by side.

The real ``train_split`` on the benchmark cohort, three variants run one after
the other in rotating order: no augmentation; ``AUGMENTATION`` in the
training process (``num_workers: 0``); the same with 2 DataLoader workers
augmenting while the network trains. The data waiting share is the time
``Batches.iterate`` makes the trainer wait for the next batch (training and
validation) over the fit time.
"""

from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.common import Result, load_avg
from benchmarks.training import Probe, prepare_maps, run_trainer

# ClinicaDL's own intensity and spatial ones, and two of TorchIO's.
AUGMENTATION = ["Noise", "CropPad", "RandomBlur", "Motion"]
WORKERS = 2
VARIANTS = {
    "none": {"data_augmentation": [], "num_workers": 0},
    "augmented": {"data_augmentation": AUGMENTATION, "num_workers": 0},
    f"augmented_{WORKERS}_workers": {"data_augmentation": AUGMENTATION, "num_workers": WORKERS},
}


def augmentation_cost(
    work: Path, cohort: dict[str, Path], epochs: int, rounds: int, log: Any
) -> list[Result]:
    config = prepare_maps(work, cohort, epochs)
    maps = work / "maps"
    train = dict(config["train"])
    probe = Probe()
    log(f"  warm-up (1 epoch, augmented) [load {load_avg()}]")
    run_trainer(maps, {**train, **VARIANTS["augmented"], "epochs": 1}, probe)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            row = run_trainer(maps, {**train, **VARIANTS[name]}, probe)
            row["data_share"] = row["data_wait_s"] / row["fit_s"]
            rows[name].append(row)
            log(
                f"  round {i + 1}/{rounds} {name}: {row['samples_per_s']:.1f} samples/s, "
                f"data waiting {100 * row['data_share']:.0f}% [load {load_avg()}]"
            )
    share = {name: median(r["data_share"] for r in rows[name]) for name in VARIANTS}
    speed = {name: median(r["samples_per_s"] for r in rows[name]) for name in VARIANTS}
    detail = {"augmentation": AUGMENTATION, "epochs": epochs, "rounds": rounds, "runs": rows}
    results = [
        Result(
            f"augmentation_data_share[{name}]",
            share[name],
            "info",
            None,
            "share",
            f"{speed[name]:.1f} samples/s; {', '.join(AUGMENTATION) if name != 'none' else 'none'}"
            f"{f', {WORKERS} DataLoader workers' if 'workers' in name else ''}",
            detail if name == "none" else {},
            load_avg(),
        )
        for name in VARIANTS
    ]
    best = max(speed["augmented"], speed[f"augmented_{WORKERS}_workers"])
    results.append(
        Result(
            "augmentation_throughput_vs_none",
            best / speed["none"],
            "info",
            None,
            "x",
            f"samples/s with augmentation (the faster of 0 and {WORKERS} workers) over none",
            {},
            load_avg(),
        )
    )
    workers = speed[f"augmented_{WORKERS}_workers"] / speed["augmented"]
    results.append(
        Result(
            f"augmentation_workers_speedup[{WORKERS}]",
            workers,
            "> 1 (workers pay off)",
            workers > 1,
            "x",
            f"samples/s with {WORKERS} DataLoader workers augmenting over augmentation in the "
            "training process",
            {},
            load_avg(),
        )
    )
    return results
