"""In-process benchmarks of one training job: Trainer vs a plain loop, checkpoints, data loading.

The Trainer runs through the real ``train_split`` (all callbacks on). Its
methods are wrapped, not changed, to time ``fit``, ``write_checkpoint``, the
waiting for each batch (``Batches.iterate``, training and validation) and
every ``os.fsync``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .common import Result, full_config, load_avg, median, overlay

# ---------------------------------------------------------------------- probes


class Probe:
    """Seconds spent in fit, in checkpoints, waiting for batches and in fsync."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.fit = self.fit_cpu = self.checkpoint = self.data_wait = 0.0
        self.checkpoint_wait = 0.0
        self.fsync = self.fsync_checkpoint = 0.0
        self.n_fsync = self.n_fsync_checkpoint = self.n_checkpoints = 0
        self.samples = self.epochs = 0
        self.in_checkpoint = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[Probe]:
        from snakemaps.train import trainer as T

        fit, write_checkpoint, iterate, finish_checkpoint = (
            T.Trainer.fit,
            T.Trainer.write_checkpoint,
            T.Batches.iterate,
            T.Trainer.finish_checkpoint,
        )
        fsync = os.fsync
        probe = self

        def timed_fit(trainer: Any) -> None:
            start, cpu = time.perf_counter(), time.process_time()
            try:
                fit(trainer)
            finally:
                probe.fit += time.perf_counter() - start
                probe.fit_cpu += time.process_time() - cpu
                probe.epochs += trainer.state.current_epoch
                probe.samples += trainer.n_train * trainer.state.current_epoch

        def timed_checkpoint(trainer: Any) -> Any:
            start = time.perf_counter()
            probe.in_checkpoint = True
            try:
                return write_checkpoint(trainer)
            finally:
                probe.in_checkpoint = False
                probe.checkpoint += time.perf_counter() - start
                probe.n_checkpoints += 1

        def timed_finish(trainer: Any, *args: Any, **kwargs: Any) -> None:
            """Time the training thread waits for a checkpoint's background publishing."""
            start = time.perf_counter()
            try:
                finish_checkpoint(trainer, *args, **kwargs)
            finally:
                probe.checkpoint_wait += time.perf_counter() - start

        def timed_iterate(batches: Any, plan: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            source = iterate(batches, plan, *args, **kwargs)
            while True:
                start = time.perf_counter()
                item = next(source, None)
                probe.data_wait += time.perf_counter() - start
                if item is None:
                    return
                yield item

        def timed_fsync(fd: int) -> None:
            start = time.perf_counter()
            try:
                fsync(fd)
            finally:
                seconds = time.perf_counter() - start
                probe.fsync += seconds
                probe.n_fsync += 1
                in_publisher = threading.current_thread().name.startswith("checkpoint ")
                if probe.in_checkpoint or in_publisher:
                    probe.fsync_checkpoint += seconds
                    probe.n_fsync_checkpoint += 1

        T.Trainer.fit, T.Trainer.write_checkpoint = timed_fit, timed_checkpoint
        T.Trainer.finish_checkpoint = timed_finish
        T.Batches.iterate = timed_iterate
        os.fsync = timed_fsync
        try:
            yield self
        finally:
            T.Trainer.fit, T.Trainer.write_checkpoint, T.Batches.iterate = (
                fit,
                write_checkpoint,
                iterate,
            )
            T.Trainer.finish_checkpoint = finish_checkpoint
            os.fsync = fsync


# ---------------------------------------------------------------------- data


def prepare_maps(work: Path, cohort: Mapping[str, Path], epochs: int) -> dict[str, Any]:
    """Tensor cache and MAPS (2 folds) in ``work``; the full config."""
    from snakemaps.data.prepare import prepare_cache
    from snakemaps.experiment import create_maps

    config = full_config(overlay(cohort, epochs))
    cache = work / "data" / "cache" / "train"
    manifest = prepare_cache(
        cohort["participants"],
        cache / "tensors",
        cache / "manifest.tsv",
        label="label",
        key="data.tsv",
    )
    create_maps(
        work / "maps",
        manifest,
        split=config["split"],
        model=config["model"],
        train=config["train"],
    )
    return config


class NiftiImages:
    """Like CachedImages, but decodes each sample's .nii.gz with nibabel every time."""

    def __init__(self, frame: Any, classes: Any) -> None:
        import torch

        self.frame = frame.reset_index(drop=True)
        self.classes = list(classes)
        lookup = {name: i for i, name in enumerate(self.classes)}
        self.labels = torch.tensor([lookup[v] for v in self.frame["label"]], dtype=torch.long)
        self.images = None
        self.shape = None

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        import torch
        from snakemaps.data.prepare import load_image, min_max

        array = min_max(load_image(self.frame["image"].iloc[index]))
        return torch.from_numpy(array[None]), self.labels[index], index


@contextlib.contextmanager
def nifti_dataset() -> Iterator[None]:
    """Make train_split read NIfTI files each epoch instead of the tensor cache."""
    from snakemaps.data import dataset

    original = dataset.CachedImages
    dataset.CachedImages = NiftiImages
    try:
        yield
    finally:
        dataset.CachedImages = original


# ---------------------------------------------------------------------- runs


def run_trainer(
    maps: Path, train: Mapping[str, Any], probe: Probe, split: int = 0
) -> dict[str, float]:
    """One train_split (fresh start); the probe's figures for it."""
    from snakemaps.train import train_split

    probe.reset()
    start = time.perf_counter()
    with probe.installed():
        train_split(maps, split, dict(train), threads=1)
    total = time.perf_counter() - start
    row = {
        "fit_s": probe.fit,
        "train_split_s": total,
        "samples": probe.samples,
        "epochs": probe.epochs,
        "samples_per_s": probe.samples / probe.fit,
        "fit_cpu_s": probe.fit_cpu,
        "samples_per_cpu_s": probe.samples / probe.fit_cpu,
        "checkpoint_s": probe.checkpoint,
        "checkpoint_wait_s": probe.checkpoint_wait,
        "n_checkpoints": probe.n_checkpoints,
        "data_wait_s": probe.data_wait,
        "fsync_s": probe.fsync,
        "n_fsync": probe.n_fsync,
        "fsync_checkpoint_s": probe.fsync_checkpoint,
        "n_fsync_checkpoint": probe.n_fsync_checkpoint,
    }
    row.update(computational_tsv(maps / f"training/split-{split}/logs/computational.tsv"))
    return row


def computational_tsv(path: Path) -> dict[str, Any]:
    """Sums of the trainer's own per-epoch timings (logs/computational.tsv)."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t")
    time_column = next(
        (c for c in ("epoch_time", "epoch_seconds", "epoch_s", "seconds") if c in frame.columns),
        "epoch",
    )
    epoch = frame[time_column].astype(float)
    return {
        "tsv_rows": len(frame),
        "tsv_epoch_column_holds_seconds": bool(
            time_column == "epoch" and not (epoch == epoch.round()).all()
        ),
        "tsv_epoch_s": float(epoch.sum()),
        "tsv_checkpoint_s": float(frame["checkpoint"].sum()) if "checkpoint" in frame else None,
        "tsv_batch_loading_s": float(frame["batch_loading"].sum()),
        "tsv_bn_recalibration_s": float(frame["bn_recalibration"].sum())
        if "bn_recalibration" in frame
        else 0.0,
        "tsv_metric_s": float(frame["metric"].sum()) if "metric" in frame else 0.0,
        "tsv_train_loop_s": float(frame["train_loop"].sum()),
    }


def run_plain(maps: Path, train: Mapping[str, Any], split: int = 0) -> dict[str, float]:
    """A minimal PyTorch loop: same network, tensors, Adam, batches and validation per epoch."""
    import torch
    from snakemaps import io
    from snakemaps.data.dataset import CachedImages
    from snakemaps.models.network import build_network
    from snakemaps.split import split_frame
    from torch import nn

    torch.set_num_threads(1)
    model = io.read_json(maps / "model.json")
    train_data = CachedImages(split_frame(maps, split, "train"), model["classes"])
    val_data = CachedImages(split_frame(maps, split, "validation"), model["classes"])
    layout = torch.channels_last_3d if train["channels_last"] else torch.contiguous_format
    torch.manual_seed(train["seed"] + split)
    network = build_network(model["network"]).to(memory_format=layout)
    optimizer = torch.optim.Adam(
        network.parameters(), lr=train["learning_rate"], weight_decay=train["weight_decay"]
    )
    generator = torch.Generator().manual_seed(train["seed"] + split)
    batch_size, n = train["batch_size"], len(train_data)
    x_train, y_train = train_data.images, train_data.labels
    x_val, y_val = val_data.images, val_data.labels

    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(train["epochs"]):
        network.train()
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            images = x_train[idx].to(memory_format=layout)
            loss = nn.functional.cross_entropy(network(images), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
        network.eval()
        with torch.inference_mode():
            for i in range(0, len(val_data), batch_size):
                logits = network(x_val[i : i + batch_size].to(memory_format=layout))
                nn.functional.cross_entropy(logits, y_val[i : i + batch_size])
                torch.softmax(logits, dim=1)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    samples = n * train["epochs"]
    return {
        "fit_s": seconds,
        "samples_per_s": samples / seconds,
        "fit_cpu_s": cpu,
        "samples_per_cpu_s": samples / cpu,
        "samples": samples,
    }


# ---------------------------------------------------------------------- benchmarks


def trainer_benchmarks(
    work: Path, cohort: Mapping[str, Path], epochs: int, pairs: int, log: Any
) -> list[Result]:
    """trainer_vs_plain_loop, checkpoint_cost and data_loading_share, side by side."""
    config = prepare_maps(work, cohort, epochs)
    maps = work / "maps"
    train = dict(config["train"])
    probe = Probe()

    log(f"  warm-up (1 epoch each; imports, allocator) [load {load_avg()}]")
    run_trainer(maps, {**train, "epochs": 1}, probe)
    run_plain(maps, {**train, "epochs": 1})

    trainer_rows, plain_rows = [], []
    for i in range(pairs):  # A B, B A, A B, ...: neither side always runs first
        if i % 2 == 0:
            trainer_rows.append(run_trainer(maps, train, probe))
            plain_rows.append(run_plain(maps, train))
        else:
            plain_rows.append(run_plain(maps, train))
            trainer_rows.append(run_trainer(maps, train, probe))
        log(
            f"  pair {i + 1}/{pairs}: trainer {trainer_rows[-1]['samples_per_s']:.1f} samples/s, "
            f"plain {plain_rows[-1]['samples_per_s']:.1f} samples/s [load {load_avg()}]"
        )
    trainer_sps = median([r["samples_per_s"] for r in trainer_rows])
    plain_sps = median([r["samples_per_s"] for r in plain_rows])
    # The paired design: the ratio is the median of each pair's ratio (the two medians of
    # samples/s can come from different pairs when the machine's load changes).
    per_pair = [
        t["samples_per_s"] / p["samples_per_s"]
        for t, p in zip(trainer_rows, plain_rows, strict=True)
    ]
    ratio = median(per_pair)
    cpu_ratio = median(
        [
            t["samples_per_cpu_s"] / p["samples_per_cpu_s"]
            for t, p in zip(trainer_rows, plain_rows, strict=True)
        ]
    )
    fit_total = sum(r["fit_s"] for r in trainer_rows)
    fsync_ck_total = sum(r["fsync_checkpoint_s"] for r in trainer_rows)
    extra = {
        "precise BN": sum(r["tsv_bn_recalibration_s"] for r in trainer_rows) / fit_total,
        "checkpoints": sum(r["checkpoint_s"] + r["checkpoint_wait_s"] for r in trainer_rows)
        / fit_total,
        "other fsync": (sum(r["fsync_s"] for r in trainer_rows) - fsync_ck_total) / fit_total,
        "metrics": sum(r["tsv_metric_s"] for r in trainer_rows) / fit_total,
    }
    shown = ", ".join(f"{k} {100 * v:.0f}%" for k, v in extra.items() if v > 0)
    results = [
        Result(
            "trainer_vs_plain_loop",
            ratio,
            ">= 0.97",
            ratio >= 0.97,
            "x",
            f"median of per-pair ratios; trainer {trainer_sps:.1f} vs plain {plain_sps:.1f} "
            f"samples/s (per pair "
            f"{', '.join(f'{r:.2f}' for r in per_pair)}; CPU-time ratio {cpu_ratio:.2f}); "
            f"{epochs} epochs x {pairs} pairs, 1 thread; of the trainer's fit time: {shown}",
            {
                "epochs": epochs,
                "pairs": pairs,
                "batch_size": train["batch_size"],
                "channels_last": train["channels_last"],
                "per_pair_ratio": per_pair,
                "share_of_fit_time": extra,
                "cpu_time_ratio": cpu_ratio,
                "trainer": trainer_rows,
                "plain": plain_rows,
            },
            load_avg(),
        )
    ]

    # Checkpoint cost: the same Trainer runs, write_checkpoint timed from outside, plus
    # the time training waits for a checkpoint's background publishing (finish_checkpoint).
    taken = sum(r["checkpoint_s"] for r in trainer_rows)
    waited = sum(r["checkpoint_wait_s"] for r in trainer_rows)
    checkpoint = taken + waited
    fit = sum(r["fit_s"] for r in trainer_rows)
    n_checkpoints = sum(r["n_checkpoints"] for r in trainer_rows)
    fsync_ck = sum(r["fsync_checkpoint_s"] for r in trainer_rows)
    n_fsync_ck = sum(r["n_fsync_checkpoint"] for r in trainer_rows)
    tsv_checkpoint = [r["tsv_checkpoint_s"] for r in trainer_rows]
    share = checkpoint / fit
    results.append(
        Result(
            "checkpoint_cost",
            share,
            "< 0.02",
            share < 0.02,
            "share",
            f"{1000 * checkpoint / n_checkpoints:.1f} ms per checkpoint in the training "
            f"thread ({1000 * taken / n_checkpoints:.1f} taking it + "
            f"{1000 * waited / n_checkpoints:.1f} waiting for the previous one), epoch "
            f"{fit / sum(r['epochs'] for r in trainer_rows):.2f} s; the background thread "
            f"ran {n_fsync_ck // max(n_checkpoints, 1)} fsyncs per checkpoint "
            f"({1000 * fsync_ck / n_checkpoints:.0f} ms); "
            f"computational.tsv says {sum(tsv_checkpoint):.3f} s",
            {
                "checkpoint_s": checkpoint,
                "checkpoint_taken_s": taken,
                "checkpoint_wait_s": waited,
                "fit_s": fit,
                "n_checkpoints": n_checkpoints,
                "ms_per_checkpoint": 1000 * checkpoint / n_checkpoints,
                "fsync_in_checkpoint_s": fsync_ck,
                "fsync_per_checkpoint": n_fsync_ck / max(n_checkpoints, 1),
                "fsync_outside_checkpoint_s": sum(r["fsync_s"] for r in trainer_rows) - fsync_ck,
                "tsv_checkpoint_s": tsv_checkpoint,
                "tsv_epoch_s": [r["tsv_epoch_s"] for r in trainer_rows],
                "tsv_epoch_column_holds_seconds": trainer_rows[0]["tsv_epoch_column_holds_seconds"],
            },
            load_avg(),
        )
    )

    # Data loading: the same Trainer reading NIfTI files every epoch.
    nifti_epochs = max(2, epochs // 2)
    with nifti_dataset():
        nifti = run_trainer(maps, {**train, "epochs": nifti_epochs}, probe)
    cache_share = median([r["data_wait_s"] / r["fit_s"] for r in trainer_rows])
    nifti_share = nifti["data_wait_s"] / nifti["fit_s"]
    cache_epoch = median([r["fit_s"] / r["epochs"] for r in trainer_rows])
    nifti_epoch = nifti["fit_s"] / nifti["epochs"]
    log(f"  NIfTI each epoch: {nifti['samples_per_s']:.1f} samples/s [load {load_avg()}]")
    results.append(
        Result(
            "data_loading_share",
            cache_share,
            "(cache < NIfTI)",
            cache_share < nifti_share,
            "share",
            f"waiting for data: cache {100 * cache_share:.1f}% vs NIfTI decoding "
            f"{100 * nifti_share:.1f}% of epoch time; epoch {cache_epoch:.2f} s vs "
            f"{nifti_epoch:.2f} s (x{nifti_epoch / cache_epoch:.2f})",
            {
                "cache_share": cache_share,
                "nifti_share": nifti_share,
                "cache_epoch_s": cache_epoch,
                "nifti_epoch_s": nifti_epoch,
                "nifti_epochs": nifti_epochs,
                "cache_tsv_batch_loading_share": median(
                    [r["tsv_batch_loading_s"] / r["tsv_epoch_s"] for r in trainer_rows]
                ),
                "nifti_tsv_batch_loading_share": nifti["tsv_batch_loading_s"]
                / nifti["tsv_epoch_s"],
                "nifti": nifti,
            },
            load_avg(),
        )
    )
    results += job_startup(work, train, log)
    return results


def job_startup(work: Path, train: Mapping[str, Any], log: Any) -> list[Result]:
    """A fresh process replaying the train adapter up to the first epoch, phase by phase,
    and a fresh ``import torch`` right before it (the floor: the same caches, the same load)."""
    import json
    import subprocess
    import sys

    path = work / "train.json"
    path.write_text(json.dumps(dict(train)))
    script = Path(__file__).with_name("job_startup.py")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    torch_wall = time.perf_counter() - start
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(script), str(work / "maps"), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"job_startup.py failed:\n{done.stderr[-3000:]}")
    phases = json.loads(done.stdout.strip().splitlines()[-1])
    phases["process_wall_s"] = wall
    shown = ", ".join(
        f"{k.removesuffix('_s')} {v:.2f}" for k, v in phases.items() if k.endswith("_s")
    )
    log(f"  train job start-up: {shown}; import torch alone {torch_wall:.2f} s [load {load_avg()}]")
    phases["import_torch_alone_s"] = torch_wall
    versus = Result(
        "startup_train_job_vs_import_torch",
        phases["total_s"] / phases["import_torch_s"],
        "(info; floor 1)",
        None,
        "x",
        "inside one fresh process, from its first line to Trainer.fit {total_s:.2f} s vs its "
        "import torch {import_torch_s:.2f} s; the rest: torch._dynamo, imported by the first "
        "optimizer {first_optimizer_dynamo_s:.2f} s, the package "
        "{adapter_imports_s:.2f} + {import_metrics_sklearn_s:.2f} + {import_trainer_s:.2f} s, "
        "the data and network {train_split_setup_s:.2f} s. A separate `python -c 'import "
        "torch'` (start and exit included) took {torch_wall:.2f} s".format(
            torch_wall=torch_wall, **phases
        ),
        phases,
        load_avg(),
    )
    return [
        Result(
            "startup_train_job_to_first_epoch",
            wall,
            "(info)",
            None,
            "s",
            "fresh process: torch {import_torch_s:.1f} + metrics/pandas {import_metrics_sklearn_s:.1f} + "
            "first optimizer/dynamo {first_optimizer_dynamo_s:.1f} + train_split setup "
            "{train_split_setup_s:.1f} s".format(**phases),
            phases,
            load_avg(),
        ),
        versus,
    ]


def gpu_benchmark(work: Path, cohort: Mapping[str, Path], steps: int, log: Any) -> Result:
    """AMP + channels_last_3d + pinned memory + non_blocking vs a plain fp32 loop (CUDA only)."""
    import torch

    if not torch.cuda.is_available():
        return Result("gpu_amp_channels_last_vs_fp32", None, ">= 1.0", None, "x", "no GPU: skipped")
    from snakemaps import io
    from snakemaps.data.dataset import CachedImages
    from snakemaps.models.network import build_network
    from snakemaps.split import split_frame
    from torch import nn

    maps = work / "maps"
    if not (maps / "model.json").exists():
        prepare_maps(work, cohort, 1)
    model = io.read_json(maps / "model.json")
    data = CachedImages(split_frame(maps, 0, "train"), model["classes"])
    device = torch.device("cuda")
    batch_size = 8

    def run(fast: bool) -> float:
        torch.manual_seed(0)
        layout = torch.channels_last_3d if fast else torch.contiguous_format
        network = build_network(model["network"]).to(device, memory_format=layout)
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=fast and dtype == torch.float16)
        images, labels, n = data.images, data.labels, len(data)
        seen = 0
        for step in range(steps + 5):
            if step == 5:  # warm-up done (cuDNN autotuning, allocator)
                torch.cuda.synchronize()
                start, seen = time.perf_counter(), 0
            idx = torch.randint(0, n, (batch_size,))
            x = images[idx]
            y = labels[idx]
            if fast:  # pin each batch: indexing a pinned tensor would give a pageable one
                x = x.pin_memory().to(device, non_blocking=True, memory_format=layout)
                y = y.pin_memory().to(device, non_blocking=True)
            else:
                x, y = x.to(device), y.to(device)
            with torch.autocast("cuda", dtype=dtype, enabled=fast):
                loss = nn.functional.cross_entropy(network(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += batch_size
        torch.cuda.synchronize()
        return seen / (time.perf_counter() - start)

    torch.backends.cudnn.benchmark = True
    plain, fast = [], []
    for _ in range(3):
        plain.append(run(False))
        fast.append(run(True))
    ratio = median(fast) / median(plain)
    name = torch.cuda.get_device_name(0)
    log(f"  GPU {name}: fast {median(fast):.0f} vs fp32 {median(plain):.0f} samples/s")
    return Result(
        "gpu_amp_channels_last_vs_fp32",
        ratio,
        ">= 1.0",
        ratio >= 1.0,
        "x",
        f"{name}: {median(fast):.0f} vs {median(plain):.0f} samples/s",
        {"gpu": name, "fast": fast, "plain": plain, "steps": steps, "batch_size": batch_size},
        load_avg(),
    )


# ---------------------------------------------------------------------- ablation


def _numpy_metrics(names: Any, labels: Any, probs: Any, losses: Any) -> dict[str, float]:
    """A stand-in for metrics.compute without scikit-learn (what a NumPy version would cost)."""
    import numpy as np

    predictions = probs.argmax(axis=1)
    n = probs.shape[1]
    confusion = np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n)
    recall = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
    values = {
        "loss": float(losses.mean()),
        "Accuracy": float(np.trace(confusion) / confusion.sum()),
        "BalancedAccuracy": float(recall.mean()),
        "Sensitivity": float(recall[-1]),
        "Specificity": float(recall[0]),
        "RocAuc": float((probs[labels == 1, 1][:, None] > probs[labels == 0, 1][None]).mean()),
        "F1": float(
            2 * confusion[1, 1] / max(2 * confusion[1, 1] + confusion[0, 1] + confusion[1, 0], 1)
        ),
    }
    return {name: values.get(name, float("nan")) for name in names}


# Cumulative: each variant switches off one more part of the trainer's machinery.
ABLATIONS = {
    "no_precise_bn": "train.bn_recalibration_batches: 0 (no BatchNorm recalibration pass)",
    "no_precise_bn_checkpoint": "... and no resume checkpoint",
    "no_precise_bn_checkpoint_fsync": "... and every os.fsync a no-op",
    "no_precise_bn_checkpoint_fsync_sklearn": "... and NumPy metrics instead of scikit-learn",
}


@contextlib.contextmanager
def ablated(variant: str) -> Iterator[None]:
    """Switch off parts of the trainer's machinery from outside (what-if for proposed fixes)."""
    from snakemaps.train import callbacks, metrics

    saved = (callbacks.ResumeCheckpoint.on_epoch_end, os.fsync, metrics.compute)
    if "checkpoint" in variant:
        callbacks.ResumeCheckpoint.on_epoch_end = lambda self, trainer, **_: None
    if "fsync" in variant:
        os.fsync = lambda fd: None
    if "sklearn" in variant:
        metrics.compute = _numpy_metrics
    try:
        yield
    finally:
        callbacks.ResumeCheckpoint.on_epoch_end, os.fsync, metrics.compute = saved


def trainer_ablation(
    work: Path, cohort: Mapping[str, Path], epochs: int, pairs: int, log: Any
) -> list[Result]:
    """trainer_vs_plain_loop with parts of the machinery switched off, each side by side."""
    config = prepare_maps(work, cohort, epochs)
    maps, train, probe = work / "maps", dict(config["train"]), Probe()
    run_trainer(maps, {**train, "epochs": 1}, probe)
    run_plain(maps, {**train, "epochs": 1})
    results = []
    for variant, description in ABLATIONS.items():
        settings = dict(train)
        if "bn_recalibration_batches" in settings:
            settings["bn_recalibration_batches"] = 0
        ratios = []
        for i in range(pairs):
            plain_first = i % 2 == 1
            if plain_first:
                plain = run_plain(maps, train)
            with ablated(variant):
                trainer = run_trainer(maps, settings, probe)
            if not plain_first:
                plain = run_plain(maps, train)
            ratios.append(trainer["samples_per_s"] / plain["samples_per_s"])
        log(f"  {variant}: {', '.join(f'{r:.2f}' for r in ratios)} [load {load_avg()}]")
        results.append(
            Result(
                f"trainer_vs_plain_loop[{variant}]",
                median(ratios),
                "(info)",
                None,
                "x",
                f"{description}; per pair {', '.join(f'{r:.2f}' for r in ratios)}",
                {"ratios": ratios, "epochs": epochs},
                load_avg(),
            )
        )
    return results
