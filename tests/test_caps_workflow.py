"""A Clinica CAPS and a ClinicaDL table through the real workflow.

The demo cohort is written as a CAPS (t1-linear names, one participant under
Clinica's old naming), with MCI participants added that ``data.diagnoses``
leaves out; snakemake trains from it with ``data.label: diagnosis``.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from conftest import TINY, run_snakemake
from snakemaps.data.synthetic import generate_cohort
from snakemaps.maps import Maps

pytestmark = pytest.mark.workflow

SHAPE = [24, 28, 24]


def clinicadl_cohort(folder):
    """The demo as a CAPS, plus 2 MCI participants, one participant under the old naming."""
    table = generate_cohort(
        folder, n_participants=8, parts=["participants"], max_sessions=2, shape=SHAPE, caps=True
    )["participants"]
    frame = pd.read_csv(table, sep="\t")
    assert list(frame.columns[:3]) == ["participant_id", "session_id", "diagnosis"]
    subjects = folder / "caps" / "subjects"
    rows = []
    for source, new in (("sub-0001", "sub-0901"), ("sub-0002", "sub-0902")):
        for row in frame[frame.participant_id == source].itertuples(index=False):
            images = subjects / source / row.session_id / "t1_linear"
            target = subjects / new / row.session_id / "t1_linear"
            target.mkdir(parents=True)
            for image in images.iterdir():
                shutil.copy(image, target / image.name.replace(source, new))
            rows.append({**row._asdict(), "participant_id": new, "diagnosis": "MCI"})
    old = next((subjects / "sub-0003").glob("*/t1_linear/*_T1w.nii.gz"))
    old.rename(old.with_name(old.name.replace("_space-", "_T1w_space-")))  # Clinica <= 0.7
    table = folder / "labels.tsv"
    pd.concat([frame, pd.DataFrame(rows)]).to_csv(table, sep="\t", index=False)
    return folder / "caps", table


@pytest.fixture(scope="module")
def caps_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("caps")
    caps, table = clinicadl_cohort(workdir / "cohort")
    config = {
        "data": {
            "tsv": str(table),
            "caps_directory": str(caps),
            "preprocessing": "t1-linear",
            "label": "diagnosis",
            "diagnoses": ["AD", "CN"],
            "positive_class": "AD",
        },
        "split": {"n_splits": 1},
        "train": {
            "epochs": 2,
            "batch_size": 4,
            "save_epochs": [],
            "monitor": ["BalancedAccuracy"],
        },
    }
    # The MAPS alone (no report): what a strict read requires.
    targets = [
        f"results/maps/training/split-0/models/{model}/validation_metrics/aggregated.tsv"
        for model in ("best_models/best-BalancedAccuracy", "final")
    ]
    result = run_snakemake(workdir, *targets, "results/maps/env/environment.txt", config=config)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, table


def test_trains_from_the_caps_and_the_maps_reads(caps_run):
    workdir, table = caps_run
    maps = Maps(workdir / "results" / "maps").read(strict=True)
    data = pd.read_csv(maps.training.data.data_tsv, sep="\t")
    labels = pd.read_csv(table, sep="\t")
    assert set(data["label"]) == {"AD", "CN"}
    assert len(data) == (labels.diagnosis != "MCI").sum()
    assert "sub-0003" in set(data.participant_id)  # found under the old naming
    aggregated = pd.read_csv(maps.split(0).validation_metrics.aggregated_tsv, sep="\t")
    assert list(aggregated["epoch"]) == [1, 2]


def test_prepare_logged_the_sessions_dropped(caps_run):
    workdir, table = caps_run
    log = (workdir / "results" / "data" / "logs" / "prepare_train.log").read_text()
    n_mci = (pd.read_csv(table, sep="\t").diagnosis == "MCI").sum()
    assert f"({n_mci} dropped, labels found: AD, CN, MCI)" in log
    manifest = pd.read_csv(workdir / "results/data/cache/train/manifest.tsv", sep="\t")
    assert all("/caps/subjects/" in image and "/t1_linear/" in image for image in manifest.image)


def test_demo_switch_writes_a_caps_and_prepares_from_it(tmp_path):
    config = {
        **TINY,
        "data": {
            "label": "diagnosis",
            "synthetic": {**TINY["data"]["synthetic"], "n_participants": 4, "caps": True},
        },
    }
    result = run_snakemake(tmp_path, "results/data/cache/train/manifest.tsv", config=config)
    assert result.returncode == 0, result.stderr[-5000:]
    table = pd.read_csv(tmp_path / "results/data/synthetic/participants.tsv", sep="\t")
    assert list(table.columns[:3]) == ["participant_id", "session_id", "diagnosis"]
    assert "image" not in table.columns
    manifest = pd.read_csv(tmp_path / "results/data/cache/train/manifest.tsv", sep="\t")
    expected = [
        str(
            (tmp_path / "results/data/synthetic/caps/subjects" / p / s / "t1_linear").resolve()
            / f"{p}_{s}_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz"
        )
        for p, s in zip(manifest.participant_id, manifest.session_id)
    ]
    assert [str(p) for p in manifest.image] == expected
