"""An autoencoder, then transfer learning from it, through the real workflow.

One chain of runs in one working directory (the demo cohort is generated and
prepared once), as in ClinicaDL's experiments:

1. an autoencoder MAPS (``model.network_type: autoencoder``, ``data.task:
   reconstruction``), trained, validated, tested and drawn in the report;
2. a CNN with ``train.transfer_learning`` from it and a learning rate of 0:
   every parameter with a counterpart in the source (all of its convolutions)
   must equal the autoencoder's encoder, tensor for tensor; the fully
   connected layers have none and keep their initial weights (CNN to CNN,
   where every parameter matches, is checked in test_transfer.py);
3. dry runs: new weights in the source model make Snakemake retrain; a missing
   source stops the DAG naming the key.
"""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from conftest import TINY, job_counts, run_snakemake
from snakemaps.maps import Maps

pytestmark = pytest.mark.workflow

BASE = {
    **TINY,
    "split": {"n_splits": 1},
    "model": {"conv_channels": [8, 16]},
    "train": {**TINY["train"], "save_epochs": [], "epochs": 5, "learning_rate": 0.01},
}
AE = {
    **copy.deepcopy(BASE),
    "maps_dir": "results/ae",
    "data": {**TINY["data"], "task": "reconstruction"},
    "model": {**BASE["model"], "network_type": "autoencoder"},
}


def cnn_from(source: str, maps_dir: str) -> dict:
    config = copy.deepcopy(BASE)
    config["maps_dir"] = maps_dir
    config["train"].update(
        epochs=1,
        learning_rate=0.0,
        transfer_learning={"path": source, "selection": "best-loss"},
    )
    return config


def final_model(maps_dir: str) -> str:
    return f"{maps_dir}/training/split-0/models/final/model.pt"


def weights(path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("network."): v for k, v in state.items()}


def parameter_names(maps_dir) -> list[str]:
    from snakemaps.models.network import build_network

    model = json.loads((maps_dir / "model.json").read_text())
    return [name for name, _ in build_network(model["network"]).named_parameters()]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("transfer")
    figure = "reports/results/ae/group-test/reconstruction_best-loss.png"
    validated = "results/ae/training/split-0/models/best_models/best-loss/validation_metrics"
    result = run_snakemake(workdir, figure, f"{validated}/aggregated.tsv", config=AE)
    assert result.returncode == 0, result.stderr[-5000:]
    cnn = cnn_from("results/ae", "results/cnn")
    result = run_snakemake(workdir, final_model("results/cnn"), config=cnn)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def test_the_autoencoder_learns_and_every_step_handles_it(chain):
    maps = Maps(chain / "results" / "ae").read()
    model = json.loads(maps.model_json.read_text())
    assert model["task"] == "reconstruction" and model["network"]["name_"] == "AutoEncoder"
    assert model["loss"]["name_"] == "MSELoss"
    assert list(json.loads(maps.metrics_json.read_text())["metrics"]) == [
        "loss",
        "MSE",
        "PSNR",
        "SSIM",
    ]
    split = maps.split(0)
    assert split.models.names() == ["best-loss", "final"]  # best models by loss only
    log = pd.read_csv(split.validation_metrics.aggregated_tsv, sep="\t")
    first, last = log.iloc[0], log.iloc[-1]
    # Reconstruction error falls by a fifth at least over 5 epochs, and PSNR and
    # SSIM rise: an autoencoder that does not learn (or a decoder cut off from
    # its encoder) stays where it starts.
    assert last["MSE"] < 0.8 * first["MSE"], log
    assert last["PSNR"] > first["PSNR"] + 0.5 and last["SSIM"] > first["SSIM"], log
    validated = split.models.get("best-loss").validation_metrics.aggregated_tsv
    assert list(pd.read_csv(validated, sep="\t").columns) == ["epoch", *log.columns[1:]]
    result = maps.test.groups["test"].results.splits[0].models["best-loss"].metrics
    details = pd.read_csv(result.details_tsv, sep="\t")
    assert list(details.columns) == ["participant_id", "session_id", "loss", "MSE", "PSNR", "SSIM"]
    assert len(details) == len(pd.read_csv(maps.test.groups["test"].data_tsv, sep="\t"))
    figure = chain / "reports/results/ae/group-test/reconstruction_best-loss.png"
    assert figure.stat().st_size > 20_000


