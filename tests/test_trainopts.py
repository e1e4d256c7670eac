"""Augmentation, weighted sampler and evaluation steps, without Snakemake."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_snakemake
from snakemaps.data.augmentation import TRANSFORMS, Augmentation, check_names, describe
from snakemaps.data.sampler import Sampler, class_weights, regression_weights, sampling_weights
from snakemaps.errors import UserError
from snakemaps.search.sampling import sample_options, to_config_overrides
from snakemaps.train.distributed import SINGLE
from snakemaps.train.evaluation import Batches
from snakemaps.train.options import (
    check_evaluation_steps,
    check_train_options,
    mid_epoch_validation,
)


# ClinicaDL 1.6.1's weights, as its generate_sampler computes them (task_manager/*.py).
def clinicadl_class_weights(labels, label_code, elem_per_image=1):
    count = np.zeros(len(set(label_code.values())))
    for label in labels:
        count[label_code[label]] += 1
    weight_per_class = 1 / np.array(count)
    weights = []
    for label in labels:
        weights += [weight_per_class[label_code[label]]] * elem_per_image
    return weights


def clinicadl_regression_weights(values, n_bins=5):
    values = np.asarray(values, dtype=float)
    count = np.zeros(n_bins)
    thresholds = [min(values) + i * (max(values) - min(values)) / n_bins for i in range(n_bins)]
    for label in values:
        key = max(np.where(label >= np.array(thresholds))[0])
        count[[key]] += 1
    weight_per_class = 1 / np.array(count)
    return [weight_per_class[max(np.where(label >= np.array(thresholds))[0])] for label in values]


def test_weights_are_clinicadls():
    labels = ["AD"] * 7 + ["CN"] * 3 + ["AD", "CN"]
    expected = clinicadl_class_weights(labels, {"AD": 0, "CN": 1})
    assert class_weights(labels).tolist() == pytest.approx(expected)
    ages = np.random.default_rng(0).normal(70, 8, 50).tolist()
    assert regression_weights(ages).tolist() == pytest.approx(clinicadl_regression_weights(ages))
    with pytest.raises(UserError, match="classification and regression"):
        sampling_weights(labels, "reconstruction")


def test_weighted_order_is_torchs_weighted_random_sampler_and_balances():
    labels = [0] * 90 + [1] * 10
    weights = class_weights(labels)
    sampler = Sampler("weighted", len(labels), SINGLE, seed=0, weights=weights)
    order = sampler.order(0, torch.Generator().manual_seed(5))
    reference = torch.utils.data.WeightedRandomSampler(
        weights.tolist(), len(labels), generator=torch.Generator().manual_seed(5)
    )
    assert order == list(reference)
    draws = [labels[i] for _ in range(20) for i in sampler.order(0, torch.Generator())]
    assert abs(np.mean(draws) - 0.5) < 0.05


def test_unknown_augmentation_names_the_known_ones():
    with pytest.raises(UserError) as error:
        check_names(["Noise", "Flip"])
    message = str(error.value)
    assert "train.data_augmentation" in message and "'Flip'" in message
    assert all(name in message for name in TRANSFORMS)
    assert [d["name"] for d in describe(["Motion", "Noise"])] == ["Motion", "Noise"]
    assert describe(["Motion"])[0]["class"] == "torchio.RandomMotion"


@pytest.mark.parametrize(
    "train, fragments",
    [
        (
            {"data_augmentation": ["Flip"]},
            ["data_augmentation", "'Flip' is not one of", "RandomSwap"],
        ),
        (
            {"evaluation_steps": 3, "accumulation_steps": 2},
            ["train.evaluation_steps = 3 is not a multiple of train.accumulation_steps = 2"],
        ),
    ],
)
def test_bad_training_options_in_the_config_stop_before_any_job(tmp_path, train, fragments):
    result = run_snakemake(tmp_path, "-n", config={"train": train})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert all(fragment in output for fragment in fragments), output[-2000:]
    assert not (tmp_path / "results").exists()


def test_train_option_combinations_refused():
    with pytest.raises(UserError, match="multiple of train.accumulation_steps"):
        check_train_options({"evaluation_steps": 3, "accumulation_steps": 2}, "classification")
    with pytest.raises(UserError, match="weighted"):
        check_train_options({"sampler": "weighted"}, "reconstruction")
    with pytest.raises(UserError, match="adds no validation"):
        check_evaluation_steps(5, 4, 1)
    check_evaluation_steps(4, 4, 2)  # validates the last batch of epochs not validated at the end
    check_train_options({"evaluation_steps": 4, "accumulation_steps": 2}, "regression")


def test_mid_epoch_validations_follow_clinicadls_rule():
    due = [d for d in range(1, 8) if mid_epoch_validation(3, d, 7, validate_at_end=True)]
    assert due == [3, 6]
    assert not mid_epoch_validation(0, 3, 7, True)
    assert not mid_epoch_validation(7, 7, 7, True)  # the epoch-end validation runs there
    assert mid_epoch_validation(7, 7, 7, False)  # an epoch evaluation_interval skips


@pytest.mark.parametrize("shape", [(2, 1, 10, 12, 8), (2, 1, 14, 12)])
def test_augmentation_is_deterministic_and_leaves_global_random_state(shape):
    images = torch.randn(shape)
    augment = Augmentation(list(TRANSFORMS), seed=4)
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    before = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    first = augment(images, 2, [0, 1])
    assert (torch.rand(1), random.random(), np.random.rand()) == before
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, augment(images, 2, [0, 1]))
    assert not torch.equal(first, images)
    assert not torch.equal(first[0], augment(images, 3, [0, 1])[0])  # another epoch
    # A sample's draw depends on its place, not on the batch it comes in.
    assert torch.equal(first[1], augment(images[1:], 2, [1])[0])
    assert not torch.equal(Augmentation(["Noise"], seed=5)(images, 2, [0, 1]), first)


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.images = torch.randn(n, 1, 10, 10, 10)
        self.labels = torch.arange(n) % 2
        self.frame = pd.DataFrame({"i": range(n)})

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index], index


def test_batches_augment_training_only_and_the_same_with_workers():
    data = Images(10)
    augment = Augmentation(["Noise", "CropPad"], seed=0)
    device = torch.device("cpu")
    plan = [[3, 1, 4], [0, 5, 9], [2, 6, 8], [7]]
    inline = Batches(data, 3, device, augment=augment)
    workers = Batches(data, 3, device, num_workers=2, augment=augment)
    a = [x for x, _, _ in inline.iterate(plan, epoch=1)]
    b = [x for x, _, _ in workers.iterate(plan, epoch=1)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # Resumed at the third batch: the same draws.
    c = [x for x, _, _ in inline.iterate(plan[2:], epoch=1, first=2)]
    assert all(torch.equal(x, y) for x, y in zip(a[2:], c, strict=True))
    raw = [x for x, _, _ in inline.iterate(plan)]  # no epoch: BN recalibration, plain
    assert torch.equal(raw[0], data.images[[3, 1, 4]])
    assert not torch.equal(a[0], raw[0])


def test_random_search_maps_the_three_keys():
    space = {
        "epochs": 2,
        "n_convblocks": 2,
        "first_conv_width": 4,
        "n_fcblocks": 1,
        "accumulation_steps": 2,
        "evaluation_steps": 5,
        "sampler": ["weighted"],
        "data_augmentation": ["None", "Noise", "Motion"],
    }
    options = sample_options(space, 0)
    assert options["evaluation_steps"] == 4  # a multiple of accumulation_steps
    train = to_config_overrides(options)["train"]
    assert train["sampler"] == "weighted" and train["evaluation_steps"] == 4
    assert train["data_augmentation"] == ["Noise", "Motion"]
    off = to_config_overrides(sample_options({**space, "data_augmentation": False}, 0))
    assert off["train"]["data_augmentation"] == []
    with pytest.raises(UserError, match="random_search.json data_augmentation"):
        to_config_overrides(sample_options({**space, "data_augmentation": ["Zoom"]}, 0))


def test_a_multicnn_part_index_channel_is_not_augmented():
    """multicnn routes each sample by its last channel (the part index): augmentation keeps it."""
    images = torch.rand(3, 2, 12, 12, 12)
    images[:, -1] = torch.tensor([0.0, 1.0, 2.0])[:, None, None, None]
    names = ["Noise", "CropPad", "Smoothing"]
    kept = Augmentation(names, seed=0, keep_last_channel=True)(images, 1, [0, 1, 2])
    assert torch.equal(kept[:, -1], images[:, -1])
    assert not torch.equal(kept[:, :-1], images[:, :-1])
    # The image channels get the same draw as an image without the index channel.
    alone = Augmentation(names, seed=0)(images[:, :-1].contiguous(), 1, [0, 1, 2])
    assert torch.equal(kept[:, :-1], alone)
    changed = Augmentation(names, seed=0)(images, 1, [0, 1, 2])
    assert not torch.equal(changed[:, -1], images[:, -1])
