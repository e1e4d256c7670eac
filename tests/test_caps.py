"""CAPS input, ClinicaDL's table options and their random-search keys (no Snakemake)."""

from __future__ import annotations

import json
import logging
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from snakemaps.data.caps import CapsQuery, find_images
from snakemaps.data.datasets import dataset_names, dataset_specs
from snakemaps.data.prepare import prepare_cache, read_manifest
from snakemaps.data.tsvtools import first_sessions, keep_diagnoses, refuse_split_folder
from snakemaps.errors import UserError
from snakemaps.search.launch import run_configs
from snakemaps.search.sampling import load_space, to_config_overrides

SPACE = "space-MNI152NLin2009cSym"
T1_NEW = f"t1_linear/sub-01_ses-M000_{SPACE}_desc-Crop_res-1x1x1_T1w.nii.gz"
T1_OLD = f"t1_linear/sub-01_ses-M000_T1w_{SPACE}_desc-Crop_res-1x1x1_T1w.nii.gz"
T1_UNCROPPED = f"t1_linear/sub-01_ses-M000_{SPACE}_res-1x1x1_T1w.nii.gz"
FLAIR = f"flair_linear/sub-01_ses-M000_{SPACE}_desc-Crop_res-1x1x1_flair.nii.gz"
PET_NEW = f"pet_linear/sub-01_ses-M000_trc-18FFDG_{SPACE}_desc-Crop_res-1x1x1_suvr-pons_pet.nii.gz"
PET_OLD = (
    f"pet_linear/sub-01_ses-M000_trc-18FFDG_pet_{SPACE}_desc-Crop_res-1x1x1_suvr-pons_pet.nii.gz"
)
CUSTOM = "t1/spm/sub-01_ses-M000_T1w_segm-graymatter_probability.nii.gz"


def write_nifti(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4)), str(path))


def session_caps(tmp_path, relative):
    caps = tmp_path / "caps"
    write_nifti(caps / "subjects" / "sub-01" / "ses-M000" / relative, np.ones((4, 4, 4)))
    return caps


@pytest.mark.parametrize(
    ("relative", "settings"),
    [
        (T1_NEW, {}),
        (T1_OLD, {}),
        (T1_NEW.replace("_T1w.nii.gz", "_t1w.nii.gz"), {}),  # case ignored, as Clinica does
        (T1_UNCROPPED, {"use_uncropped_image": True}),
        (FLAIR, {"preprocessing": "flair-linear"}),
        (
            PET_NEW,
            {"preprocessing": "pet-linear", "tracer": "18FFDG", "suvr_reference_region": "pons"},
        ),
        (
            PET_OLD,
            {"preprocessing": "pet-linear", "tracer": "18FFDG", "suvr_reference_region": "pons"},
        ),
        (CUSTOM, {"preprocessing": "custom", "custom_suffix": "graymatter_probability.nii.gz"}),
    ],
    ids=[
        "t1",
        "t1-old-naming",
        "t1-lower-case",
        "t1-uncropped",
        "flair",
        "pet",
        "pet-old-naming",
        "custom",
    ],
)
def test_each_preprocessing_finds_its_file(tmp_path, relative, settings):
    caps = session_caps(tmp_path, relative)
    query = CapsQuery.from_settings({"caps_directory": str(caps), **settings})
    found, why = query.find("sub-01", "ses-M000")
    assert why == "" and found == caps / "subjects" / "sub-01" / "ses-M000" / relative


def test_cropped_is_not_taken_for_uncropped_and_missing_names_session_and_pattern(tmp_path):
    caps = session_caps(tmp_path, T1_NEW)
    query = CapsQuery.from_settings({"caps_directory": str(caps), "use_uncropped_image": True})
    with pytest.raises(UserError) as error:
        find_images(query, ["sub-01", "sub-02"], ["ses-M000", "ses-M012"], "table.tsv")
    message = str(error.value)
    assert "2 session(s) of table.tsv have no t1-linear image" in message
    assert "sub-02 ses-M012: no file matches" in message
    searched = caps / "subjects" / "sub-01" / "ses-M000" / "**"
    assert f"{searched}/*{SPACE}_res-1x1x1_T1w.nii.gz" in message


def test_two_matching_files_are_refused(tmp_path):
    caps = session_caps(tmp_path, T1_NEW)
    write_nifti(caps / "subjects" / "sub-01" / "ses-M000" / T1_OLD, np.ones((4, 4, 4)))
    query = CapsQuery.from_settings({"caps_directory": str(caps)})
    found, why = query.find("sub-01", "ses-M000")
    assert found is None and why.startswith("2 files match")


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"preprocessing": "dwi-dti"}, "data.preprocessing: unknown preprocessing 'dwi-dti'"),
        ({"preprocessing": "pet-linear", "suvr_reference_region": "pons"}, "data.tracer"),
        ({"preprocessing": "pet-linear", "tracer": "18FFDG"}, "data.suvr_reference_region"),
        ({"preprocessing": "custom"}, "data.custom_suffix"),
        ({"tracer": "18FFDG"}, "data.tracer does nothing with data.preprocessing t1-linear"),
        ({"custom_suffix": "x.nii.gz"}, "data.custom_suffix does nothing"),
        (
            {"preprocessing": "custom", "custom_suffix": "x", "use_uncropped_image": True},
            "data.use_uncropped_image does nothing with data.preprocessing custom",
        ),
    ],
)
def test_bad_preprocessing_settings_name_the_key(tmp_path, settings, fragment):
    caps = session_caps(tmp_path, T1_NEW)
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        CapsQuery.from_settings({"caps_directory": str(caps), **settings})


