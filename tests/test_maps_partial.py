"""Partial MAPS: what ``Maps.read()`` refuses (ClinicaDL's mandatory files only), what it
reads as absent, what ``read(strict=True)`` refuses, and the status command on each.

Every MAPS here is laid out by hand from ``shared/spec/maps-format.md`` (ClinicaDL 2.0
is not installable here): the minimal one holds only the files ClinicaDL's reader marks
``@mandatory``, the full one everything ClinicaDL's trainer writes (``build_maps``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from snakemaps.maps import Maps, MapsError
from snakemaps.maps.__main__ import main as status_main
from test_maps import SUBJECTS, _json, _text, _tsv, build_maps

SPLITS = (0, 1)

MANDATORY = [
    "model.json",
    "metrics.json",
    "callbacks.json",
    "training/optimization.json",
    "training/data/data.tsv",
    *[
        f"training/data/{subset}/split-{k}/{name}"
        for k in SPLITS
        for subset in ("train", "validation")
        for name in ("data.tsv", "dataset.json", "dataloader.json")
    ],
]


def build_minimal(root: Path, *, split_dirs: bool = True) -> Path:
    """Only what ClinicaDL's reader requires, as ``Maps.create`` + ``create_split`` leave it."""
    _json(root / "model.json", {"name_": "ClinicaDLModel", "network": {"name_": "Conv5_FC3"}})
    _json(root / "metrics.json", {"metrics": {"loss": {"name_": "LossMetric"}}})
    _json(root / "callbacks.json", {"callbacks": []})
    _json(root / "training" / "optimization.json", {"name_": "OptimizationConfig", "num_epochs": 4})
    _tsv(root / "training" / "data" / "data.tsv", SUBJECTS[["participant_id", "session_id"]])
    for k in SPLITS:
        for subset, rows in (("train", SUBJECTS.iloc[:3]), ("validation", SUBJECTS.iloc[3:])):
            folder = root / "training" / "data" / subset / f"split-{k}"
            _tsv(folder / "data.tsv", rows[["participant_id", "session_id"]])
            _json(folder / "dataset.json", {"name_": "CapsDataset"})
            _json(folder / "dataloader.json", {"name_": "DataLoaderConfig", "batch_size": 2})
        if split_dirs:
            (root / "training" / f"split-{k}").mkdir(parents=True)
    return root


def build_full(root: Path) -> Path:
    """ClinicaDL's full trainer output, plus the optional root and exec files."""
    build_maps(
        root,
        splits=SPLITS,
        metrics=("loss", "BalancedAccuracy"),
        checkpoints=(5,),
        groups=("X",),
        num_epochs=10,
        tmp_epoch=None,
    )
    _text(root / "nn_summary.txt", "Conv5_FC3\t1000 parameters\n")
    _text(root / "exec" / "run-train_2025_12_31_23_59_59" / "debug.log", "debug\n")
    return root


def status_facts(root: Path, capsys, *args: str) -> tuple[int, dict]:
    code = status_main([str(root), "--json", *args])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def full_maps(tmp_path_factory) -> Path:
    return build_full(tmp_path_factory.mktemp("full") / "maps")


@pytest.fixture
def full_copy(full_maps, tmp_path) -> Path:
    return Path(shutil.copytree(full_maps, tmp_path / "maps"))


# Only the mandatory files ---------------------------------------------------------------


