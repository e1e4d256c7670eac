"""A regression experiment through the real workflow: the demo's MMSE-like score."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, run_snakemake
from snakemaps.maps import Maps

pytestmark = pytest.mark.workflow

REGRESSION = {
    **TINY,
    "data": {**TINY["data"], "label": "mmse", "task": "regression"},
    "split": {"n_splits": 1},
    "train": {**TINY["train"], "save_epochs": []},
}


def test_regression_writes_a_complete_maps(tmp_path):
    # A label that is not a number is refused before anything is trained.
    bad = {**REGRESSION, "data": {**REGRESSION["data"], "label": "sex"}}
    result = run_snakemake(tmp_path, "results/maps/model.json", config=bad)
    assert result.returncode != 0
    assert "data.task is regression but the label column holds value(s)" in result.stderr
    assert "'F', 'M'" in result.stderr or "'M', 'F'" in result.stderr
    assert not (tmp_path / "results/maps/model.json").exists()

    # The same cohort with the MMSE-like score as the target (generated once).
    result = run_snakemake(tmp_path, config=REGRESSION)
    assert result.returncode == 0, result.stderr[-5000:]
    maps = Maps(tmp_path / "results" / "maps").read(strict=True)
    model = json.loads(maps.model_json.read_text())
    assert model["task"] == "regression" and model["classes"] is None
    assert model["loss"]["name_"] == "MSELoss"
    last_layer = list(model["network"]["fc"].values())[-1]
    assert last_layer["out_features"] == 1
    scores = pd.read_csv(tmp_path / "results/data/synthetic/participants.tsv", sep="\t")["mmse"]
    assert np.isclose(model["target"]["mean"], scores.mean())
    metrics = json.loads(maps.metrics_json.read_text())["metrics"]
    assert list(metrics) == ["loss", "MAE", "MSE", "R2"]
    for k in (0,):
        split = maps.split(k)
        assert split.models.names() == ["best-MAE", "best-loss", "final"]
        log = pd.read_csv(split.validation_metrics.aggregated_tsv, sep="\t")
        assert list(log.columns) == ["epoch", "loss", "MAE", "MSE", "R2"]
        assert np.isfinite(log[["loss", "MAE", "MSE", "R2"]].to_numpy()).all()
        details = pd.read_csv(
            maps.test.groups["test"].results.splits[k].models["best-MAE"].metrics.details_tsv,
            sep="\t",
        )
        truth = details["label"].astype(float)
        predicted = details["prediction"].astype(float)
        assert predicted.notna().all() and not any(c.startswith("proba") for c in details)
        aggregated = pd.read_csv(
            maps.test.groups["test"].results.splits[k].models["best-MAE"].metrics.aggregated_tsv,
            sep="\t",
        )
        assert np.isclose(aggregated["MAE"].iloc[0], (predicted - truth).abs().mean())
    summary = pd.read_csv(maps.test.groups["test"].summary_tsv("MAE"), sep="\t")
    assert list(summary["split"]) == ["0", "mean", "std"]
    figure = tmp_path / "reports/results/maps/group-test/predictions_best-MAE.png"
    assert figure.stat().st_size > 20_000
    assert not list((tmp_path / "reports").rglob("confusion_roc_*"))
    assert (
        "split-0 best-MAE on group-test"
        in (tmp_path / "logs/results/maps/test_group-test.log").read_text()
    )
