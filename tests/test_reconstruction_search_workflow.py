"""A random search of autoencoders (data.task: reconstruction) through real snakemake.

The runs are sampled from a ClinicaDL ``random_search.json`` whose
``network_type`` is ``autoencoder``, trained and validated in one DAG,
and ranked by their validation loss, lowest first. A classification search
that samples an autoencoder stops before any job, naming the fix.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import TINY, run_snakemake

pytestmark = pytest.mark.workflow

SPACE = {
    "network_type": "autoencoder",
    "epochs": 4,
    "batch_size": 4,
    "learning_rate": [2, 2.5],
    "n_convblocks": [2, 3],
    "first_conv_width": [4, 8],
    "channels_limit": 16,
    "evaluation_steps": 2,
    # Mandatory in ClinicaDL's random_search.json; an autoencoder keeps the
    # CNN's convolutions only, as ClinicaDL builds it (model.json says so).
    "n_fcblocks": [1, 2],
}
# No held-out group: the transfer tests test an autoencoder's MAPS on one.
SEARCH = {
    **TINY,
    "data": {
        "synthetic": {**TINY["data"]["synthetic"], "n_test_participants": 0},
        "task": "reconstruction",
    },
    "model": {"network_type": "autoencoder"},
    "split": {"n_splits": 1},
    "random_search": {"n_runs": 2, "seed": 3, "space": SPACE},
}
LAUNCH = "results/random_search"


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reconstruction_search")
    result = run_snakemake(workdir, "random_search", config=SEARCH)
    assert result.returncode == 0, result.stderr[-5000:]
    # n_fcblocks is said to set no layer of an autoencoder, not dropped unsaid
    assert "NOTE: random_search.json n_fcblocks: an autoencoder keeps" in result.stderr
    return workdir


def test_autoencoder_runs_are_ranked_by_validation_loss(search):
    launch = search / LAUNCH
    ranked = pd.read_csv(launch / "ranked_runs.tsv", sep="\t")
    assert list(ranked["status"]) == ["done", "done"]
    assert list(ranked["rank"]) == [1, 2]
    assert list(ranked["network_type"]) == ["autoencoder", "autoencoder"]
    assert list(ranked["evaluation_steps"]) == [2, 2]
    assert ranked["loss_mean"].is_monotonic_increasing, ranked
    assert all(math.isfinite(v) for v in ranked["loss_mean"])
    # the reconstruction metrics of each best-loss model, beside the loss
    assert {"MSE_mean", "PSNR_mean", "SSIM_mean"} <= set(ranked.columns)
    # the sampled options are in the table and in options.json
    for job, rate in zip(ranked["job"], ranked["learning_rate"], strict=True):
        options = json.loads((launch / job / "options.json").read_text())
        assert options["network_type"] == "autoencoder"
        assert math.isclose(options["learning_rate"], rate)
    # balanced-accuracy threshold tables belong to classification searches only
    assert not (launch / "analysis_balanced_accuracy.tsv").exists()
    assert not (launch / "analysis_loss.tsv").exists()
    assert (search / f"reports/{LAUNCH}/ranked_runs.png").stat().st_size > 10_000


def test_every_sampled_autoencoder_learns(search):
    for job in ("job-0", "job-1"):
        maps = search / LAUNCH / job / "maps"
        model = json.loads((maps / "model.json").read_text())
        assert model["task"] == "reconstruction"
        assert model["network"]["name_"] == "AutoEncoder"
        logged = pd.read_csv(maps / "training/split-0/validation_metrics/aggregated.tsv", sep="\t")
        first, last = logged["MSE"].iloc[0], logged["MSE"].iloc[-1]
        assert last < 0.8 * first, (job, list(logged["MSE"]))
        # the sampled evaluation_steps: a validation every 2 of the 5 steps, and at the end
        assert set(logged["batch"]) == {1, 3, 4}, logged


def test_a_classification_search_that_samples_an_autoencoder_stops_naming_the_fix(tmp_path):
    space = {**SPACE, "network_type": ["cnn", "autoencoder"]}
    config = {**TINY, "random_search": {"n_runs": 4, "seed": 0, "space": space}}
    result = run_snakemake(tmp_path, "-n", "random_search", config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "network_type 'autoencoder' was sampled" in output, output[-3000:]
    assert "set data.task: reconstruction and model.network_type: autoencoder" in output
