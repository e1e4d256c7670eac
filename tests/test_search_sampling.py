"""Random-search sampling: samplers, defaults, validation, architectures, seeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from snakemaps.errors import UserError
from snakemaps.search.sampling import (
    DEFAULTS,
    SAMPLING_FUNCTIONS,
    build_architecture,
    load_space,
    run_seed,
    sample_options,
    sample_runs,
    to_config_overrides,
    validate_space,
)

EXAMPLE = ROOT / "config" / "examples" / "random_search.json"
DRAWS = 300

# The seed's random_search.json, CAPS keys included.
SEED_SPACE = {
    "mode": ["patch", "image"],
    "network_type": "cnn",
    "caps_dir": "/path/to/caps",
    "preprocessing": "t1-linear",
    "tsv_path": "/path/to/tsv",
    "diagnoses": ["AD", "CN"],
    "epochs": 100,
    "learning_rate": [2, 5],
    "wd_bool": [True, False],
    "weight_decay": [2, 4],
    "dropout": [0, 0.9],
    "n_convblocks": [2, 6],
    "first_conv_width": [4, 8, 16, 32],
    "channels_limit": 64,
    "d_reduction": ["MaxPooling", "stride"],
    "network_normalization": [None, "BatchNorm"],
    "n_conv": [1, 2],
    "n_fcblocks": [1, 3],
}

MINIMAL = {"epochs": 3, "n_convblocks": 2, "first_conv_width": 4, "n_fcblocks": 1}


def draws(space: dict, n: int = DRAWS) -> list[dict]:
    return sample_runs(space, n, seed=123)


def test_choice_picks_listed_values_with_their_types():
    runs = draws(SEED_SPACE)
    widths = {run["first_conv_width"] for run in runs}
    assert widths == {4, 8, 16, 32}
    assert all(type(run["first_conv_width"]) is int for run in runs)
    assert {run["d_reduction"] for run in runs} == {"MaxPooling", "stride"}
    assert {run["network_normalization"] for run in runs} == {None, "BatchNorm"}
    assert {run["mode"] for run in runs} == {"patch", "image"}
    assert {run["wd_bool"] for run in runs} == {True, False}
    assert all(type(run["wd_bool"]) is bool for run in runs)


def test_uniform_stays_in_bounds():
    values = [run["dropout"] for run in draws(SEED_SPACE)]
    assert all(type(v) is float and 0 <= v <= 0.9 for v in values)
    assert min(values) < 0.1 and max(values) > 0.8


def test_exponent_gives_ten_to_minus_x():
    values = [run["learning_rate"] for run in draws(SEED_SPACE)]
    assert all(type(v) is float and 1e-5 <= v <= 1e-2 for v in values)
    assert min(values) < 1e-4 < max(values)


def test_randint_includes_both_bounds():
    runs = draws(SEED_SPACE)
    assert {run["n_convblocks"] for run in runs} == {2, 3, 4, 5, 6}
    assert {run["n_fcblocks"] for run in runs} == {1, 2, 3}
    assert all(type(run["n_convblocks"]) is int for run in runs)


def test_n_conv_is_sampled_per_block_within_bounds():
    runs = draws(SEED_SPACE)
    for run in runs:
        assert len(run["n_conv"]) == run["n_convblocks"]
        assert all(type(n) is int and 1 <= n <= 2 for n in run["n_conv"])
    assert any(len(set(run["n_conv"])) > 1 for run in runs)


def test_fixed_values_are_kept_as_given():
    run = sample_options(SEED_SPACE, seed=0)
    assert run["epochs"] == 100
    assert run["channels_limit"] == 64
    assert run["diagnoses"] == ["AD", "CN"]
    assert run["caps_dir"] == "/path/to/caps"
    assert run["network_type"] == "cnn"


def test_scalars_of_sampled_keys_are_fixed_and_exponent_scalars_convert():
    space = {**MINIMAL, "learning_rate": 3, "dropout": 0.25, "d_reduction": "stride"}
    run = sample_options(space, seed=1)
    assert run["learning_rate"] == pytest.approx(1e-3)
    assert run["dropout"] == 0.25
    assert run["d_reduction"] == "stride"
    assert run["n_convblocks"] == 2 and run["n_conv"] == [1, 1]


def test_an_unknown_key_is_refused_naming_it_and_the_closest_known_one():
    """A key that would change nothing in the runs stops the search (nothing silently ignored)."""
    with pytest.raises(
        UserError, match=r"unknown key 'learning_rte': did you mean 'learning_rate'"
    ):
        validate_space({**MINIMAL, "learning_rte": [2, 4]})
    with pytest.raises(UserError, match=r"unknown key 'my_flag': a key this workflow"):
        validate_space({**MINIMAL, "my_flag": "x"})


def test_defaults_fill_missing_optional_keys():
    run = sample_options(MINIMAL, seed=0)
    assert run["channels_limit"] == 512
    assert run["d_reduction"] == "MaxPooling"
    assert run["n_conv"] == [1, 1]
    assert run["network_normalization"] == "BatchNorm"
    assert run["learning_rate"] == pytest.approx(1e-4)
    assert run["wd_bool"] is True
    assert run["weight_decay"] == pytest.approx(1e-4)
    assert run["dropout"] == 0.0
    assert run["patience"] == 0
    assert run["tolerance"] == 0.0
    assert set(DEFAULTS) <= set(run)


def test_weight_decay_is_zero_when_wd_bool_is_false():
    runs = draws(SEED_SPACE)
    for run in runs:
        if run["wd_bool"]:
            assert 1e-4 <= run["weight_decay"] <= 1e-2
        else:
            assert run["weight_decay"] == 0.0
    off = sample_options({**MINIMAL, "wd_bool": False, "weight_decay": 2}, seed=0)
    assert off["weight_decay"] == 0.0


def test_none_string_normalization_samples_to_none():
    run = sample_options({**MINIMAL, "network_normalization": "None"}, seed=0)
    assert run["network_normalization"] is None


def test_sampling_table_covers_the_seed_functions():
    expected = {
        "learning_rate": "exponent",
        "weight_decay": "exponent",
        "dropout": "uniform",
        "n_convblocks": "randint",
        "n_fcblocks": "randint",
        "n_conv": "randint",
        "first_conv_width": "choice",
        "d_reduction": "choice",
        "network_normalization": "choice",
        "wd_bool": "choice",
        "batch_size": "choice",
        "epochs": "fixed",
        "channels_limit": "fixed",
        "patience": "fixed",
        "tolerance": "fixed",
        "accumulation_steps": "fixed",
        "diagnoses": "fixed",
    }
    assert {key: SAMPLING_FUNCTIONS[key] for key in expected} == expected


def test_seed_example_1_architecture():
    options = {
        "n_convblocks": 5,
        "first_conv_width": 8,
        "channels_limit": 64,
        "d_reduction": "MaxPooling",
        "n_fcblocks": 2,
        "n_conv": [2, 3, 2, 1, 1],
        "network_normalization": None,
        "dropout": 0.06792280327917641,
    }
    arch = build_architecture(options, (169, 208, 179), n_classes=2)
    assert arch["convolutions"] == {
        "conv0": {"in_channels": 1, "out_channels": 8, "n_conv": 2, "d_reduction": "MaxPooling"},
        "conv1": {"in_channels": 8, "out_channels": 16, "n_conv": 3, "d_reduction": "MaxPooling"},
        "conv2": {"in_channels": 16, "out_channels": 32, "n_conv": 2, "d_reduction": "MaxPooling"},
        "conv3": {"in_channels": 32, "out_channels": 64, "n_conv": 1, "d_reduction": "MaxPooling"},
        "conv4": {"in_channels": 64, "out_channels": 64, "n_conv": 1, "d_reduction": "MaxPooling"},
    }
    assert arch["fc"] == {
        "FC0": {"in_features": 16128, "out_features": 180},
        "FC1": {"in_features": 180, "out_features": 2},
    }
    assert arch["dropout"] == 0.06792280327917641
    assert arch["network_normalization"] is None
    assert list(arch) == ["convolutions", "fc", "dropout", "network_normalization"]


def test_seed_example_2_architecture_on_a_50_cube_patch():
    options = {
        "n_convblocks": 3,
        "first_conv_width": 16,
        "channels_limit": 64,
        "d_reduction": "stride",
        "n_fcblocks": 1,
        "n_conv": [2, 3, 2],
        "dropout": 0.5783296483092104,
    }
    # 50 -> 25 -> 13 -> 7 per dimension; 64 * 7**3 = 21952.
    arch = build_architecture(options, (50, 50, 50), n_classes=2)
    channels = [(c["in_channels"], c["out_channels"]) for c in arch["convolutions"].values()]
    assert channels == [(1, 16), (16, 32), (32, 64)]
    assert {c["d_reduction"] for c in arch["convolutions"].values()} == {"stride"}
    assert arch["fc"] == {"FC0": {"in_features": 21952, "out_features": 2}}


def test_channels_double_and_cap_at_channels_limit():
    options = {**MINIMAL, "n_convblocks": 6, "first_conv_width": 4, "channels_limit": 32}
    arch = build_architecture(options, (40, 48, 40), n_classes=2, in_channels=3)
    outs = [c["out_channels"] for c in arch["convolutions"].values()]
    assert outs == [4, 8, 16, 32, 32, 32]
    assert arch["convolutions"]["conv0"]["in_channels"] == 3
    assert arch["convolutions"]["conv0"]["n_conv"] == 1  # default n_conv


def test_fc_ratios_are_equal():
    options = {**MINIMAL, "n_convblocks": 2, "first_conv_width": 8, "n_fcblocks": 3}
    arch = build_architecture(options, (32, 32, 32), n_classes=2)
    sizes = [arch["fc"]["FC0"]["in_features"]] + [fc["out_features"] for fc in arch["fc"].values()]
    # 16 channels * 8**3 = 8192 features; ratio (8192 / 2) ** (1/3) = 16.
    assert sizes == [8192, 512, 32, 2]
    assert all(
        arch["fc"][f"FC{i}"]["out_features"] == arch["fc"][f"FC{i + 1}"]["in_features"]
        for i in range(2)
    )


def test_sampled_runs_build_architectures():
    for run in draws(SEED_SPACE, 50):
        arch = build_architecture(run, (40, 48, 40), n_classes=2)
        assert len(arch["convolutions"]) == run["n_convblocks"]
        assert len(arch["fc"]) == run["n_fcblocks"]
        assert max(c["out_channels"] for c in arch["convolutions"].values()) <= 64


def test_same_seed_same_runs_and_more_runs_keep_earlier_ones():
    assert sample_runs(SEED_SPACE, 5, 7) == sample_runs(SEED_SPACE, 5, 7)
    assert sample_runs(SEED_SPACE, 5, 7)[:3] == sample_runs(SEED_SPACE, 3, 7)
    assert sample_runs(SEED_SPACE, 3, 7) != sample_runs(SEED_SPACE, 3, 8)
    assert run_seed(7, 2) == run_seed(7, 2)
    assert len({run_seed(7, i) for i in range(50)}) == 50
    assert isinstance(run_seed(-1, 0), int)


def test_adding_a_key_leaves_other_draws_unchanged():
    before = sample_options(SEED_SPACE, seed=11)
    after = sample_options({**SEED_SPACE, "batch_size": [4, 8]}, seed=11)
    assert {k: v for k, v in after.items() if k != "batch_size"} == before


def test_results_are_json_serialisable_plain_types():
    for run in draws(SEED_SPACE, 20):
        assert json.loads(json.dumps(run)) == run


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"dropout": [0.9, 0.1]}, ["'dropout' must be [min, max] with min <= max", "[0.9, 0.1]"]),
        ({"n_convblocks": [2.0, 4]}, ["'n_convblocks'", "integer", "[2.0, 4]"]),
        ({"n_fcblocks": [1, 2, 3]}, ["'n_fcblocks'", "[min, max]"]),
        ({"epochs": [10, 20]}, ["'epochs'", "fixed", "[10, 20]"]),
        ({"epochs": "many"}, ["'epochs'", "integer", '"many"']),
        ({"d_reduction": ["MaxPooling", "AvgPool"]}, ["'d_reduction'", "MaxPooling", "AvgPool"]),
        ({"network_normalization": "LayerNorm"}, ["'network_normalization'", "LayerNorm"]),
        ({"first_conv_width": []}, ["'first_conv_width'", "non-empty list"]),
        ({"learning_rate": [5, 2]}, ["'learning_rate'", "min <= max", "[5, 2]"]),
        ({"wd_bool": "yes"}, ["'wd_bool'", "true or false"]),
        ({"channels_limit": 0}, ["'channels_limit'", ">= 1"]),
        ({"dropout": [0, 1.5]}, ["'dropout'", "[0, 1]"]),
        ({"d_reduction": []}, ["'d_reduction'", "empty list"]),
        ({"my_option": 1}, ["unknown key 'my_option'", "remove it"]),
    ],
)
def test_validation_errors_name_the_key(change, fragments):
    with pytest.raises(UserError) as info:
        validate_space({**SEED_SPACE, **change}, source="space.json")
    message = str(info.value)
    assert message.startswith("space.json: ")
    for fragment in fragments:
        assert fragment in message


def test_missing_mandatory_keys_are_named():
    space = {k: v for k, v in SEED_SPACE.items() if k not in ("epochs", "n_fcblocks")}
    with pytest.raises(UserError, match=r"'epochs', 'n_fcblocks' missing"):
        validate_space(space)
    with pytest.raises(UserError, match="JSON object"):
        validate_space([1, 2])
    with pytest.raises(UserError, match="n_runs"):
        sample_runs(SEED_SPACE, -1, 0)


def test_caps_keys_are_optional():
    validate_space(MINIMAL)


def test_shipped_example_validates_and_samples(tmp_path):
    space = load_space(EXAMPLE)
    runs = sample_runs(space, 8, seed=0)
    for run in runs:
        assert run["epochs"] == 4 and run["batch_size"] == 8
        assert 2 <= run["n_convblocks"] <= 4
        arch = build_architecture(run, (40, 48, 40), n_classes=2)
        assert max(c["out_channels"] for c in arch["convolutions"].values()) <= 32
    broken = tmp_path / "random_search.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_space(broken)
    with pytest.raises(UserError, match="not found"):
        load_space(tmp_path / "missing.json")


def test_to_config_overrides_maps_train_and_model_keys():
    space = {**SEED_SPACE, "batch_size": [4, 8], "patience": 5, "accumulation_steps": 2}
    run = sample_options(space, seed=3)
    overrides = to_config_overrides(run)
    train = overrides["train"]
    assert train["epochs"] == 100
    assert train["learning_rate"] == run["learning_rate"]
    assert train["weight_decay"] == run["weight_decay"]
    assert train["batch_size"] in (4, 8)
    assert train["accumulation_steps"] == 2
    assert train["early_stopping"] == {"patience": 5, "tolerance": 0.0}
    search = overrides["model"]["search"]
    assert set(search) == {
        "n_convblocks",
        "first_conv_width",
        "channels_limit",
        "d_reduction",
        "n_conv",
        "n_fcblocks",
        "dropout",
        "network_normalization",
    }
    assert search["n_conv"] == run["n_conv"]
    assert overrides["data"] == {
        "caps_directory": "/path/to/caps",
        "tsv": "/path/to/tsv",
        "preprocessing": "t1-linear",
        "diagnoses": ["AD", "CN"],
        "mode": run["mode"],
    }
    assert overrides["model"]["network_type"] == "cnn"
    assert overrides["data"]["mode"] == run["mode"]
    assert set(overrides) == {"train", "model", "data"}
    assert to_config_overrides({"epochs": 2}) == {"train": {"epochs": 2}}
    assert to_config_overrides({}) == {}


def test_run_configs_leave_the_test_groups_out():
    """Runs train the same whatever test groups are set: a new group touches no run."""
    import copy

    from snakemaps.search.launch import run_configs

    config = {
        "maps_dir": "results/maps",
        "data": {"synthetic": {"n_participants": 16, "n_test_participants": 6}},
        "test": {"groups": {"ext": "ext.tsv"}},
        "train": {"epochs": 3, "batch_size": 4},
        "random_search": {"n_runs": 2},
    }
    before = copy.deepcopy(config)
    runs = run_configs(config, {**SEED_SPACE, "epochs": 2}, "results/rs", 2, 0)
    other = {**config, "test": {"groups": {}}}
    other["data"] = {"synthetic": {"n_participants": 16, "n_test_participants": 40}}
    assert run_configs(other, {**SEED_SPACE, "epochs": 2}, "results/rs", 2, 0) == runs
    for job, (_, experiment) in runs.items():
        assert experiment["maps_dir"] == f"results/rs/{job}/maps"
        assert experiment["data"]["synthetic"] == {"n_participants": 16}
        assert "test" not in experiment and "random_search" not in experiment
        assert experiment["train"]["epochs"] == 2
    assert config == before


def test_search_package_does_not_import_torch():
    code = (
        "import sys; sys.path.insert(0, 'scripts'); "
        "import snakemaps.search.sampling, snakemaps.search.analysis; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
