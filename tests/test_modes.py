"""Modes without snakemake: cutting as ClinicaDL defines it, soft voting, 2D and multi networks."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from snakemaps.data.extraction import HIPPOCAMPUS_BOXES, check_config, from_config
from snakemaps.data.subsamples import SubSamples
from snakemaps.errors import UserError
from snakemaps.evaluate.voting import image_level, part_weights, soft_vote
from snakemaps.models.description import resolve_description
from snakemaps.models.network import build_network
from snakemaps.search.sampling import sample_options, to_config_overrides

SHAPE = [1, 24, 28, 20]


def volume(shape=SHAPE) -> torch.Tensor:
    return torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)


# Cutting --------------------------------------------------------------------------------


def test_patches_are_clinicadl_unfold_patches_in_c_order():
    extraction = from_config({"mode": "patch", "patch_size": 10, "stride_size": 7}, SHAPE)
    # n_d = floor((D - L) / S) + 1 per axis
    assert extraction.grid == (3, 3, 2) and extraction.n_parts == 18
    image = volume()
    # clinicadl 1.6.1 extract_patch_tensor: unfold x, y, z then view(-1, L, L, L)
    reference = (
        image.unfold(1, 10, 7).unfold(2, 10, 7).unfold(3, 10, 7).contiguous().view(-1, 10, 10, 10)
    )
    for k in range(extraction.n_parts):
        assert torch.equal(extraction.cut(image, k)[0], reference[k])
    # patch (ix, iy, iz) = (1, 2, 0) is flat index (1 * 3 + 2) * 2 + 0 and starts at (7, 14, 0)
    assert extraction.cut(image, 10)[0, 0, 0, 0] == image[0, 7, 14, 0]
    assert extraction.part_ids() == list(range(18))
    cropped_t1 = from_config({"mode": "patch"}, [1, 169, 208, 179])
    assert cropped_t1.n_parts == 36  # ClinicaDL's 3 x 4 x 3 with the 50/50 defaults


@pytest.mark.parametrize("direction", [0, 1, 2])
def test_slices_are_clinicadl_slices_with_their_positions(direction):
    data = {"mode": "slice", "slice_direction": direction, "discarded_slices": [3, 2]}
    extraction = from_config(data, SHAPE)
    length = SHAPE[1 + direction]
    assert extraction.n_parts == length - 5
    assert extraction.part_ids() == list(range(3, length - 2))  # slice_id: true position
    image = volume()
    for k, position in enumerate(extraction.part_ids()):
        index = tuple(
            [slice(None)] * (direction + 1) + [position] + [slice(None)] * (2 - direction)
        )
        single = image[index]  # clinicadl extract_slice_tensor, shape 1 x W x L
        assert torch.equal(extraction.cut(image, k), torch.cat([single] * 3))  # rgb
    single_mode = from_config({**data, "slice_mode": "single"}, SHAPE)
    assert single_mode.part_shape == (1, *[s for i, s in enumerate(SHAPE[1:]) if i != direction])
    assert extraction.part_shape[0] == 3 and extraction.dimension == 2


def test_one_discarded_number_is_used_at_both_ends():
    assert from_config({"mode": "slice", "discarded_slices": 4}, SHAPE).part_ids()[0] == 4
    assert from_config({"mode": "slice", "discarded_slices": [4]}, SHAPE).n_parts == 16


def test_roi_is_the_masked_image_cropped_to_the_mask_box(tmp_path):
    mask = np.zeros(SHAPE[1:], dtype=np.float32)
    mask[3:9, 10:14, 5:7] = 1
    mask[4, 11, 5] = 0
    np.save(tmp_path / "mask.npy", mask)
    data = {"mode": "roi", "roi_masks": {"left": str(tmp_path / "mask.npy")}}
    extraction = from_config(data, SHAPE)
    assert extraction.part_shape == (1, 6, 4, 2)
    frame = pd.DataFrame({"participant_id": ["sub-1"], "session_id": ["ses-M000"]})
    images = _Images(frame, volume()[None])
    parts = SubSamples(images, extraction)
    # clinicadl extract_roi_tensor: image * mask, then np.ix_ over the mask's extent
    expected = (volume() * torch.from_numpy(mask))[:, 3:9, 10:14, 5:7]
    assert torch.equal(parts.batch([0])[0][0], expected)
    assert list(parts.frame["roi_id"]) == [0]


def test_default_roi_boxes_sit_on_the_hippocampi_in_mni_space():
    # A 2 mm grid whose voxel (40, 50, 30) is MNI (0, 0, 0).
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-80.0, -100.0, -60.0]
    extraction = from_config({"mode": "roi"}, [1, 80, 100, 70], affine.tolist())
    assert [r.name for r in extraction.regions] == list(HIPPOCAMPUS_BOXES)
    right, left = extraction.regions
    # 25 voxels = 50 mm centred on voxel (52.5, 40, 22.5) = MNI (+25, -20, -15)
    assert right.box == ((40, 65), (28, 53), (10, 35))
    assert left.box[0] == (15, 40) and left.box[1:] == right.box[1:]
    assert extraction.part_shape == (1, 25, 25, 25)
    with pytest.raises(UserError, match="no affine"):
        from_config({"mode": "roi"}, [1, 80, 100, 70], None)


def test_parts_are_cut_per_batch_from_the_images_held_once():
    frame = pd.DataFrame(
        {"participant_id": ["sub-1", "sub-2"], "session_id": ["ses-M000", "ses-M000"]}
    )
    held = torch.stack([volume(), -volume()])
    extraction = from_config({"mode": "patch", "patch_size": 10, "stride_size": 10}, SHAPE)
    parts = SubSamples(_Images(frame, held), extraction)
    assert len(parts) == 2 * extraction.n_parts
    assert list(parts.frame["participant_id"][:2]) == ["sub-1", "sub-1"]
    assert list(parts.frame["patch_id"][: extraction.n_parts]) == list(range(extraction.n_parts))
    images, labels = parts.batch([0, extraction.n_parts + 1])
    assert images.shape == (2, 1, 10, 10, 10) and labels.tolist() == [1, 0]
    assert torch.equal(images[1], extraction.cut(held[1], 1))
    # Only the whole images are stored: no tensor per part.
    stored = [v for v in vars(parts).values() if isinstance(v, torch.Tensor) and v.dim() > 1]
    assert stored == []
    multi = SubSamples(_Images(frame, held), extraction, id_channel=True)
    sample, _, _ = multi[extraction.n_parts + 3]
    assert sample.shape == (2, 10, 10, 10) and torch.all(sample[1] == 3)


class _Images:
    """What SubSamples needs of CachedImages: frame, classes, labels, images."""

    def __init__(self, frame, images):
        self.frame, self.images, self.classes = frame, images, ["CN", "AD"]
        self.labels = torch.tensor([1, 0][: len(frame)])

    def __len__(self):
        return len(self.frame)


# Errors before any file ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"mode": "patch", "patch_size": 30}, "data.patch_size"),
        ({"mode": "slice", "slice_direction": 3}, "data.slice_direction"),
        ({"mode": "slice", "discarded_slices": [12, 12]}, "data.discarded_slices"),
        ({"mode": "voxel"}, "data.mode"),
        ({"mode": "roi", "roi_list": ["amygdala"]}, "data.roi_list"),
    ],
)
def test_parts_that_do_not_fit_name_the_key(data, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        from_config(data, SHAPE)


def test_multicnn_needs_parts_and_one_process():
    with pytest.raises(UserError, match="model.network_type"):
        check_config({"data": {"mode": "image"}, "model": {"network_type": "multicnn"}})
    with pytest.raises(UserError, match="distributed"):
        check_config(
            {
                "data": {"mode": "patch"},
                "model": {"network_type": "multicnn"},
                "train": {"distributed": {"processes": 2, "nodes": 1}},
            }
        )
    with pytest.raises(UserError, match="interpret.enabled"):
        check_config({"data": {"mode": "slice"}, "interpret": {"enabled": True}})


# Soft voting --------------------------------------------------------------------------------


def reference_rows() -> pd.DataFrame:
    """Part 0 always right; part 1 always says AD (accuracy 0.75, balanced 0.5); part 2 worse."""
    labels = ["AD", "AD", "AD", "CN"]
    predictions = {0: labels, 1: ["AD"] * 4, 2: ["AD", "CN", "CN", "AD"]}
    return pd.DataFrame(
        [
            {"patch_id": k, "label": y, "prediction": p}
            for k, row in predictions.items()
            for y, p in zip(labels, row)
        ]
    )


def test_weights_are_balanced_accuracies_normalised():
    weights = part_weights(reference_rows(), "patch_id")
    # balanced accuracies 1, 0.5 and (1/3 + 0) / 2 = 1/6; plain accuracy would give 0.75 to part 1
    total = 1 + 0.5 + 1 / 6
    assert weights.to_dict() == pytest.approx({0: 1 / total, 1: 0.5 / total, 2: (1 / 6) / total})
    kept = part_weights(reference_rows(), "patch_id", threshold=0.4)
    assert kept.to_dict() == pytest.approx({0: 2 / 3, 1: 1 / 3, 2: 0.0})


def test_soft_vote_by_hand():
    parts = pd.DataFrame(
        {
            "participant_id": ["sub-1"] * 3 + ["sub-2"] * 3,
            "session_id": ["ses-M000"] * 6,
            "patch_id": [0, 1, 2] * 2,
            "label": ["AD"] * 3 + ["CN"] * 3,
            "probaCN": [0.1, 0.8, 1.0, 0.3, 0.9, 0.0],
            "probaAD": [0.9, 0.2, 0.0, 0.7, 0.1, 1.0],
        }
    )
    weights = pd.Series({0: 2 / 3, 1: 1 / 3, 2: 0.0})
    images = soft_vote(parts, ["CN", "AD"], "patch_id", weights)
    # sub-1: P(AD) = 2/3 * 0.9 + 1/3 * 0.2 = 2/3; sub-2: P(AD) = 2/3 * 0.7 + 1/3 * 0.1 = 0.5
    assert images["probaAD"].tolist() == pytest.approx([2 / 3, 0.5])
    assert images["probaCN"].tolist() == pytest.approx([1 / 3, 0.5])
    assert images["prediction"].tolist() == ["AD", "CN"]  # a tie goes to the first class
    assert images["loss"].tolist() == pytest.approx([-math.log(2 / 3), -math.log(0.5)])
    assert list(images.columns[:3]) == ["participant_id", "session_id", "label"]


def test_no_part_above_the_threshold_gives_equal_weights(caplog):
    with caplog.at_level(logging.WARNING):
        weights = part_weights(reference_rows(), "patch_id", threshold=1.01)
    assert weights.to_dict() == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3})
    assert "same weight" in caplog.text


def test_regression_takes_the_mean_of_the_parts():
    parts = pd.DataFrame(
        {
            "participant_id": ["sub-1"] * 2,
            "session_id": ["ses-M000"] * 2,
            "slice_id": [4, 5],
            "label": [70.0, 70.0],
            "prediction": [68.0, 73.0],
            "loss": [0.1, 0.3],
        }
    )
    images, weights = image_level(parts, None, "slice_id")
    assert weights is None
    assert images[["prediction", "loss"]].iloc[0].tolist() == pytest.approx([70.5, 0.2])


# Networks -------------------------------------------------------------------------------------


def test_slices_get_2d_networks():
    for model in ({}, {"search": {"n_convblocks": 3, "first_conv_width": 4, "n_fcblocks": 2}}):
        description = {**resolve_description(model, [3, 24, 20], 2), "dimension": 2}
        network = build_network(description)
        assert not any(isinstance(m, torch.nn.Conv3d) for m in network.modules())
        assert network(torch.zeros(5, 3, 24, 20)).shape == (5, 2)


def test_multicnn_sends_each_part_to_its_own_network():
    description = {**resolve_description({}, [1, 8, 8, 8], 2), "n_networks": 3}
    network = build_network(description).eval()
    x = torch.randn(4, 2, 8, 8, 8)
    x[:, 1] = torch.tensor([2.0, 0.0, 2.0, 1.0]).view(4, 1, 1, 1)
    out = network(x)
    for i, part in enumerate([2, 0, 2, 1]):
        expected = network.networks[part](x[i : i + 1, :1])[0]
        assert torch.allclose(out[i], expected, atol=1e-6)


# Random search ----------------------------------------------------------------------------------


def test_the_sampled_mode_and_its_keys_change_the_run():
    space = {
        "mode": "slice",
        "network_type": "cnn",
        "epochs": 3,
        "n_convblocks": 2,
        "first_conv_width": 4,
        "n_fcblocks": 1,
        "patch_size": 20,
        "slice_direction": [1, 2],
        "selection_threshold": [0.5, 0.7],
    }
    options = sample_options(space, seed=1)
    data = to_config_overrides(options)["data"]
    assert data["mode"] == "slice" and data["slice_direction"] in (1, 2)
    assert data["discarded_slices"] == 20  # ClinicaDL's random-search default for slices
    assert 0.5 <= data["selection_threshold"] <= 0.7
    assert "patch_size" not in data  # a patch key does not apply to a slice run
    assert to_config_overrides(options)["model"]["network_type"] == "cnn"


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"mode": "patch", "use_extracted_patches": True}, "use_extracted_patches"),
        ({"mode": "roi", "roi_custom_mask_pattern": "res-1x1x1"}, "roi_custom_mask_pattern"),
    ],
)
def test_what_cannot_run_stops_the_search_naming_the_key(extra, key):
    space = {"epochs": 3, "n_convblocks": 2, "first_conv_width": 4, "n_fcblocks": 1, **extra}
    with pytest.raises(UserError, match=key):
        to_config_overrides(sample_options(space, seed=0))


@pytest.mark.parametrize(
    "data",
    [
        {"mode": "patch", "patch_size": 10, "stride_size": 7},
        {"mode": "slice", "slice_direction": 0, "discarded_slices": 3},
        {"mode": "slice", "slice_direction": 1, "slice_mode": "single"},
        {"mode": "slice", "slice_direction": 2, "discarded_slices": [2, 5]},
    ],
)
def test_a_batch_gathered_at_once_equals_the_parts_cut_one_by_one(data):
    frame = pd.DataFrame({"participant_id": list("abcde"), "session_id": ["ses-M000"] * 5})
    images = _Images(frame, torch.randn(5, *SHAPE))
    images.labels = torch.tensor([0, 1, 1, 0, 1])
    extraction = from_config(data, SHAPE)
    for id_channel in (False, True):
        parts = SubSamples(images, extraction, id_channel=id_channel)
        chosen = list(np.random.default_rng(0).permutation(len(parts))[:17])
        batch, labels = parts.batch(chosen)
        assert torch.equal(batch, torch.stack([parts.sample(i) for i in chosen]))
        assert labels.tolist() == [images.labels[i // extraction.n_parts] for i in chosen]


def test_clinicadls_example_search_samples_slice_runs():
    """ClinicaDL's own random_search.json (tools/deep_learning/models): a slice-mode cnn."""
    example = {
        "mode": "slice",
        "network_type": "cnn",
        "caps_dir": "/path/to/caps",
        "preprocessing": "t1-linear",
        "tsv_path": "/path/to/tsv",
        "diagnoses": ["AD", "CN"],
        "baseline": False,
        "unnormalize": False,
        "data_augmentation": False,
        "sampler": "random",
        "epochs": 100,
        "learning_rate": [2, 5],
        "wd_bool": [True, False],
        "weight_decay": [2, 4],
        "dropout": [0, 0.9],
        "patience": 20,
        "tolerance": 0,
        "accumulation_steps": 1,
        "evaluation_steps": 0,
        "n_convblocks": [2, 6],
        "first_conv_width": [2, 5],
        "channels_limit": 256,
        "d_reduction": "MaxPooling",
        "n_conv": [1, 2],
        "n_fcblocks": [1, 3],
    }
    overrides = to_config_overrides(sample_options(example, seed=0))
    assert overrides["data"] == {
        "mode": "slice",
        "discarded_slices": 20,
        "slice_direction": 0,
        # ClinicaDL's data keys (snakemaps.data.caps): the run's CAPS and table.
        "caps_directory": "/path/to/caps",
        "preprocessing": "t1-linear",
        "tsv": "/path/to/tsv",
        "diagnoses": ["AD", "CN"],
        "baseline": False,
        "unnormalize": False,
    }
    assert overrides["model"]["network_type"] == "cnn"
    check_config({"data": overrides["data"], "model": overrides["model"]})
    # On a cropped t1-linear image: 169 - 2 x 20 sagittal slices, 2D networks.
    extraction = from_config(overrides["data"], [1, 169, 208, 179])
    assert extraction.n_parts == 129 and extraction.part_shape == (3, 208, 179)