def test_a_folder_without_subjects_is_not_a_caps(tmp_path):
    with pytest.raises(UserError, match="has no subjects/ folder"):
        CapsQuery.from_settings({"caps_directory": str(tmp_path)})


def test_clinicadl_extracted_tensor_is_read_when_up_to_date(tmp_path):
    caps = session_caps(tmp_path, T1_NEW)
    query = CapsQuery.from_settings({"caps_directory": str(caps)})
    image, _ = query.find("sub-01", "ses-M000")
    tensor = query.tensor_path("sub-01", "ses-M000", image)
    assert tensor.relative_to(caps).as_posix() == (
        "subjects/sub-01/ses-M000/deeplearning_prepare_data/image_based/t1_linear/"
        f"sub-01_ses-M000_{SPACE}_desc-Crop_res-1x1x1_T1w.pt"
    )
    assert find_images(query, ["sub-01"], ["ses-M000"], "t.tsv")[1] == [str(image)]
    tensor.parent.mkdir(parents=True)
    torch.save(torch.full((1, 4, 4, 4), 2.0), tensor)
    assert find_images(query, ["sub-01"], ["ses-M000"], "t.tsv")[1] == [str(tensor)]
    os.utime(tensor, (0, 0))  # older than the image: stale
    assert find_images(query, ["sub-01"], ["ses-M000"], "t.tsv")[1] == [str(image)]


def frame(rows):
    return pd.DataFrame(rows, columns=["participant_id", "session_id", "label"])


def test_diagnoses_keep_only_those_labels_and_log_the_drop(caplog):
    table = frame([("a", "ses-M000", "AD"), ("b", "ses-M000", "MCI"), ("c", "ses-M000", "CN")])
    with caplog.at_level(logging.INFO, logger="snakemaps"):
        kept = keep_diagnoses(table, ["AD", "CN"], "t.tsv")
    assert list(kept.participant_id) == ["a", "c"]
    assert "kept 2 of 3 sessions of t.tsv (1 dropped" in caplog.text
    with_diagnosis = table.assign(diagnosis=["CN", "CN", "AD"])  # a regression's own column
    assert list(keep_diagnoses(with_diagnosis, ["AD"], "t.tsv").participant_id) == ["c"]
    with pytest.raises(UserError, match=r"none of \['pMCI'\] occurs in t.tsv"):
        keep_diagnoses(table, ["pMCI"], "t.tsv")


def test_baseline_is_the_lexicographically_first_session():
    table = frame(
        [
            ("a", "ses-M012", "AD"),
            ("a", "ses-M006", "AD"),
            ("b", "ses-M6", "CN"),
            ("b", "ses-M12", "CN"),
        ]
    )
    kept = first_sessions(table, "t.tsv")
    assert list(zip(kept.participant_id, kept.session_id)) == [("a", "ses-M006"), ("b", "ses-M12")]


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        (["split.json", "train.tsv", "validation_baseline.tsv"], "`tsvtools split`"),
        (
            ["kfold.json", "split-0/train.tsv", "split-0/validation_baseline.tsv"],
            "`tsvtools kfold`",
        ),
        (["train/AD.tsv", "validation/AD_baseline.tsv"], "`tsvtools split`"),
        (["notes.txt"], "is a folder; give one table"),
    ],
    ids=["split", "kfold", "clinicadl-1.0", "other"],
)
def test_tsvtool_folders_are_refused_naming_the_table_to_give(tmp_path, files, fragment):
    folder = tmp_path / "split"
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("participant_id\tsession_id\n")
    (tmp_path / "labels.tsv").write_text("participant_id\tsession_id\tdiagnosis\n")
    with pytest.raises(UserError) as error:
        refuse_split_folder(folder, "data.tsv")
    assert fragment in str(error.value) and "labels.tsv" in str(error.value)


def caps_cohort(tmp_path, sessions=("ses-M000", "ses-M012")):
    """A CAPS of 6 participants (AD, CN, MCI) and a ClinicaDL table."""
    caps, rows = tmp_path / "caps", []
    rng = np.random.default_rng(0)
    for i, diagnosis in enumerate(["AD", "CN", "MCI"] * 2):
        participant = f"sub-{i:02d}"
        for session in sessions:
            name = f"{participant}_{session}_{SPACE}_desc-Crop_res-1x1x1_T1w.nii.gz"
            path = caps / "subjects" / participant / session / "t1_linear" / name
            write_nifti(path, 100 + 50 * rng.random((6, 5, 4)))
            rows.append((participant, session, diagnosis))
    table = tmp_path / "labels.tsv"
    pd.DataFrame(rows, columns=["participant_id", "session_id", "diagnosis"]).to_csv(
        table, sep="\t", index=False
    )
    return caps, table


