"""Real snakemake runs with train.data_augmentation, train.sampler: weighted, train.evaluation_steps.

One imbalanced table (3 AD for 1 CN), one split trained with all three on:
the augmented run is compared with a raw one, the validation rows with the
validate step's predictions of the same weights, the draws with the table's
imbalance, and a run killed mid-epoch with the unbroken one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
from conftest import run_snakemake, snakemake_command, write_table
from test_resume import frames, weights

from benchmarks.common import job_pids

pytestmark = pytest.mark.workflow

TARGET = "results/maps/training/split-0/models/final/model.pt"
BATCH = 4
EPOCHS = 3
STEPS = 2
AUGMENTATION = ["Noise", "CropPad", "RandomBlur"]
# 12 AD and 4 CN participants, 2 sessions each.
PARTICIPANTS = [(f"sub-AD{i:02d}", "AD", 2) for i in range(12)] + [
    (f"sub-CN{i:02d}", "CN", 2) for i in range(4)
]


def config(table, **train) -> dict:
    return {
        "data": {"tsv": str(table)},
        "split": {"n_splits": 2},
        "train": {
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "deterministic": True,
            "save_epochs": [2],
            "data_augmentation": AUGMENTATION,
            "sampler": "weighted",
            "evaluation_steps": STEPS,
            **train,
        },
    }


def split_dir(workdir):
    return workdir / "results/maps/training/split-0"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("table")
    return write_table(folder, PARTICIPANTS, shape=(16, 16, 16))


@pytest.fixture(scope="module")
def prepared(table, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("prepared")
    manifest = "results/maps/training/data/split_manifest.json"
    result = run_snakemake(workdir, manifest, config=config(table))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def unbroken(prepared, table, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("unbroken")
    shutil.copytree(prepared, workdir, symlinks=True, dirs_exist_ok=True)
    result = run_snakemake(workdir, TARGET, config=config(table))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def n_batches(workdir) -> int:
    rows = pd.read_csv(split_dir(workdir).parent / "data/train/split-0/data.tsv", sep="\t")
    return math.ceil(len(rows) / BATCH)


def test_augmented_batches_differ_from_raw_ones(prepared, unbroken, table, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(prepared, raw, symlinks=True)
    settings = config(table, epochs=1, data_augmentation=[])
    # Only the training differs: the split (whose params hold the train section) is kept.
    result = run_snakemake(raw, TARGET, "--rerun-triggers", "mtime", config=settings)
    assert result.returncode == 0, result.stderr[-3000:]
    # Same initial weights and the same first batch (the sampler's draw does not depend
    # on augmentation): the first loss differs only by the augmentation of its images.
    logs = "logs/training_loss.tsv"
    augmented = pd.read_csv(split_dir(unbroken) / logs, sep="\t")
    plain = pd.read_csv(split_dir(raw) / logs, sep="\t")
    assert augmented.loc[0, "loss"] != plain.loc[0, "loss"]
    dataset = json.loads(
        (split_dir(unbroken).parent / "data/train/split-0/dataset.json").read_text()
    )
    assert [a["name"] for a in dataset["transforms"]["augmentations"]] == AUGMENTATION
    validation = split_dir(unbroken).parent / "data/validation/split-0/dataset.json"
    assert json.loads(validation.read_text())["transforms"]["augmentations"] == []


def test_validation_batches_are_not_augmented(unbroken):
    """Training's validation of the best-loss weights = the validate step's plain predictions."""
    from snakemaps.evaluate import _evaluate
    from snakemaps.maps import Maps
    from snakemaps.split import split_frame

    split = split_dir(unbroken)
    maps = unbroken / "results/maps"
    frame = split_frame(maps, 0, "validation")
    _, evaluated, _ = _evaluate(
        Maps(maps), 0, "best-loss", frame, "cpu", BATCH, 1, "validate", "validation"
    )
    aggregated = pd.read_csv(split / "validation_metrics/aggregated.tsv", sep="\t")
    details = pd.read_csv(split / "validation_metrics/details.tsv", sep="\t")
    best = aggregated.loc[aggregated["loss"].idxmin()]
    during = details[(details.epoch == best.epoch) & (details.batch == best.batch)]
    assert len(during) == len(evaluated) > 0
    for column in ("probaAD", "probaCN", "loss"):
        pd.testing.assert_series_equal(
            during[column].reset_index(drop=True),
            evaluated[column].reset_index(drop=True),
            rtol=1e-5,
            check_names=False,
            check_dtype=False,
        )


def test_weighted_sampler_draws_both_classes_about_equally(unbroken):
    split = split_dir(unbroken)
    drawn = pd.read_csv(split / "logs/sampling.tsv", sep="\t")
    table = pd.read_csv(split.parent / "data/train/split-0/data.tsv", sep="\t")
    share = (table["label"] == "AD").mean()
    assert share >= 0.7  # the table is imbalanced ...
    assert set(drawn["AD"] + drawn["CN"]) == {len(table)}
    drawn_share = drawn["AD"].sum() / (drawn["AD"].sum() + drawn["CN"].sum())
    assert abs(drawn_share - 0.5) < 0.1, drawn  # ... the draws are not
    weights = table.groupby("label")["sampling_weight"].first()
    counts = table["label"].value_counts()
    assert dict(weights) == pytest.approx({k: 1 / v for k, v in counts.items()})
    loader = json.loads((split.parent / "data/train/split-0/dataloader.json").read_text())
    assert loader["sampling_weights"] == "sampling_weight"


def test_validation_happens_at_the_steps_asked_for(unbroken):
    split = split_dir(unbroken)
    rows = pd.read_csv(split / "validation_metrics/aggregated.tsv", sep="\t")
    n = n_batches(unbroken)
    inside = [b - 1 for b in range(STEPS, n, STEPS)]
    expected = [(e, b) for e in range(1, EPOCHS + 1) for b in [*inside, n - 1]]
    assert list(zip(rows.epoch, rows.batch)) == expected
    details = pd.read_csv(split / "validation_metrics/details.tsv", sep="\t")
    assert sorted(set(zip(details.epoch, details.batch))) == expected
    # The first validation, inside epoch 1, can give best models.
    log = (unbroken / "logs/results/maps/train_split-0.log").read_text()
    assert f"at epoch 1, batch {STEPS - 1}" in log


def test_killed_run_with_all_three_resumes_bit_identical(prepared, unbroken, table, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken, symlinks=True)
    settings = config(table)
    tmp = split_dir(broken) / "tmp"
    process = subprocess.Popen(
        snakemake_command(broken, TARGET, config=settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (tmp / "epoch-1").exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no epoch-1 checkpoint in time"
        time.sleep(0.02)
    time.sleep(0.1)  # into epoch 2
    for pid in job_pids(broken, "train.py"):
        os.kill(pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0, output[-3000:]
    result = run_snakemake(broken, TARGET, "--rerun-incomplete", config=settings)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (broken / "logs/results/maps/train_split-0.log").read_text()
    assert "resumed at epoch" in log
    models = ["final", "best_models/best-loss", "best_models/best-BalancedAccuracy"]
    for model in [*models, "checkpoints/epoch-2"]:
        a, b = (weights(split_dir(w) / f"models/{model}/model.pt") for w in (broken, unbroken))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{model} differs after resume"
    resumed, reference = frames(broken / "results/maps"), frames(unbroken / "results/maps")
    for name in reference:
        if name != "logs/computational.tsv":  # timings differ
            pd.testing.assert_frame_equal(resumed[name], reference[name], obj=name)
    pd.testing.assert_frame_equal(
        pd.read_csv(split_dir(broken) / "logs/sampling.tsv", sep="\t"),
        pd.read_csv(split_dir(unbroken) / "logs/sampling.tsv", sep="\t"),
    )
