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
            "synthetic": {
                **TINY["data"]["synthetic"],
                "n_participants": 4,
                "n_test_participants": 2,
                "n_sessions": 1,
                "caps": True,
            },
        },
    }
    targets = [f"results/data/cache/{name}/manifest.tsv" for name in ("train", "group-test")]
    result = run_snakemake(tmp_path, *targets, config=config)
    assert result.returncode == 0, result.stderr[-5000:]
    group = pd.read_csv(tmp_path / targets[1], sep="\t")
    assert len(group) and all("/synthetic/caps/subjects/" in image for image in group.image)
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


def test_random_search_caps_keys_reach_each_run(caps_run):
    """ClinicaDL's data keys of random_search.json set each run's data (one cache per data)."""
    import json
    import re

    import yaml
    from conftest import job_counts
    from snakemaps.search.analysis import ranked_table

    workdir, table = caps_run
    space = {
        "epochs": 1,
        "n_convblocks": 2,
        "first_conv_width": 4,
        "n_fcblocks": 1,
        "caps_dir": str(workdir / "cohort" / "caps"),
        "tsv_path": str(table),
        "preprocessing": "t1-linear",
        "diagnoses": ["AD", "CN"],
        "baseline": [True, False],
        "unnormalize": [True, False],
    }
    config = {
        "data": {"label": "diagnosis", "synthetic": {"n_test_participants": 0}},
        "split": {"n_splits": 1},
        "random_search": {"n_runs": 6, "seed": 0, "space": space},
    }
    # The demo's held-out group cannot test runs trained on another cohort.
    with_demo_group = {**config, "data": {"label": "diagnosis"}}
    result = run_snakemake(workdir, "-n", "random_search", config=with_demo_group)
    assert "Set data.synthetic.n_test_participants: 0" in result.stdout + result.stderr
    result = run_snakemake(workdir, "-n", "random_search", config=config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # The runs' data differ from the config's (its demo cohort): each distinct data set is
    # prepared once, from the CAPS.
    launch = workdir / "results" / "random_search"
    result = run_snakemake(workdir, "results/random_search/random_search.json", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    options = {
        job: json.loads((launch / job / "options.json").read_text())
        for job in ("job-0", "job-1", "job-2", "job-3", "job-4", "job-5")
    }
    distinct = set()
    for job, sampled in options.items():
        data = yaml.safe_load((launch / job / "config.yaml").read_text())["data"]
        assert data["caps_directory"] == space["caps_dir"] and data["tsv"] == space["tsv_path"]
        assert data["diagnoses"] == ["AD", "CN"] and data["preprocessing"] == "t1-linear"
        assert (data["baseline"], data["unnormalize"]) == (
            sampled["baseline"],
            sampled["unnormalize"],
        )
        distinct.add((sampled["baseline"], sampled["unnormalize"]))
    caches = set(re.findall(r"dataset=(train-[0-9a-f]{8})", output))
    assert len(caches) == len(distinct) > 1
    assert job_counts(output)["prepare"] == len(distinct)
    ranked = ranked_table(options, {})
    assert {"caps_dir", "tsv_path", "preprocessing", "diagnoses", "baseline", "unnormalize"} <= set(
        ranked.columns
    )
    # A tsvtool folder as tsv_path stops the search, naming the key.
    folder = {**space, "tsv_path": str(table.parent / "caps")}
    bad = {**config, "random_search": {**config["random_search"], "space": folder}}
    result = run_snakemake(workdir, "-n", "random_search", config=bad)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "random search job-0 (random_search.json caps_dir -> data.caps_directory, tsv_path -> data.tsv"
        in output
    )
    assert "is a folder; give one table" in output


def test_clinicadls_example_random_search_runs_on_the_caps(caps_run, clinicadl_reader):
    """ClinicaDL's example random_search.json (slice mode), pointed at a real CAPS, runs.

    Only what a 24x28x24 test image needs changes: the paths, 1 epoch, at most 3 conv
    blocks and 2 discarded slices (ClinicaDL's 20 are for a 169-voxel axis). The slice-mode
    MAPS it trains opens in ClinicaDL 2.0's own reader.
    """
    import json

    from conftest import ROOT

    workdir, table = caps_run
    example = json.loads((ROOT / "config/examples/clinicadl_random_search.json").read_text())
    assert (example["mode"], example["caps_dir"]) == ("slice", "/path/to/caps")
    space = {
        **example,
        "caps_dir": str(workdir / "cohort" / "caps"),
        "tsv_path": str(table),
        "epochs": 1,
        "n_convblocks": [2, 3],
        "discarded_slices": 2,
    }
    launch = workdir / "results" / "clinicadl_search"
    config = {
        "data": {"label": "diagnosis", "synthetic": {"n_test_participants": 0}},
        "split": {"n_splits": 1},
        "random_search": {
            "n_runs": 1,
            "seed": 0,
            "space": space,
            "launch_dir": "results/clinicadl_search",
        },
    }
    result = run_snakemake(workdir, "random_search", config=config)
    assert result.returncode == 0, result.stderr[-5000:]
    options = json.loads((launch / "job-0" / "options.json").read_text())
    assert (options["mode"], options["network_type"]) == ("slice", "cnn")
    maps = Maps(launch / "job-0" / "maps").read(strict=True)
    dataset = json.loads(maps.training.data.train.splits[0].dataset_json.read_text())
    assert dataset["extraction"]["extract_method"] == "slice"  # ClinicaDL 2.0's SliceConfig
    ranked = pd.read_csv(launch / "ranked_runs.tsv", sep="\t")
    assert list(ranked["mode"]) == ["slice"] and list(ranked["caps_dir"]) == [space["caps_dir"]]
    seen = clinicadl_reader(launch / "job-0" / "maps")
    assert seen["splits"] == [0] and "final" in seen["models"]["0"]
