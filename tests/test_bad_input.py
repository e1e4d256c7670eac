"""Each bad input stops the real workflow before training, naming its culprit."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import cohort, run_snakemake, write_table

pytestmark = pytest.mark.workflow


def user_config(table: Path, **extra) -> dict:
    config = {
        "data": {"tsv": str(table)},
        "split": {"n_splits": 2},
        "train": {"epochs": 1, "batch_size": 4},
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def assert_fails(workdir: Path, config: dict, *fragments: str, args: tuple = ()) -> str:
    result = run_snakemake(workdir, *args, config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in output:\n{output[-4000:]}"
    assert not list(workdir.glob("results/maps/**/model.pt")), "a model was left behind"
    assert not list(workdir.glob("results/maps/**/.*.tmp")), "a temp file was left behind"
    return output


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ({"train": {"epochs": "ten"}}, ["'ten' is not of type 'integer'", "epochs"]),
        ({"train": {"epochs": -1}}, ["-1 is less than the minimum of 1", "epochs"]),
        (
            {"train": {"epoch": 3}},
            ["Additional properties are not allowed ('epoch' was unexpected)"],
        ),
        ({"split": {"n_splits": 0}}, ["0 is less than the minimum of 1", "n_splits"]),
        (
            {"data": {"preprocessing": "dwi-dti"}},
            ["'dwi-dti' is not one of ['t1-linear', 'pet-linear', 'flair-linear', 'custom']"],
        ),
    ],
    ids=["wrong-type", "negative-epochs", "unknown-key", "zero-splits", "unknown-preprocessing"],
)
def test_schema_violations_stop_at_start(tmp_path, override, fragments):
    output = assert_fails(tmp_path, override, *fragments)
    assert "rule prepare" not in output and "rule generate_demo" not in output


def test_missing_table(tmp_path):
    assert_fails(
        tmp_path,
        user_config(tmp_path / "nope.tsv"),
        "data.tsv: table not found",
        str(tmp_path / "nope.tsv"),
    )


def test_missing_column(tmp_path):
    table = write_table(tmp_path, cohort("A", 3))
    pd.read_csv(table, sep="\t").drop(columns="label").to_csv(table, sep="\t", index=False)
    assert_fails(tmp_path, user_config(table), f"{table}: missing required column(s) label")


def test_duplicate_session(tmp_path):
    table = write_table(tmp_path, cohort("A", 3))
    frame = pd.read_csv(table, sep="\t")
    pd.concat([frame, frame.iloc[[0]]]).to_csv(table, sep="\t", index=False)
    assert_fails(
        tmp_path,
        user_config(table),
        "duplicate (participant_id, session_id)",
        "sub-AAD000/ses-M000",
    )


def test_missing_image(tmp_path):
    table = write_table(tmp_path, cohort("A", 3))
    (tmp_path / "images" / "sub-ACN001_ses-M012.npy").unlink()
    assert_fails(
        tmp_path,
        user_config(table),
        "image not found for sub-ACN001 ses-M012",
        "sub-ACN001_ses-M012.npy",
    )


def test_unreadable_image(tmp_path):
    table = write_table(tmp_path, cohort("A", 3))
    frame = pd.read_csv(table, sep="\t")
    broken = tmp_path / "images" / "broken.nii.gz"
    broken.write_bytes(gzip.compress(b"this is not a NIfTI header"))
    frame.loc[2, "image"] = "images/broken.nii.gz"
    frame.to_csv(table, sep="\t", index=False)
    assert_fails(tmp_path, user_config(table), "cannot read image", "broken.nii.gz")


def test_single_class(tmp_path):
    table = write_table(tmp_path, [(f"sub-{i:02d}", "CN", 1) for i in range(6)])
    assert_fails(tmp_path, user_config(table), "only one class (CN)")


def test_more_splits_than_smallest_class(tmp_path):
    table = write_table(tmp_path, cohort("A", 3))
    assert_fails(
        tmp_path,
        user_config(table, split={"n_splits": 5}),
        "split.n_splits = 5 needs at least 5 participants per class",
    )


def test_test_participants_seen_in_training(tmp_path):
    """Refused by the group's registration, which checks it against the MAPS's split.

    Training never reads a test group (so that adding one retrains nothing), so
    with more cores it may run beside the registration; on one core the
    registration's priority runs it before any training.
    """
    table = write_table(tmp_path, cohort("A", 4))
    test = write_table(tmp_path, cohort("A", 1)[:1] + cohort("T", 2), name="test.tsv", seed=1)
    output = assert_fails(
        tmp_path,
        user_config(table, test={"groups": {"heldout": str(test)}}),
        "Error in rule register_test_group",
        "data leakage: 1 participant(s) appear in both the training data and test group "
        "'heldout': sub-AAD000",
        args=("--cores", "1"),
    )
    assert "rule test:" not in output  # the group is never evaluated
    assert not list(tmp_path.glob("results/maps/test/**/*.*")), "the group was registered"


def write_caps(folder: Path, participants: list[tuple[str, str, int]]) -> tuple[Path, Path]:
    """A CAPS of tiny t1-linear images and its ClinicaDL table (participant, session, diagnosis)."""
    import nibabel as nib
    import numpy as np

    rng, rows = np.random.default_rng(0), []
    for participant, diagnosis, n_sessions in participants:
        for s in range(n_sessions):
            session = f"ses-M{12 * s:03d}"
            name = (
                f"{participant}_{session}_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz"
            )
            path = folder / "caps" / "subjects" / participant / session / "t1_linear" / name
            path.parent.mkdir(parents=True)
            nib.save(nib.Nifti1Image(rng.random((8, 8, 8), dtype=np.float32), np.eye(4)), path)
            rows.append((participant, session, diagnosis))
    table = folder / "labels.tsv"
    columns = ["participant_id", "session_id", "diagnosis"]
    pd.DataFrame(rows, columns=columns).to_csv(table, sep="\t", index=False)
    return folder / "caps", table


def test_missing_caps_file(tmp_path):
    """Named with its participant, session and the pattern searched, before any MAPS file."""
    caps, table = write_caps(tmp_path, cohort("A", 3))
    folder = caps / "subjects" / "sub-ACN001" / "ses-M012"
    shutil.rmtree(folder / "t1_linear")
    config = user_config(table, data={"caps_directory": str(caps), "label": "diagnosis"})
    assert_fails(
        tmp_path,
        config,
        "1 session(s) of",
        "have no t1-linear image",
        "sub-ACN001 ses-M012: no file matches "
        f"{folder.resolve() if folder.exists() else folder}/**/"
        "*space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz",
    )
    assert not (tmp_path / "results" / "maps").exists(), "a MAPS file was written"


def test_tsvtool_split_folder(tmp_path):
    table = write_table(tmp_path, cohort("A", 3), name="labels.tsv")
    (tmp_path / "split" / "split-0").mkdir(parents=True)
    (tmp_path / "split" / "kfold.json").write_text("{}")
    assert_fails(
        tmp_path,
        user_config(table.parent / "split"),
        "data.tsv: ",
        "is a folder written by ClinicaDL's `tsvtools kfold`",
        "Candidates beside it in",
        "labels.tsv",
    )