@pytest.mark.parametrize("split_dirs", [True, False], ids=["split-dirs", "data-only"])
def test_minimal_maps_opens_with_every_optional_part_absent(tmp_path, split_dirs, capsys):
    root = build_minimal(tmp_path / "maps", split_dirs=split_dirs)
    maps = Maps(root).read()
    assert maps.training.data.train.splits.keys() == list(SPLITS)
    assert maps.training.data.validation.splits.keys() == list(SPLITS)
    assert maps.training.splits_list == (list(SPLITS) if split_dirs else [])
    assert Maps.open_file(maps.training.optimization_json)["num_epochs"] == 4
    assert (maps.architecture_log, maps.nn_summary_txt, maps.summary_log) == (None, None, None)
    assert maps.env.environment_txt is None and not maps.env.exists()
    assert maps.test.groups_list == [] and list(maps.exec.runs) == []
    split = maps.split(0)
    assert split.computational_json is None and split.summary_log is None
    assert split.logs.training_loss_tsv is None and split.logs.learning_rates_list == []
    assert split.validation_metrics.aggregated_tsv is None
    assert split.models.names() == [] and split.models.final.model_pt is None
    assert split.tmp.epochs_list == []
    with pytest.raises(MapsError, match="split-0/computational.json"):
        Maps(root).read(strict=True)

    code, facts = status_facts(root, capsys)
    assert code == 0
    assert facts["readable"] is True and facts["complete"] is False
    assert facts["missing_mandatory"] == []
    for split_facts in facts["splits"]:
        assert split_facts["state"] == "not started" and split_facts["models"] == []
        assert f"training/split-{split_facts['split']}/computational.json" in split_facts["missing"]
    assert [s["split"] for s in facts["splits"]] == list(SPLITS)
    assert status_main([str(root), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "readable: yes" in out and "complete: no" in out
    assert "missing in split-1: training/split-1/computational.json" in out


@pytest.mark.parametrize("relative", MANDATORY)
def test_missing_mandatory_file_is_refused_naming_it(tmp_path, relative, capsys):
    root = build_minimal(tmp_path / "maps")
    (root / relative).unlink()
    for strict in (False, True):
        with pytest.raises(MapsError) as caught:
            Maps(root).read(strict=strict)
        assert isinstance(caught.value, FileNotFoundError)
        assert f"missing {root / relative}" in str(caught.value)
    code, facts = status_facts(root, capsys)
    assert code == 0  # the status still shows what is there
    assert facts["readable"] is False and facts["missing_mandatory"] == [relative]
    assert status_main([str(root)]) == 0
    assert f"readable: no, 1 mandatory file(s) missing, first {relative}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "relative, named",
    [
        ("env/environment.txt", "env/environment.txt"),  # required once env/ exists
        ("training/data/validation/split-1", "training/data/validation/split-1/data.tsv"),
        ("training", "training"),
    ],
)
def test_missing_mandatory_directory_or_env_file(tmp_path, relative, named):
    root = build_minimal(tmp_path / "maps")
    _json(root / "env" / "system.json", {"gpus": []})
    _text(root / "env" / "environment.txt", "# snapshot\n")
    Maps(root).read()
    path = root / relative
    path.unlink() if path.is_file() else shutil.rmtree(path)
    with pytest.raises(MapsError, match=f"missing {root / named}"):
        Maps(root).read()


# ClinicaDL's full trainer output ------------------------------------------------------------


def typed_files(maps: Maps) -> list[Path | None]:
    """Every file reached through the typed API of a MAPS."""
    data = maps.training.data
    files = [
        maps.model_json,
        maps.metrics_json,
        maps.callbacks_json,
        maps.architecture_log,
        maps.nn_summary_txt,
        maps.summary_log,
        maps.env.environment_txt,
        maps.training.optimization_json,
        data.data_tsv,
    ]
    for subset in (data.train, data.validation):
        for split in subset.splits.values():
            files += [split.data_tsv, split.dataset_json, split.dataloader_json]
    for split in maps.training.splits.values():
        logs = split.logs
        files += [split.computational_json, split.summary_log, split.warning_log]
        files += [logs.training_loss_tsv, logs.computational_tsv]
        files += [logs.learning_rate_tsv(name) for name in logs.learning_rates_list]
        files += [split.validation_metrics.aggregated_tsv, split.validation_metrics.details_tsv]
        for name in split.models.names():
            model = split.models.get(name)
            metrics = model.validation_metrics
            files += [model.model_pt, metrics.aggregated_tsv, metrics.details_tsv]
    for group in maps.test.groups.values():
        files += [group.data_tsv, group.dataset_json, group.dataloader_json]
        for results in group.results.splits.values():
            for name in results.models:
                result = results.models[name]
                files += [result.computational_json]
                files += [result.metrics.aggregated_tsv, result.metrics.details_tsv]
    for run in maps.exec.runs.values():
        files += [run.info_log, run.error_log, run.debug_log]
    return files


def test_full_trainer_output_opens_with_every_part_typed(full_maps, capsys):
    maps = Maps(full_maps).read(strict=True)
    files = typed_files(maps)
    assert None not in files
    on_disk = {path for path in full_maps.rglob("*") if path.is_file()}
    assert set(files) == on_disk  # no file of the MAPS is out of reach of the typed API
    assert len(files) == len(on_disk)
    for path in files:
        content = Maps.open_file(path)
        expected = {".json": (dict, list), ".tsv": pd.DataFrame, ".pt": dict}
        assert isinstance(content, expected.get(path.suffix, str)), path
    split = maps.split(1)
    assert split.models.names() == ["best-BalancedAccuracy", "best-loss", "epoch-5", "final"]
    assert split.logs.learning_rates_list == ["Adam"]
    assert maps.test.groups["X"].results.splits.keys() == list(SPLITS)
    assert Maps.open_file(maps.model("split-1_best-loss").model_pt).keys() >= {
        "network.conv0.weight"
    }

    code, facts = status_facts(full_maps, capsys, "--strict")
    assert code == 0
    assert facts["readable"] is True and facts["complete"] is True
    assert facts["missing_files"] == []
    assert [s["state"] for s in facts["splits"]] == ["done", "done"]
    assert facts["splits"][1]["models"] == split.models.names()
    assert facts["splits"][1]["epochs_done"] == 10
    assert facts["splits"][1]["best"]["BalancedAccuracy"]["value"] == pytest.approx(1.0)


# Each optional part removed in turn ----------------------------------------------------------

S1 = "training/split-1"
X = "test/group-X"

# (part removed, what the typed API shows of it, whether read(strict=True) refuses the MAPS)
OPTIONAL = [
    ("architecture.log", lambda m: m.architecture_log is None, False),
    ("summary.log", lambda m: m.summary_log is None, False),
    ("nn_summary.txt", lambda m: m.nn_summary_txt is None, False),
    ("env", lambda m: not m.env.exists() and m.env.environment_txt is None, False),
    ("exec", lambda m: list(m.exec.runs) == [], False),
    (f"{S1}/computational.json", lambda m: m.split(1).computational_json is None, True),
    (f"{S1}/summary.log", lambda m: m.split(1).summary_log is None, True),
    (f"{S1}/warning.log", lambda m: m.split(1).warning_log is None, True),
    (
        f"{S1}/logs",
        lambda m: (
            m.split(1).logs.training_loss_tsv is None
            and m.split(1).logs.computational_tsv is None
            and m.split(1).logs.learning_rates_list == []
        ),
        True,
    ),
    (f"{S1}/logs/learning_rates", lambda m: m.split(1).logs.learning_rates is None, False),
    (
        f"{S1}/validation_metrics",
        lambda m: (
            m.split(1).validation_metrics.aggregated_tsv is None
            and m.split(1).validation_metrics.details_tsv is None
        ),
        True,
    ),
    (
        f"{S1}/models/best_models/best-BalancedAccuracy",
        lambda m: m.split(1).models.best_models.metrics_list == ["loss"],
        False,
    ),
    (
        f"{S1}/models/best_models/best-loss/validation_metrics",
        lambda m: (
            m.model("split-1_best-loss").validation_metrics.aggregated_tsv is None
            and m.model("split-1_best-loss").model_pt is not None
        ),
        True,
    ),
    (
        f"{S1}/models/checkpoints/epoch-5",
        lambda m: m.split(1).models.checkpoints.epochs_list == [],
        False,
    ),
    (f"{S1}/models/final", lambda m: "final" not in m.split(1).models.names(), False),
    (f"{S1}/models/final/model.pt", lambda m: m.split(1).models.final.model_pt is None, True),
    (f"{S1}/models", lambda m: m.split(1).models.names() == [], False),
    (
        f"{S1}/tmp",
        lambda m: not m.split(1).tmp.exists() and m.split(1).tmp.epochs_list == [],
        False,
    ),
    (
        S1,
        lambda m: m.training.splits_list == [0] and m.training.data.train.splits.keys() == [0, 1],
        True,
    ),
    ("test", lambda m: m.test.groups_list == [], False),
    (X, lambda m: m.test.groups_list == [], False),
    (f"{X}/dataset.json", lambda m: m.test_group("X").dataset_json is None, True),
    (f"{X}/results/split-1", lambda m: m.test_group("X").results.splits.keys() == [0], False),
    (
        f"{X}/results/split-0/final/computational.json",
        lambda m: m.test_group("X").results.splits[0].models["final"].computational_json is None,
        True,
    ),
    (
        f"{X}/results/split-0/best-loss/metrics",
        lambda m: (
            m.test_group("X").results.splits[0].models["best-loss"].metrics.aggregated_tsv is None
        ),
        True,
    ),
]


@pytest.mark.parametrize("relative, absent, strict_refuses", OPTIONAL, ids=[p[0] for p in OPTIONAL])
def test_each_optional_part_removed_still_opens(
    full_maps, full_copy, relative, absent, strict_refuses, capsys
):
    assert not absent(Maps(full_maps).read(strict=True))  # the check sees the part when present
    path = full_copy / relative
    path.unlink() if path.is_file() else shutil.rmtree(path)
    maps = Maps(full_copy).read()
    assert absent(maps)

    code, facts = status_facts(full_copy, capsys, "--strict")
    assert facts["readable"] is True
    if strict_refuses:
        with pytest.raises(MapsError) as caught:
            Maps(full_copy).read(strict=True)
        assert str(full_copy / relative) in str(caught.value)
        assert code == 1
        assert any(missing.startswith(relative) for missing in facts["missing_files"])
        owner = facts["splits"][1] if relative.startswith(S1) else facts["test_groups"][0]
        assert any(missing.startswith(relative) for missing in owner["missing"])
    else:
        Maps(full_copy).read(strict=True)
        assert code == 0 and facts["complete"] is True