def test_prepare_builds_the_cache_from_a_caps_with_diagnoses_baseline_unnormalize(tmp_path):
    caps, table = caps_cohort(tmp_path)
    manifest = tmp_path / "cache" / "manifest.tsv"
    settings = {"caps_directory": str(caps), "preprocessing": "t1-linear"}
    common = {"label": "diagnosis", "caps": settings, "diagnoses": ["AD", "CN"], "baseline": True}
    prepare_cache(table, tmp_path / "cache" / "tensors", manifest, **common)
    prepared = read_manifest(manifest)
    assert list(prepared.label) == ["AD", "CN", "AD", "CN"]
    assert set(prepared.session_id) == {"ses-M000"}
    assert all("/t1_linear/" in image for image in prepared.image)
    info = json.loads(manifest.with_suffix(".json").read_text())
    assert (info["caps"], info["diagnoses"], info["baseline"]) == (settings, ["AD", "CN"], True)
    first = np.load(prepared.tensor[0])
    assert first.shape == (1, 6, 5, 4) and first.min() == 0 and first.max() == 1
    # unnormalize: the same cache folder gives the raw intensities, not the stale min-max ones.
    prepare_cache(table, tmp_path / "cache" / "tensors", manifest, unnormalize=True, **common)
    raw = np.load(read_manifest(manifest).tensor[0])
    assert raw.min() >= 100 and raw.max() <= 150
    prepare_cache(table, tmp_path / "cache" / "tensors", manifest, **common)
    np.testing.assert_array_equal(np.load(read_manifest(manifest).tensor[0]), first)


def test_an_image_column_with_a_caps_is_refused(tmp_path):
    caps, table = caps_cohort(tmp_path, sessions=("ses-M000",))
    pd.read_csv(table, sep="\t").assign(image="x.nii.gz").to_csv(table, sep="\t", index=False)
    with pytest.raises(UserError, match="has an image column, and data.caps_directory is set"):
        prepare_cache(
            table,
            tmp_path / "t",
            tmp_path / "m.tsv",
            label="diagnosis",
            caps={"caps_directory": str(caps)},
        )


DATA = {
    "tsv": None,
    "label": "label",
    "caps_directory": None,
    "preprocessing": "t1-linear",
    "use_uncropped_image": False,
    "tracer": None,
    "suvr_reference_region": None,
    "custom_suffix": None,
    "diagnoses": None,
    "baseline": False,
    "unnormalize": False,
    "synthetic": {"caps": False},
}


def test_demo_caps_settings_and_a_run_with_other_data_gets_its_own_cache():
    demo = {"data": {**DATA, "label": "diagnosis", "synthetic": {"caps": True}}}
    specs = dataset_specs(demo, {"test": "d/synthetic/test.tsv"}, "d")
    assert specs["train"][1]["caps"]["caps_directory"] == "d/synthetic/caps"
    assert specs["group-test"][1]["baseline"] is False
    run = {"data": {**demo["data"], "baseline": True}}
    names = dataset_names(dataset_specs(run, {"test": "d/synthetic/test.tsv"}, "d"), specs)
    assert names["group-test"] == "group-test" and names["train"].startswith("train-")
    with pytest.raises(UserError, match="data.label: diagnosis"):
        dataset_specs({"data": {**DATA, "synthetic": {"caps": True}}}, {}, "d")
    with pytest.raises(
        UserError, match="data.preprocessing is set but data.caps_directory is null"
    ):
        dataset_specs({"data": {**DATA, "tsv": "t.tsv", "preprocessing": "pet-linear"}}, {}, "d")


def test_random_search_caps_keys_reach_each_run_config(tmp_path):
    space = load_space(
        {
            "epochs": 1,
            "n_convblocks": 2,
            "first_conv_width": 4,
            "n_fcblocks": 1,
            "caps_dir": "/caps",
            "tsv_path": "/labels.tsv",
            "preprocessing": "t1-linear",
            "diagnoses": ["AD", "CN"],
            "baseline": [True, False],
            "unnormalize": [True, False],
            "use_uncropped_image": True,
        }
    )
    runs = run_configs({"data": dict(DATA), "train": {}}, space, "launch", 8, 0)
    for options, experiment in runs.values():
        data = experiment["data"]
        assert (data["caps_directory"], data["tsv"], data["diagnoses"]) == (
            "/caps",
            "/labels.tsv",
            ["AD", "CN"],
        )
        assert (data["baseline"], data["unnormalize"]) == (
            options["baseline"],
            options["unnormalize"],
        )
        assert data["use_uncropped_image"] is True
    assert {options["baseline"] for options, _ in runs.values()} == {True, False}
    assert to_config_overrides({"diagnoses": "AD"})["data"]["diagnoses"] == ["AD"]
    with pytest.raises(UserError, match="'preprocessing' must be one of \"t1-linear\""):
        load_space({**space, "preprocessing": ["t1-linear", "dwi-dti"]})