def test_transfer_from_the_autoencoder_copies_its_encoder(chain):
    source = weights(chain / "results/ae/training/split-0/models/best_models/best-loss/model.pt")
    target = weights(chain / final_model("results/cnn"))
    names = parameter_names(chain / "results" / "cnn")
    convolutions = [n for n in names if n.startswith("convolutions.")]
    assert len(convolutions) == 8  # 2 blocks x (conv weight, bias, BN weight, bias)
    # Learning rate 0: every convolution parameter is still the encoder's.
    for name in convolutions:
        assert torch.equal(target[name], source["encoder." + name.removeprefix("convolutions.")])
    record = provenance(chain / "results" / "cnn")
    assert record["source_network"] == "AutoEncoder" and record["target_network"] == "CNN"
    assert set(convolutions) <= set(record["copied"])
    assert all(name.startswith("fc.") for name in record["left_initialized"])
    assert any(name.startswith("decoder.") for name in record["source_unused"])
    log = (chain / "logs/results/cnn/train_split-0.log").read_text()
    assert record["sha256"] in log and "best-loss/model.pt" in log


def provenance(maps_dir) -> dict:
    records = [
        record
        for path in sorted((maps_dir / "exec").glob("run-train_*/provenance.json"))
        for record in json.loads(path.read_text())
    ]
    assert len(records) == 1, records
    return records[0]["transfer_learning"]


def test_a_changed_source_retrains_and_a_missing_one_stops_the_dag(chain):
    cnn = cnn_from("results/ae", "results/cnn")
    target = final_model("results/cnn")
    result = run_snakemake(chain, "-n", target, config=cnn)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "train" not in job_counts(output), output
    # A touch is not a change (Snakemake compares the checksums of small files): new weights.
    source = chain / "results/ae/training/split-0/models/best_models/best-loss/model.pt"
    original = source.read_bytes()
    state = torch.load(source, weights_only=True)
    state["network.encoder.0.0.bias"] += 1.0
    torch.save(state, source)
    try:
        result = run_snakemake(chain, "-n", target, config=cnn)
    finally:
        source.write_bytes(original)
    output = result.stdout + result.stderr
    assert job_counts(output).get("train") == 1, output
    assert "results/ae/training/split-0/models/best_models/best-loss/model.pt" in output

    missing = cnn_from("results/nowhere", "results/cnn3")
    result = run_snakemake(chain, "-n", final_model("results/cnn3"), config=missing)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "train.transfer_learning.path: results/nowhere is not a MAPS" in output, output


def test_random_search_samples_the_transfer_keys(chain):
    from snakemaps.search.analysis import ranked_table

    space = {
        "epochs": 1,
        "n_convblocks": 2,
        "first_conv_width": 8,
        "n_fcblocks": 1,
        "channels_limit": 16,
        "transfer_learning_path": "results/ae",
        "transfer_learning_selection": ["best_loss"],
    }
    config = {**BASE, "random_search": {"n_runs": 1, "space": space}}
    launch = "results/random_search"
    result = run_snakemake(chain, f"{launch}/job-0/options.json", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    options = json.loads((chain / launch / "job-0/options.json").read_text())
    assert options["transfer_learning_path"] == "results/ae"
    assert options["transfer_learning_selection"] == "best_loss"
    ranked = ranked_table({"job-0": options}, {"job-0": {"BalancedAccuracy": [0.5]}})
    assert ranked.loc[0, "transfer_learning_path"] == "results/ae"
    # The run's training starts from the source: its model file is the train job's input.
    result = run_snakemake(chain, "-n", "-p", "random_search", config=config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    train = output.split("rule train:", 1)[1].split("\n\n", 1)[0]
    assert "results/ae/training/split-0/models/best_models/best-loss/model.pt" in train, train
