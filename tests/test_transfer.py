"""Transfer learning and the autoencoder, without Snakemake."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from snakemaps.errors import UserError
from snakemaps.experiment import model_json
from snakemaps.models.autoencoder import autoencoder_description
from snakemaps.models.description import default_description
from snakemaps.models.network import build_network
from snakemaps.tasks import check_network_task, check_search_run
from snakemaps.train import metrics as M
from snakemaps.train.evaluation import Objective
from snakemaps.train.transfer import apply_transfer, check_source, match_state

TRAIN = {"optimizer": "Adam", "learning_rate": 1e-3, "weight_decay": 0.0}


def cnn_description(channels=(4, 8), d_reduction="MaxPooling", n_conv=1):
    description = {"name_": "CNN", **default_description(list(channels), 2, 0.0, "BatchNorm")}
    for block in description["convolutions"].values():
        block.update(d_reduction=d_reduction, n_conv=n_conv)
    return description


@pytest.mark.parametrize(("d_reduction", "n_conv"), [("MaxPooling", 1), ("stride", 2)])
def test_the_autoencoder_mirrors_the_cnn_and_keeps_the_input_shape(d_reduction, n_conv):
    cnn = build_network(cnn_description(d_reduction=d_reduction, n_conv=n_conv))
    ae = build_network(
        autoencoder_description(cnn_description(d_reduction=d_reduction, n_conv=n_conv))
    )

    def shapes(state, prefix):
        return {k.removeprefix(prefix): v.shape for k, v in state.items() if k.startswith(prefix)}

    # The encoder is the CNN's convolutional part, name for name and shape for shape.
    assert shapes(ae.state_dict(), "encoder.") == shapes(cnn.state_dict(), "convolutions.")
    transposed = [m for m in ae.decoder.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert [(m.in_channels, m.out_channels) for m in transposed][-1] == (4, 1)
    x = torch.rand(2, 1, 13, 16, 11)  # odd sizes: ceil-mode pooling and strides undone
    assert ae(x).shape == x.shape


def test_layers_match_by_name_after_clinicadl_renaming():
    cnn = build_network(cnn_description()).state_dict()
    ae = build_network(autoencoder_description(cnn_description())).state_dict()
    copied, left, unused = match_state(cnn, ae, "CNN", "AutoEncoder")
    assert copied["convolutions.0.0.weight"] == "encoder.0.0.weight"
    assert set(copied) == {k for k in cnn if k.startswith("convolutions.")}
    assert left == [k for k in cnn if k.startswith("fc.")]
    assert unused and all(k.startswith("decoder.") for k in unused)
    back, left, _ = match_state(ae, cnn, "AutoEncoder", "CNN")
    assert back["encoder.1.0.bias"] == "convolutions.1.0.bias"
    assert all(k.startswith("decoder.") for k in left)


def test_a_shape_mismatch_names_the_layer():
    target = build_network(cnn_description((4, 8))).state_dict()
    source = build_network(cnn_description((4, 16))).state_dict()
    with pytest.raises(UserError, match=r"layer 'convolutions\.1\.0' does not fit") as error:
        match_state(target, source, "CNN", "CNN", "src/model.pt")
    assert "[8, 4, 3, 3, 3]" in str(error.value) and "[16, 4, 3, 3, 3]" in str(error.value)


def test_a_source_with_nothing_in_common_is_refused():
    with pytest.raises(UserError, match="no layer of"):
        match_state({"a.weight": torch.zeros(1)}, {"b.weight": torch.zeros(1)}, "CNN", "CNN")


def write_source(tmp_path, description, task="reconstruction"):
    maps = tmp_path / "source"
    model = maps / "training/split-0/models/best_models/best-loss/model.pt"
    model.parent.mkdir(parents=True)
    network = build_network(description)
    torch.save({f"network.{k}": v for k, v in network.state_dict().items()}, model)
    (maps / "model.json").write_text(json.dumps({"task": task, "network": description}))
    return maps, network


def test_missing_sources_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match=r"train\.transfer_learning\.path: .* is not a MAPS"):
        check_source({"path": str(tmp_path / "nowhere"), "selection": "best-loss"}, 0)
    maps, _ = write_source(tmp_path, autoencoder_description(cnn_description()))
    with pytest.raises(UserError, match="saved models of that split: best-loss"):
        check_source({"path": str(maps), "selection": "best-BalancedAccuracy"}, 0)
    with pytest.raises(UserError, match="train split-1 of the source first"):
        check_source({"path": str(maps), "selection": "best-loss"}, 1)
    assert check_source({"path": None}, 0) is None


def test_apply_transfer_copies_the_encoder_and_records_its_hash(tmp_path):
    maps, source = write_source(tmp_path, autoencoder_description(cnn_description()))
    torch.manual_seed(1)
    cnn = build_network(cnn_description())
    record = apply_transfer(cnn, {"path": str(maps), "selection": "best-loss"}, 0, "CNN")
    for name, tensor in cnn.convolutions.state_dict().items():
        assert torch.equal(tensor, source.encoder.state_dict()[name])
    assert len(record["sha256"]) == 64 and record["file"].endswith("best-loss/model.pt")
    assert record["source_network"] == "AutoEncoder"


def test_network_type_and_task_must_agree():
    check_network_task({"network_type": "autoencoder"}, "reconstruction")
    check_network_task({}, "classification")
    with pytest.raises(UserError, match="model.network_type is 'cnn' but data.task"):
        check_network_task({}, "reconstruction")
    with pytest.raises(UserError, match="set both, or neither"):
        check_network_task({"network_type": "autoencoder"}, "classification")
    model = model_json(
        {"network_type": "autoencoder", "conv_channels": [4, 8]},
        TRAIN,
        [1, 16, 16, 16],
        ["AD", "CN"],
        task="reconstruction",
    )
    assert model["network"]["name_"] == "AutoEncoder" and "fc" not in model["network"]
    assert model["loss"]["name_"] == "MSELoss"


def test_reconstruction_loss_and_metrics():
    objective = Objective.of({"task": "reconstruction"})
    inputs = torch.rand(3, 1, 12, 12, 12)
    perfect = objective.outputs(inputs.clone(), inputs)
    noisy = objective.outputs(inputs + 0.1 * torch.randn_like(inputs), inputs)
    assert np.allclose(perfect["MSE"], 0) and np.allclose(perfect["SSIM"], 1)
    assert (noisy["MSE"] > 0.005).all() and (noisy["SSIM"] < 0.99).all()
    assert np.isfinite(noisy["PSNR"]).all() and (noisy["PSNR"] > 15).all()
    losses = objective.loss(inputs * 0, None, reduction="none", inputs=inputs).numpy()
    assert np.allclose(losses, (inputs**2).flatten(1).mean(1).numpy())
    values = M.compute(["loss", "MSE", "PSNR", "SSIM"], np.zeros(3), noisy, losses)
    assert values["MSE"] == pytest.approx(noisy["MSE"].mean())
    with pytest.raises(UserError, match="not a reconstruction metric"):
        M.check_metric_names(["BalancedAccuracy"], "train.metrics", "reconstruction")


def test_random_search_keys_map_onto_train_transfer_learning(tmp_path):
    from snakemaps.search.sampling import sample_options, to_config_overrides

    space = {
        "epochs": 2,
        "n_convblocks": 2,
        "first_conv_width": 4,
        "n_fcblocks": 1,
        "transfer_learning_path": "results/ae",
        "transfer_learning_selection": ["best_loss", "best_balanced_accuracy"],
    }
    selections = set()
    for seed in range(8):
        options = sample_options(space, seed)
        train = to_config_overrides(options)["train"]
        assert train["transfer_learning"]["path"] == "results/ae"
        selections.add(train["transfer_learning"]["selection"])
    assert selections == {"best-loss", "best-BalancedAccuracy"}
    # No selection: ClinicaDL's default, best_loss for an autoencoder source.
    maps, _ = write_source(tmp_path, autoencoder_description(cnn_description()))
    overrides = to_config_overrides({"transfer_learning_path": str(maps)})
    assert overrides["train"]["transfer_learning"]["selection"] == "best-loss"
    overrides = to_config_overrides({"transfer_learning_path": str(tmp_path / "cnn")})
    assert overrides["train"]["transfer_learning"]["selection"] == "best-BalancedAccuracy"
    with pytest.raises(UserError, match="'transfer_learning_path' is not"):
        to_config_overrides({"transfer_learning_selection": "best_loss"})
    with pytest.raises(UserError, match="'transfer_learning_selection' must be"):
        sample_options({**space, "transfer_learning_selection": "best_auc"}, 0)


def test_a_sampled_network_of_another_task_is_refused_naming_the_fix():
    autoencoder = {
        "data": {"task": "classification"},
        "model": {"network_type": "autoencoder"},
        "train": {"monitor": ["loss", "BalancedAccuracy"]},
    }
    with pytest.raises(
        UserError,
        match="random search job-3: network_type 'autoencoder' was "
        "sampled, but this search's data.task is 'classification'.*set data.task: "
        "reconstruction and model.network_type: autoencoder",
    ):
        check_search_run("job-3", autoencoder, "classification")
    cnn = {**autoencoder, "data": {"task": "reconstruction"}, "model": {"network_type": "cnn"}}
    with pytest.raises(UserError, match="'cnn' was sampled.*trains autoencoders only"):
        check_search_run("job-1", cnn, "reconstruction")
    check_search_run("job-0", {**autoencoder, "model": {}}, "classification")
    check_search_run("job-2", {**cnn, "model": {"network_type": "autoencoder"}}, "reconstruction")


def test_cnn_to_cnn_transfer_copies_every_parameter(tmp_path):
    description = cnn_description()
    maps, source = write_source(tmp_path, description, task="classification")
    torch.manual_seed(2)
    cnn = build_network(description)
    record = apply_transfer(cnn, {"path": str(maps), "selection": "best-loss"}, 0, "CNN")
    for name, parameter in cnn.named_parameters():
        assert torch.equal(parameter, dict(source.named_parameters())[name]), name
    assert record["left_initialized"] == [] and record["source_unused"] == []
