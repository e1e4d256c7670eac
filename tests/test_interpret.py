"""Saliency maps (snakemaps.interpret): jobs from the config, Captum maps, files, figure."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from snakemaps import io
from snakemaps.data.prepare import prepare_cache
from snakemaps.errors import UserError
from snakemaps.interpret import interpretation_jobs, output_dirs
from snakemaps.interpret.saliency import interpret_group
from snakemaps.maps import Maps
from snakemaps.models.description import default_description
from snakemaps.models.network import build_network

SHAPE = (12, 14, 12)
CLASSES = ["CN", "AD"]
TRAIN = {"monitor": ["loss", "BalancedAccuracy"], "save_epochs": [2, 9], "epochs": 5}
ON = {
    "enabled": True,
    "methods": ["gradients", "grad-cam"],
    "groups": None,
    "splits": None,
    "models": ["best-loss"],
    "target_node": None,
    "level_grad_cam": None,
}


def jobs(**settings):
    return interpretation_jobs({**ON, **settings}, groups=["test", "adni"], n_splits=3, train=TRAIN)


def test_jobs_follow_the_config_and_are_none_when_off():
    assert jobs(enabled=False) == []
    assert jobs() == [(g, k, "best-loss") for g in ("test", "adni") for k in range(3)]
    assert jobs(groups=["adni"], splits=[2], models=["final", "epoch-2"]) == [
        ("adni", 2, "final"),
        ("adni", 2, "epoch-2"),
    ]
    assert output_dirs("m", "adni", 2, "final", ["gradients", "grad-cam"]) == [
        "m/test/group-adni/results/split-2/final/interpret-gradients",
        "m/test/group-adni/results/split-2/final/interpret-grad-cam",
    ]


@pytest.mark.parametrize(
    ("settings", "key", "named"),
    [
        ({"methods": ["occlusion"]}, "interpret.methods", "occlusion"),
        ({"groups": ["oasis"]}, "interpret.groups", "oasis"),
        ({"splits": [3]}, "interpret.splits", "[3]"),
        ({"models": ["best-F1"]}, "interpret.models", "best-F1"),
        ({"models": ["epoch-9"]}, "interpret.models", "epoch-9"),  # past train.epochs
    ],
)
def test_unknown_method_group_split_or_model_is_refused_naming_the_key(settings, key, named):
    with pytest.raises(UserError, match=key) as error:
        jobs(**settings)
    assert named in str(error.value)


def test_a_class_target_is_refused_for_a_regression():
    settings = {**ON, "target_node": "AD"}
    with pytest.raises(UserError, match="interpret.target_node"):
        interpretation_jobs(settings, groups=["test"], n_splits=1, train=TRAIN, task="regression")


@pytest.fixture(scope="module")
def maps_dir(tmp_path_factory):
    """A MAPS with one untrained CNN and a registered group of 6 NIfTI images (3 per class)."""
    root = tmp_path_factory.mktemp("interpret")
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    affine[:3, 3] = [-10.0, 20.0, -5.0]
    rows = []
    (root / "images").mkdir()
    for i in range(6):
        path = root / "images" / f"sub-{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random(SHAPE).astype(np.float32), affine), path)
        rows.append((f"sub-{i:02d}", "ses-M000", CLASSES[i % 2], str(path)))
    table = root / "group.tsv"
    pd.DataFrame(rows, columns=["participant_id", "session_id", "label", "image"]).to_csv(
        table, sep="\t", index=False
    )
    manifest = prepare_cache(table, root / "cache" / "tensors", root / "cache" / "manifest.tsv")
    maps = Maps(root / "maps")
    description = default_description([4, 8, 8], len(CLASSES), 0.0, "BatchNorm")
    io.write_json(maps.model_json, {"network": description, "classes": CLASSES, "task": "x"})
    torch.manual_seed(0)
    network = build_network(description).eval()
    weights = maps.split(0).models.get("best-loss").model_pt
    io.torch_save(weights, {f"network.{k}": v for k, v in network.state_dict().items()})
    io.write_json(maps.test_group("test").dataset_json, {"cache_manifest": str(manifest)})
    return maps.path, affine


def folder(maps_dir, method):
    return Maps(maps_dir).test_group("test").results.splits[0].models["best-loss"].path / (
        f"interpret-{method}"
    )


@pytest.fixture(scope="module")
def interpreted(maps_dir):
    path, _ = maps_dir
    return interpret_group(path, "test", 0, "best-loss", ["gradients", "grad-cam"], batch_size=4)


def test_every_image_and_class_gets_a_map_of_the_input_shape(maps_dir, interpreted):
    path, _ = maps_dir
    assert [p.name for p in interpreted] == ["interpret-gradients", "interpret-grad-cam"]
    for method in ("gradients", "grad-cam"):
        out = folder(path, method)
        names = sorted(p.name for p in out.iterdir())
        assert not [n for n in names if n.startswith(".")]
        for stem in [
            "mean_image-0_map",
            "mean_label-AD_image-0_map",
            "mean_label-CN_image-0_map",
            *(f"sub-{i:02d}_ses-M000_image-0_map" for i in range(6)),
        ]:
            assert f"{stem}.pt" in names and f"{stem}.nii.gz" in names, stem
            tensor = torch.load(out / f"{stem}.pt", weights_only=True)
            assert tensor.shape == (1, *SHAPE) and tensor.dtype == torch.float32
            assert torch.isfinite(tensor).all() and (tensor >= 0).all()
        info = json.loads((out / "interpretation.json").read_text())
        assert info["n_images"] == 6 and info["n_images_per_class"] == {"CN": 3, "AD": 3}
        assert info["level_grad_cam"] == (3 if method == "grad-cam" else None)
        details = pd.read_csv(out / "details.tsv", sep="\t")
        assert list(details["target"]) == list(details["prediction"])  # null: the predicted class


def test_class_maps_are_the_means_of_their_images(maps_dir, interpreted):
    path, _ = maps_dir
    out = folder(path, "grad-cam")
    details = pd.read_csv(out / "details.tsv", sep="\t")
    load = lambda name: torch.load(out / name, weights_only=True)
    for label in ("AD", "CN"):
        maps = [load(m) for m in details.loc[details["label"] == label, "map"]]
        assert load(f"mean_label-{label}_image-0_map.pt") == pytest.approx(
            torch.stack(maps).mean(0), abs=1e-6
        )
    every = torch.stack([load(m) for m in details["map"]]).mean(0)
    assert load("mean_image-0_map.pt") == pytest.approx(every, abs=1e-6)


def test_nifti_maps_keep_the_source_affine_and_equal_the_tensors(maps_dir, interpreted):
    path, affine = maps_dir
    out = folder(path, "gradients")
    for stem in ("mean_label-AD_image-0_map", "sub-03_ses-M000_image-0_map"):
        image = nib.load(out / f"{stem}.nii.gz")
        assert np.allclose(image.affine, affine)
        tensor = torch.load(out / f"{stem}.pt", weights_only=True)[0].numpy()
        assert np.allclose(image.get_fdata(), tensor, atol=1e-6)


def test_gradients_are_captums_saliency_of_the_predicted_class(maps_dir, interpreted):
    from captum.attr import Saliency
    from snakemaps.data.prepare import read_manifest
    from snakemaps.train.runtime import load_maps_weights

    path, _ = maps_dir
    maps = Maps(path)
    network = load_maps_weights(
        build_network(io.read_json(maps.model_json)["network"]),
        maps.split(0).models.get("best-loss").model_pt,
    ).eval()
    manifest = io.read_json(maps.test_group("test").dataset_json)["cache_manifest"]
    tensor = read_manifest(manifest)["tensor"].iloc[3]
    image = torch.from_numpy(np.load(tensor))[None].requires_grad_(True)
    target = int(network(image).argmax(1))
    expected = Saliency(network).attribute(image, target=target, abs=True)[0]
    found = torch.load(folder(path, "gradients") / "sub-03_ses-M000_image-0_map.pt")
    assert found == pytest.approx(expected.detach(), rel=1e-4, abs=1e-7)


def test_a_named_target_and_grad_cam_level_change_the_maps(maps_dir, interpreted, tmp_path):
    path, _ = maps_dir
    before = torch.load(folder(path, "grad-cam") / "mean_image-0_map.pt")
    interpret_group(path, "test", 0, "best-loss", ["grad-cam"], target_node="AD", level_grad_cam=1)
    out = folder(path, "grad-cam")
    details = pd.read_csv(out / "details.tsv", sep="\t")
    assert set(details["target"]) == {"AD"}
    assert json.loads((out / "interpretation.json").read_text())["level_grad_cam"] == 1
    assert not torch.equal(torch.load(out / "mean_image-0_map.pt"), before)
    # Rewriting one method left the other's folder as it was.
    assert (folder(path, "gradients") / "mean_image-0_map.pt").exists()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"target_node": "MCI"}, "interpret.target_node"),
        ({"level_grad_cam": 4}, "interpret.level_grad_cam"),
        ({"methods": ["lime"]}, "interpret.methods"),
        ({"group": "oasis"}, "interpret.groups"),
        ({"model": "best-F1"}, "interpret.models"),
    ],
)
def test_bad_arguments_are_refused_naming_the_key_and_write_nothing(maps_dir, kwargs, key):
    path, _ = maps_dir
    arguments = {"group": "test", "model": "best-loss", "methods": ["grad-cam"], **kwargs}
    model_dir = Maps(path).test_group("test").results.splits[0].models["best-loss"].path
    before = sorted(p.name for p in model_dir.iterdir()) if model_dir.exists() else []
    with pytest.raises(UserError, match=key):
        interpret_group(path, split=0, **arguments)
    after = sorted(p.name for p in model_dir.iterdir()) if model_dir.exists() else []
    assert after == before


def test_figure_overlays_each_class_map(maps_dir, interpreted, tmp_path):
    from snakemaps.report.interpretation import interpretation_figure

    path, _ = maps_dir
    out = interpretation_figure(
        path, "test", 0, "best-loss", ["gradients", "grad-cam"], tmp_path / "f.png"
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_prepare_records_each_images_affine(maps_dir):
    from snakemaps.data.prepare import info_path

    path, affine = maps_dir
    manifest = io.read_json(Maps(path).test_group("test").dataset_json)["cache_manifest"]
    affines = io.read_json(info_path(manifest))["affines"]
    assert sorted(affines) == [f"sub-{i:02d}_ses-M000" for i in range(6)]
    assert np.allclose(affines["sub-00_ses-M000"], affine)
