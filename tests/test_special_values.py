"""Every value the schema documents as special ("0 for none", "null takes ...") is accepted.

The schema's descriptions are walked for documented special values, and one
real workflow run sets all of them at once: a value the docs promise must not
be refused by the schema or by any step, and the run must end in a MAPS that
the reader, the status command and the report accept.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, TINY, run_snakemake
from snakemaps import configdoc
from snakemaps.maps import Maps

SCHEMA = ROOT / "config" / "config.schema.yaml"
# "0 for none", "0 turns it off", "0 keeps ...", "1 means ...", "null uses/takes ...",
# "(null for no clipping)", "null: [defaults]", "auto uses ...".
DOCUMENTED = re.compile(
    r"(?:^|[\s(])(0|1|null|auto)(?=\s+(?:for|turns|keeps|means|uses|takes)\b|:)"
)
VALUES = {"0": 0, "1": 1, "null": None, "auto": "auto"}


def documented_special_values() -> dict[str, object]:
    """Config key (dotted) -> the special value its description documents."""
    schema = yaml.safe_load(SCHEMA.read_text())
    found = {}
    for key, _, description in configdoc.rows(schema):
        for match in DOCUMENTED.finditer(description):
            found[key] = VALUES[match.group(1)]
    return found


def with_value(config: dict, key: str, value: object) -> dict:
    config = copy.deepcopy(config)
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value
    return config


def test_the_walk_finds_the_documented_values():
    found = documented_special_values()
    expected = {
        "data.tsv": None,
        "data.positive_class": None,
        "data.synthetic.n_test_participants": 0,
        "split.n_splits": 1,
        "train.device": "auto",
        "train.clip_grad_norm": None,
        "train.bn_recalibration_batches": 0,
        "train.monitor": None,
        "train.metrics": None,
        "train.early_stopping.patience": 0,
        "train.lr_scheduler.name": None,
    }
    assert expected.items() <= found.items(), found


@pytest.mark.parametrize(("key", "value"), sorted(documented_special_values().items()))
def test_the_schema_accepts_each_documented_value(key, value):
    from snakemake.utils import validate

    config = with_value(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), key, value)
    validate(config, str(SCHEMA))


@pytest.mark.workflow
def test_a_run_with_every_documented_value_completes(tmp_path):
    special = documented_special_values()
    config = copy.deepcopy(TINY)
    for key, value in special.items():
        config = with_value(config, key, value)
    config["train"]["save_epochs"] = []
    result = run_snakemake(tmp_path, config=config)
    assert result.returncode == 0, result.stderr[-5000:]

    maps_dir = tmp_path / "results" / "maps"
    maps = Maps(maps_dir).read()
    assert maps.training.splits_list == [0]  # n_splits 1: a single split
    assert maps.test.groups_list == []
    assert not (tmp_path / "results" / "data" / "synthetic" / "test.tsv").exists()
    assert (maps.split(0).models.final.validation_metrics.aggregated_tsv).is_file()
    figures = sorted(p.name for p in (tmp_path / "reports" / "results" / "maps").iterdir())
    assert "learning_curves.png" in figures, figures

    status = subprocess.run(
        [sys.executable, "-m", "snakemaps.maps", str(maps_dir), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "scripts"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["splits"], status.stdout

    report = run_snakemake(tmp_path, "--report", "report.html", config=config)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report.html").stat().st_size > 10_000


@pytest.mark.workflow
def test_a_one_participant_test_group_stops_before_any_job(tmp_path):
    config = with_value(TINY, "data.synthetic.n_test_participants", 1)
    result = run_snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert (
        "data.synthetic.n_test_participants must be 0 (no test group)"
        in result.stdout + result.stderr
    )
    assert not (tmp_path / "results").exists()
