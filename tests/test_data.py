"""Loaders and the tensor cache, without snakemake."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from snakemaps.data.prepare import load_image, prepare_cache, read_manifest
from snakemaps.data.table import read_table
from snakemaps.errors import UserError


def volume(seed=0, shape=(10, 12, 10)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_load_nifti_npy_pt_and_single_channel(tmp_path):
    data = volume()
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(data[..., None], np.eye(4)), tmp_path / "b.nii")
    np.save(tmp_path / "c.npy", data)
    torch.save(torch.from_numpy(data[None]), tmp_path / "d.pt")
    for name in ("a.nii.gz", "b.nii", "c.npy", "d.pt"):
        loaded = load_image(tmp_path / name)
        assert loaded.shape == (10, 12, 10) and loaded.dtype == np.float32
        np.testing.assert_allclose(loaded, data, rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.nii.gz", b"not a nifti", "cannot read image"),
        ("x.txt", b"text", "unsupported image format"),
        ("x.npy", None, "expected a 3D volume"),
    ],
)
def test_bad_images_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros((4, 4), dtype=np.float32))
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as error:
        load_image(path)
    assert name in str(error.value)


def write(tmp_path, shapes):
    rows = []
    for i, shape in enumerate(shapes):
        np.save(tmp_path / f"img{i}.npy", volume(i, shape))
        rows.append(
            {
                "participant_id": f"sub-{i}",
                "session_id": "ses-M000",
                "label": "AD" if i % 2 else "CN",
                "age": 70 + i,
                "image": f"img{i}.npy",
            }
        )
    table = tmp_path / "data.tsv"
    pd.DataFrame(rows).to_csv(table, sep="\t", index=False)
    return table


def test_read_table_resolves_relative_images_and_renames_label(tmp_path):
    table = write(tmp_path, [(8, 8, 8)] * 2)
    frame = pd.read_csv(table, sep="\t").rename(columns={"label": "diagnosis"})
    frame.to_csv(table, sep="\t", index=False)
    loaded = read_table(table, label="diagnosis")
    assert "label" in loaded.columns and loaded["image"].iloc[0] == str(tmp_path / "img0.npy")


def test_prepare_cache_converts_once_and_reuses(tmp_path, caplog):
    table = write(tmp_path, [(8, 9, 10)] * 3)
    manifest = tmp_path / "cache" / "manifest.tsv"
    prepare_cache(table, tmp_path / "cache" / "tensors", manifest)
    frame = read_manifest(manifest)
    assert list(frame.columns) == [
        "participant_id",
        "session_id",
        "label",
        "age",
        "image",
        "tensor",
    ]
    cached = np.load(frame["tensor"].iloc[0])
    assert cached.shape == (1, 8, 9, 10) and cached.min() == 0.0 and cached.max() == 1.0
    assert json.loads(manifest.with_suffix(".json").read_text()) == {
        "shape": [1, 8, 9, 10],
        "n_images": 3,
        "caps": None,
        "diagnoses": None,
        "baseline": False,
        "unnormalize": False,
        "affines": {f"sub-{i}_ses-M000": None for i in range(3)},  # .npy images have none
    }
    with caplog.at_level(logging.INFO, logger="snakemaps.data.prepare"):
        prepare_cache(table, tmp_path / "cache" / "tensors", manifest)
    assert "(3 reused)" in caplog.text


def test_prepare_cache_refuses_mixed_shapes(tmp_path):
    table = write(tmp_path, [(8, 8, 8), (8, 8, 8), (8, 8, 9)])
    with pytest.raises(UserError, match=r"img2.npy has shape \(8, 8, 9\)"):
        prepare_cache(table, tmp_path / "cache", tmp_path / "cache" / "manifest.tsv")
    assert not (tmp_path / "cache" / "manifest.tsv").exists()
