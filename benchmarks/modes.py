"""Patch and slice modes against image mode: time waiting for data, and peak memory.

Each mode trains the same cohort with the real ``train_split`` in a fresh
process (one torch thread), so that its peak resident memory is its own.
``Batches.iterate`` is timed from outside (the ``Probe`` of
``benchmarks/training.py``): the share of fit time spent waiting for the next
batch, training and validation, where patches and slices are cut from the
tensor cache. Memory: the process's peak RSS in each mode over image mode's,
and the bytes the data sets hold over what one tensor per part would take.

    python benchmarks/modes.py --epochs 3    # prints the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, Result, full_config, load_avg, overlay

# The demo cohort's 32 x 40 x 32 images; ClinicaDL's ratios of part to image.
MODES: dict[str, dict[str, Any]] = {
    "image": {"mode": "image"},
    "patch": {"mode": "patch", "patch_size": 16, "stride_size": 8},
    "slice": {"mode": "slice", "slice_direction": 1, "discarded_slices": [8, 8]},
}
GOAL_SHARE = 0.10
GOAL_MEMORY = 1.25


def child(work: Path, manifest: Path, mode: str, epochs: int, cohort: Mapping[str, str]) -> dict:
    """Train split 0 in ``mode`` in this process; its figures."""
    from snakemaps.data.extraction import settings
    from snakemaps.data.subsamples import SubSamples
    from snakemaps.experiment import create_maps
    from snakemaps.train import trainer as T

    from benchmarks.training import Probe, run_trainer

    extra = overlay({k: Path(v) for k, v in cohort.items()}, epochs, batch_size=16)
    extra["data"].update(MODES[mode])
    config = full_config(extra)
    maps = work / f"maps-{mode}"
    create_maps(
        maps,
        manifest,
        split=config["split"],
        model=config["model"],
        train=config["train"],
        modes=settings(config),
    )
    held: dict[str, float] = {}
    original = T.Trainer.__init__

    def measured(trainer: Any, **kwargs: Any) -> None:
        original(trainer, **kwargs)
        for side in ("train_data", "val_data"):
            data = getattr(trainer, side)
            source = data.source if isinstance(data, SubSamples) else data
            held[side] = float(source.images.nbytes)
            per_part = math.prod(data.extraction.part_shape) * 4 if data is not source else None
            held[f"{side}_materialised"] = per_part * len(data) if per_part else held[side]

    T.Trainer.__init__ = measured
    try:
        row = run_trainer(maps, config["train"], Probe())
    finally:
        T.Trainer.__init__ = original
    row.update(held)
    row["peak_rss_mib"] = peak_rss_mib()
    row["data_wait_share"] = row["data_wait_s"] / row["fit_s"]
    return row


def peak_rss_mib() -> float:
    """This process's own peak resident memory.

    Linux's ``VmHWM`` is the high-water mark of the process's current memory
    map, made anew by ``exec``. ``ru_maxrss`` is not enough: ``exec`` keeps
    the larger of the old map's mark, so a child spawned (vfork) by a large
    ``benchmarks/run.py`` reports its parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def modes_benchmark(work: Path, cohort: Mapping[str, Path], epochs: int, log: Any) -> list[Result]:
    """data_wait_share per mode (patch, slice: < 10%) and peak memory against image mode."""
    from snakemaps.data.prepare import prepare_cache

    cache = work / "cache"
    manifest = prepare_cache(
        cohort["participants"], cache / "tensors", cache / "manifest.tsv", key="data.tsv"
    )
    rows = {}
    for mode in MODES:
        log(f"  {mode} mode: train_split in a fresh process")
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            mode,
            "--work",
            str(work),
            "--manifest",
            str(manifest),
            "--epochs",
            str(epochs),
            "--cohort",
            json.dumps({k: str(v) for k, v in cohort.items()}),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{mode} mode benchmark failed:\n{done.stderr[-3000:]}")
        rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    results = []
    for mode, row in rows.items():
        share = row["data_wait_share"]
        goal = mode != "image"
        results.append(
            Result(
                f"data_wait_share[{mode}]",
                share,
                f"< {GOAL_SHARE:.0%}" if goal else "info",
                share < GOAL_SHARE if goal else None,
                note=(
                    f"{row['data_wait_s']:.2f} s of {row['fit_s']:.1f} s fit; "
                    f"{row['samples_per_s']:.0f} samples/s"
                ),
                details=row,
                load_avg=load_avg(),
            )
        )
    base = rows["image"]["peak_rss_mib"]
    for mode in ("patch", "slice"):
        row = rows[mode]
        ratio = row["peak_rss_mib"] / base
        held = row["train_data"] + row["val_data"]
        materialised = row["train_data_materialised"] + row["val_data_materialised"]
        results.append(
            Result(
                f"peak_memory_vs_image[{mode}]",
                ratio,
                f"<= {GOAL_MEMORY}",
                ratio <= GOAL_MEMORY,
                note=(
                    f"peak RSS {row['peak_rss_mib']:.0f} MiB vs {base:.0f} MiB; data sets hold "
                    f"{held / 2**20:.1f} MiB (the cache), one tensor per part would be "
                    f"{materialised / 2**20:.1f} MiB"
                ),
                details={"image": rows["image"], mode: row},
                load_avg=load_avg(),
            )
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=list(MODES))
    parser.add_argument("--work", type=Path)
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cohort", default="{}")
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                child(args.work, args.manifest, args.child, args.epochs, json.loads(args.cohort))
            )
        )
    else:
        from benchmarks.common import make_cohort, temp_dir

        with temp_dir("modes") as work:
            results = modes_benchmark(
                work, make_cohort(work / "cohort"), args.epochs, lambda m: print(m, file=sys.stderr)
            )
        for result in results:
            print(result.name, f"{result.value:.4f}", result.goal, result.status, result.note)