def test_the_part_log_keeps_the_epochs_of_saved_models(tmp_path):
    from snakemaps.evaluate.voting import prune_part_log
    from snakemaps.train.callbacks import ModelCheckpoint, TableLog

    checkpoint = ModelCheckpoint(["loss", "BalancedAccuracy"], save_epochs=[2])
    checkpoint.best = {
        "loss": {"value": 0.3, "epoch": 3},
        "BalancedAccuracy": {"value": 1, "epoch": 1},
    }
    log = TableLog(tmp_path / "details_patch.tsv", ["epoch"])
    log.rows = [{"epoch": e, "patch_id": k} for e in range(1, 7) for k in range(2)]
    prune_part_log(log, [checkpoint])
    assert sorted({row["epoch"] for row in log.rows}) == [1, 2, 3, 6]
    assert len(log.rows) == 8


def test_patch_training_resumes_bit_identical_with_its_part_log(tmp_path):
    """A run stopped mid-epoch (as SIGTERM does) and resumed ends as the unbroken one."""
    import signal

    from snakemaps.data.dataset import CachedImages
    from snakemaps.maps import Maps
    from snakemaps.train.callbacks import Callback, ModelCheckpoint
    from snakemaps.train.trainer import Settings, Trainer, TrainingInterrupted

    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        path = tmp_path / f"image{i}.npy"
        label = "AD" if i % 2 else "CN"
        np.save(path, (rng.normal(size=(1, 12, 12, 12)) + (label == "AD")).astype(np.float32))
        rows.append({"participant_id": f"sub-{i}", "session_id": "ses-M000", "label": label})
        rows[-1]["tensor"] = str(path)
    frame = pd.DataFrame(rows)
    extraction = from_config({"mode": "patch", "patch_size": 6, "stride_size": 6}, [1, 12, 12, 12])

    class StopAt(Callback):
        name = "StopAt"

        def __init__(self, epoch, batch):
            self.at = (epoch, batch)

        def on_batch_end(self, trainer, **_):
            state = trainer.state
            if (state.current_epoch, state.current_train_batch) == self.at:
                trainer.interrupt = signal.SIGTERM

    def run(folder, callbacks):
        torch.manual_seed(0)
        network = build_network(resolve_description({"conv_channels": [4, 8]}, (1, 6, 6, 6), 2))
        data = {
            side: CachedImages(frame[s], ["CN", "AD"])
            for side, s in (("train", slice(0, 8)), ("val", slice(8, 12)))
        }
        trainer = Trainer(
            maps=Maps(folder),
            split=0,
            network=network,
            optimizer=torch.optim.Adam(network.parameters(), lr=1e-3),
            optimizer_name="Adam",
            train_data=SubSamples(data["train"], extraction),
            val_data=SubSamples(data["val"], extraction),
            settings=Settings(epochs=2, batch_size=8, device=torch.device("cpu"), seed=0),
            metric_names=["loss", "BalancedAccuracy"],
            callbacks=[ModelCheckpoint(["loss"], []), *callbacks],
            fingerprint="patch",
        )
        trainer.fit()
        return trainer

    unbroken = run(tmp_path / "a", [])
    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "b", [StopAt(1, 2)])
    resumed = run(tmp_path / "b", [])
    for a, b in zip(unbroken.network.state_dict().values(), resumed.network.state_dict().values()):
        assert torch.equal(a, b)
    logs = [t.split_dir.validation_metrics.path / "details_patch.tsv" for t in (unbroken, resumed)]
    assert logs[0].read_text() == logs[1].read_text()
