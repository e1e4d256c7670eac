"""Sample random-search runs from a ClinicaDL-style ``random_search.json``.

The space maps option names to what to sample, as ``clinicadl random-search
generate`` reads it. Each known key has one sampling function
(``SAMPLING_FUNCTIONS``), because a bare two-element list is ambiguous:

- ``choice``: a list of values, one is picked; a scalar is used as is.
- ``uniform``: ``[min, max]``, a float is drawn uniformly; a scalar is used as is.
- ``exponent``: ``[min, max]``, ``x`` is drawn uniformly and the value is
  ``10 ** -x``; a scalar ``x`` gives ``10 ** -x`` (so ``"learning_rate": 4``
  means ``1e-4``).
- ``randint``: ``[min, max]``, an integer is drawn with both bounds included;
  a scalar is used as is.
- ``fixed``: the value is used as is, lists included (``diagnoses``).

A key not in SAMPLING_FUNCTIONS stops the search, naming it and the closest known key.
Missing optional keys take ``DEFAULTS`` (ClinicaDL's). ``MANDATORY`` keys are
the ones this workflow needs (``epochs``, ``n_convblocks``,
``first_conv_width``, ``n_fcblocks``); ClinicaDL's ``mode`` and
``network_type`` are mapped onto the config (below), its CAPS keys
(``caps_dir``, ``tsv_path``, ``diagnoses``, ``preprocessing``, ...) are
validated when present, not required (without them a search runs on the
config's data).

Choices where ClinicaDL is vague:

- ``n_conv`` is drawn once per convolutional block; the sampled options hold
  it as a list of ``n_convblocks`` integers.
- ``weight_decay`` depends on ``wd_bool``: when ``wd_bool`` is false the
  sampled ``weight_decay`` is ``0.0`` (the value drawn from the space is
  discarded), so the options say exactly what the optimizer gets.
- ``network_normalization`` may be ``null`` or the string ``"None"``; both
  sample to ``None``.
- Every key draws from its own ``numpy`` Generator, seeded with the run seed
  and a CRC-32 of the key name. Adding a key to the space, or changing
  ``n_convblocks``, leaves the other keys' draws unchanged.
- ``evaluation_steps`` is rounded to the nearest multiple of
  ``accumulation_steps`` (at least one), as ClinicaDL 0.2 did: validations
  run after an optimizer step only. The options hold the rounded value.
- ``run_seed(master_seed, i)`` depends on the master seed and ``i`` only, so
  raising ``n_runs`` keeps earlier runs unchanged. Negative seeds are taken
  modulo ``2**64``.

``to_config_overrides`` maps sampled options onto the experiment config::

    epochs, learning_rate, weight_decay,
    batch_size, accumulation_steps,
    evaluation_steps, sampler             -> train.<same name>
    data_augmentation                     -> train.data_augmentation (false,
                                             null and "None" entries: none)
    patience, tolerance                   -> train.early_stopping.<same name>
                                             (patience 0 turns early stopping off)
    n_convblocks, first_conv_width,
    channels_limit, d_reduction, n_conv,
    n_fcblocks, dropout,
    network_normalization                 -> model.search.<same name>
    caps_dir                              -> data.caps_directory
    tsv_path                              -> data.tsv (one table: a tsvtool
                                             split folder is refused, naming
                                             the table to give)
    preprocessing, diagnoses, baseline,
    unnormalize, use_uncropped_image,
    tracer, suvr_reference_region,
    custom_suffix                         -> data.<same name>

    transfer_learning_path,
    transfer_learning_selection           -> train.transfer_learning.{path, selection}
                                             (best_loss -> best-loss, best_balanced_accuracy
                                             -> best-BalancedAccuracy; see
                                             snakemaps.train.transfer.search_overrides)

    network_type                          -> model.network_type
    mode                                  -> data.mode
    patch_size, stride_size, slice_direction,
    slice_mode, discarded_slices, roi_list,
    uncropped_roi, selection_threshold    -> data.<same name>, only those of the
                                             sampled mode (ClinicaDL's random-search
                                             defaults fill that mode's missing ones)

Only keys present in the options appear. ``wd_bool`` is not mapped (it is
already folded into ``weight_decay``). A run whose data keys differ from the
config's gets its own tensor cache (``snakemaps.data.datasets``).
``use_extracted_patches`` / ``_slices`` / ``_roi`` true (ClinicaDL's part
files) and ``roi_custom_template`` / ``roi_custom_mask_pattern`` stop the
search, naming the key: parts are cut from the tensor cache, masks given by
path.
"""

from __future__ import annotations

import copy
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator, validators

from ..data.caps import PREPROCESSINGS
from ..errors import UserError
from ..io import read_json
from .modes import MODE_DEFAULTS, mode_overrides

SAMPLING_FUNCTIONS: dict[str, str] = {
    # Mandatory here.
    "epochs": "fixed",
    "n_convblocks": "randint",
    "first_conv_width": "choice",
    "n_fcblocks": "randint",
    # Architecture.
    "channels_limit": "fixed",
    "d_reduction": "choice",
    "n_conv": "randint",
    "network_normalization": "choice",
    "dropout": "uniform",
    # Optimisation.
    "learning_rate": "exponent",
    "wd_bool": "choice",
    "weight_decay": "exponent",
    "patience": "fixed",
    "tolerance": "fixed",
    "accumulation_steps": "fixed",
    "batch_size": "choice",
    "evaluation_steps": "fixed",
    "sampler": "choice",
    "data_augmentation": "fixed",
    # Modes (data.mode, its data.<key> options, model.network_type).
    "mode": "choice",
    "network_type": "choice",
    # ClinicaDL CAPS data (-> data.*, DATA_KEYS).
    "caps_dir": "fixed",
    "preprocessing": "choice",
    "tsv_path": "fixed",
    "diagnoses": "fixed",
    "baseline": "choice",
    "unnormalize": "choice",
    "use_uncropped_image": "choice",
    "tracer": "fixed",
    "suvr_reference_region": "fixed",
    "custom_suffix": "fixed",
    # ClinicaDL mode-dependent keys.
    "patch_size": "randint",
    "stride_size": "randint",
    "selection_threshold": "uniform",
    "use_extracted_patches": "fixed",
    "discarded_slices": "randint",
    "slice_direction": "choice",
    "slice_mode": "choice",
    "use_extracted_slices": "fixed",
    "roi_list": "fixed",
    "uncropped_roi": "choice",
    "use_extracted_roi": "fixed",
    "roi_custom_template": "fixed",
    "roi_custom_mask_pattern": "fixed",
    # Transfer learning (snakemaps.train.transfer).
    "transfer_learning_path": "fixed",
    "transfer_learning_selection": "choice",
}

MANDATORY: tuple[str, ...] = ("epochs", "n_convblocks", "first_conv_width", "n_fcblocks")

DEFAULTS: dict[str, Any] = {
    "channels_limit": 512,
    "d_reduction": "MaxPooling",
    "n_conv": 1,
    "network_normalization": "BatchNorm",
    "learning_rate": 4,
    "wd_bool": True,
    "weight_decay": 4,
    "dropout": 0.0,
    "patience": 0,
    "tolerance": 0.0,
}

_MANDATORY_EXAMPLES = {
    "epochs": "20",
    "n_convblocks": "[2, 4]",
    "first_conv_width": "[4, 8]",
    "n_fcblocks": "[1, 2]",
}

D_REDUCTIONS = ("MaxPooling", "stride")
NORMALIZATIONS = (None, "BatchNorm", "InstanceNorm")

ARCHITECTURE_KEYS: tuple[str, ...] = (
    "n_convblocks",
    "first_conv_width",
    "channels_limit",
    "d_reduction",
    "n_conv",
    "n_fcblocks",
    "dropout",
    "network_normalization",
)
# random_search.json key -> data.<key> of the experiment config.
DATA_KEYS: dict[str, str] = {
    "caps_dir": "caps_directory",
    "tsv_path": "tsv",
    "preprocessing": "preprocessing",
    "diagnoses": "diagnoses",
    "baseline": "baseline",
    "unnormalize": "unnormalize",
    "use_uncropped_image": "use_uncropped_image",
    "tracer": "tracer",
    "suvr_reference_region": "suvr_reference_region",
    "custom_suffix": "custom_suffix",
}
_TRAIN_KEYS = (
    "epochs",
    "learning_rate",
    "weight_decay",
    "batch_size",
    "accumulation_steps",
    "evaluation_steps",
    "sampler",
)
_EARLY_STOPPING_KEYS = ("patience", "tolerance")

# ClinicaDL 0.2's names (best_loss, best_balanced_accuracy) or this workflow's.
SELECTION_PATTERN = r"^(best_loss|best_balanced_accuracy|best-[A-Za-z][A-Za-z0-9]*|final)$"
_INT_MIN1 = ({"type": "integer", "minimum": 1}, "an integer >= 1")
_INT_MIN0 = ({"type": "integer", "minimum": 0}, "an integer >= 0")
_UNIT = ({"type": "number", "minimum": 0, "maximum": 1}, "a number in [0, 1]")
_BOOL = ({"type": "boolean"}, "true or false")
_STRING = ({"type": "string"}, "a string")

# Schema and description of one value of each known key.
_ITEMS: dict[str, tuple[dict[str, Any], str]] = {
    "epochs": _INT_MIN1,
    "n_convblocks": _INT_MIN1,
    "first_conv_width": _INT_MIN1,
    "n_fcblocks": _INT_MIN1,
    "channels_limit": _INT_MIN1,
    "d_reduction": ({"enum": list(D_REDUCTIONS)}, 'one of "MaxPooling", "stride"'),
    "n_conv": _INT_MIN1,
    "network_normalization": (
        {"enum": [*NORMALIZATIONS, "None"]},
        'one of null, "BatchNorm", "InstanceNorm"',
    ),
    "dropout": _UNIT,
    "learning_rate": ({"type": "number"}, "an exponent x (value 10**-x)"),
    "wd_bool": _BOOL,
    "weight_decay": ({"type": "number"}, "an exponent x (value 10**-x)"),
    "patience": _INT_MIN0,
    "tolerance": ({"type": "number", "minimum": 0}, "a number >= 0"),
    "accumulation_steps": _INT_MIN1,
    "batch_size": _INT_MIN1,
    "evaluation_steps": _INT_MIN0,
    "mode": (
        {"enum": ["image", "patch", "roi", "slice"]},
        'one of "image", "patch", "roi", "slice"',
    ),
    "network_type": (
        {"enum": ["autoencoder", "cnn", "multicnn"]},
        'one of "autoencoder", "cnn", "multicnn"',
    ),
    "caps_dir": _STRING,
    "preprocessing": (
        {"enum": list(PREPROCESSINGS)},
        "one of " + ", ".join(f'"{name}"' for name in PREPROCESSINGS),
    ),
    "tsv_path": _STRING,
    "use_uncropped_image": _BOOL,
    "tracer": _STRING,
    "suvr_reference_region": _STRING,
    "custom_suffix": _STRING,
    "diagnoses": (
        {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "a label or a list of labels",
    ),
    "baseline": _BOOL,
    "unnormalize": _BOOL,
    "sampler": ({"enum": ["random", "weighted"]}, 'one of "random", "weighted"'),
    "data_augmentation": (
        {"anyOf": [{"enum": [False, None]}, {"type": "array", "items": {"type": "string"}}]},
        "false or a list of transform names",
    ),
    "patch_size": _INT_MIN1,
    "stride_size": _INT_MIN1,
    "selection_threshold": _UNIT,
    "use_extracted_patches": _BOOL,
    "discarded_slices": _INT_MIN0,
    "slice_direction": ({"enum": [0, 1, 2]}, "one of 0, 1, 2"),
    "slice_mode": ({"enum": ["rgb", "single"]}, 'one of "rgb", "single"'),
    "use_extracted_slices": _BOOL,
    "roi_list": (
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "a non-empty list of region names",
    ),
    "uncropped_roi": _BOOL,
    "use_extracted_roi": _BOOL,
    "roi_custom_template": _STRING,
    "roi_custom_mask_pattern": _STRING,
    "transfer_learning_path": (
        {"type": ["string", "null"]},
        "a MAPS directory or null (a fixed value)",
    ),
    "transfer_learning_selection": (
        {"type": "string", "pattern": SELECTION_PATTERN},
        'one of "best_loss", "best_balanced_accuracy" (or best-<metric>, final)',
    ),
}


def _value_schema(function: str, item: dict[str, Any]) -> dict[str, Any]:
    if function == "fixed":
        return item
    if function == "choice":
        return {"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]}
    return {"anyOf": [item, {"type": "array", "items": item, "minItems": 2, "maxItems": 2}]}


def _value_description(function: str, item: str) -> str:
    if function == "fixed":
        return f"{item} (a fixed value)"
    if function == "choice":
        return f"{item}, or a non-empty list of them to choose from"
    if function == "randint":
        return f"{item}, or [min, max] of them to draw an integer from (both included)"
    if function == "exponent":
        return f"{item}, or [min, max] of them to draw x from uniformly"
    return f"{item}, or [min, max] of them to draw from uniformly"


SPACE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": list(MANDATORY),
    "properties": {
        key: _value_schema(SAMPLING_FUNCTIONS[key], item) for key, (item, _) in _ITEMS.items()
    },
}


def _is_strict_int(_checker: Any, instance: Any) -> bool:
    # JSON Schema counts 4.0 as an integer; randint bounds and sizes must be real ints.
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_strict_int),
)
_VALIDATOR = _Validator(SPACE_SCHEMA)


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def validate_space(space: Mapping[str, Any], source: str = "random_search.json") -> None:
    """Raise ``UserError`` naming the key and the problem when ``space`` is not valid."""
    if not isinstance(space, Mapping):
        raise UserError(
            f"{source}: must be a JSON object mapping option names to values, "
            f"got {type(space).__name__}"
        )
    missing = [key for key in MANDATORY if key not in space]
    if missing:
        names = ", ".join(f"'{key}'" for key in missing)
        examples = ", ".join(f'"{key}": {_MANDATORY_EXAMPLES[key]}' for key in missing)
        noun, pronoun = ("keys", "them") if len(missing) > 1 else ("key", "it")
        raise UserError(
            f"{source}: mandatory {noun} {names} missing; add {pronoun}, e.g. {examples}"
        )
    unknown = [key for key in space if key not in SAMPLING_FUNCTIONS]
    if unknown:
        import difflib

        key = unknown[0]
        close = difflib.get_close_matches(key, list(SAMPLING_FUNCTIONS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(
            f"{source}: unknown key '{key}': {hint}a key this workflow does not know would "
            f"change nothing in the runs; remove it, or use one of ClinicaDL's random-search "
            f"keys: {', '.join(sorted(SAMPLING_FUNCTIONS))}"
        )
    bad_keys = {error.path[0] for error in _VALIDATOR.iter_errors(dict(space)) if error.path}
    for key, value in space.items():
        if key in bad_keys:
            function = SAMPLING_FUNCTIONS[key]
            expected = _value_description(function, _ITEMS[key][1])
            raise UserError(f"{source}: '{key}' must be {expected}, got {_show(value)}")
        function = SAMPLING_FUNCTIONS[key]
        if function in ("uniform", "exponent", "randint") and isinstance(value, list):
            low, high = value
            if low > high:
                raise UserError(
                    f"{source}: '{key}' must be [min, max] with min <= max, got {_show(value)}; "
                    f"write {_show([high, low])}"
                )
        if function == "choice" and isinstance(value, list) and not value:
            raise UserError(
                f"{source}: '{key}' is an empty list; give a value, or a non-empty list "
                "to choose from"
            )


def load_space(space: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A validated search space from a ``random_search.json`` path or an inline mapping."""
    if isinstance(space, Mapping):
        source = "random_search.space"
        data: Any = dict(space)
    else:
        source = str(space)
        try:
            data = read_json(space)
        except FileNotFoundError:
            raise UserError(
                f"{source}: search space not found; set random_search.space to an existing "
                "random_search.json (e.g. config/examples/random_search.json)"
            ) from None
        except json.JSONDecodeError as error:
            raise UserError(f"{source}: not valid JSON ({error}); fix the file") from None
    validate_space(data, source)
    return data


def _unsigned(seed: int) -> int:
    return int(seed) % 2**64


def run_seed(master_seed: int, index: int) -> int:
    """The seed of run ``index``, from the master seed and the index only."""
    sequence = np.random.SeedSequence([_unsigned(master_seed), int(index)])
    return int(sequence.generate_state(1)[0])


def _key_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([_unsigned(seed), zlib.crc32(key.encode("utf-8"))])


def _draw(function: str, value: Any, rng: np.random.Generator) -> Any:
    if function == "fixed" or not isinstance(value, list):
        if function == "exponent":
            return 10.0 ** -float(value)
        if function == "uniform":
            return float(value)
        return copy.deepcopy(value)
    if function == "choice":
        return copy.deepcopy(value[int(rng.integers(len(value)))])
    low, high = value
    if function == "randint":
        return int(rng.integers(int(low), int(high), endpoint=True))
    drawn = float(rng.uniform(float(low), float(high)))
    return 10.0**-drawn if function == "exponent" else drawn


def _sample(space: Mapping[str, Any], seed: int) -> dict[str, Any]:
    merged = {**DEFAULTS, **space}  # validate_space refused any key not in SAMPLING_FUNCTIONS
    options: dict[str, Any] = {}
    for key in (key for key in SAMPLING_FUNCTIONS if key in merged):
        value = merged[key]
        function = SAMPLING_FUNCTIONS[key]
        rng = _key_rng(seed, key)
        if key == "n_conv":
            n_blocks = options["n_convblocks"]
            options[key] = [_draw(function, value, rng) for _ in range(n_blocks)]
        else:
            options[key] = _draw(function, value, rng)
    for key, value in MODE_DEFAULTS.get(options.get("mode"), {}).items():
        options.setdefault(key, value)
    if options.get("network_normalization") == "None":
        options["network_normalization"] = None
    if not options.get("wd_bool", True):
        options["weight_decay"] = 0.0
    if options.get("evaluation_steps"):
        # A multiple of accumulation_steps, as ClinicaDL 0.2's find_evaluation_steps makes it.
        accumulation = int(options.get("accumulation_steps", 1))
        steps = int(options["evaluation_steps"])
        options["evaluation_steps"] = max(1, round(steps / accumulation)) * accumulation
    return options


def sample_options(space: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """One run's options: every key sampled, defaults filled, ``n_conv`` one per block."""
    validate_space(space)
    return _sample(space, seed)


def sample_runs(space: Mapping[str, Any], n_runs: int, seed: int) -> list[dict[str, Any]]:
    """Options of runs ``0 .. n_runs-1``; run ``i`` uses ``run_seed(seed, i)``."""
    validate_space(space)
    if isinstance(n_runs, bool) or not isinstance(n_runs, int) or n_runs < 0:
        raise UserError(f"random_search.n_runs must be an integer >= 0, got {n_runs!r}")
    return [_sample(space, run_seed(seed, index)) for index in range(n_runs)]


def _option(options: Mapping[str, Any], key: str) -> Any:
    if key in options:
        return options[key]
    if key in DEFAULTS:
        return DEFAULTS[key]
    raise ValueError(f"build_architecture: options lack '{key}'")


def build_architecture(
    options: Mapping[str, Any],
    input_shape: Sequence[int],
    n_classes: int,
    in_channels: int = 1,
) -> dict[str, Any]:
    """ClinicaDL's ``convolutions`` / ``fc`` description of the network ``options`` sample.

    ``input_shape`` holds the spatial dimensions only. Output channels double
    from ``first_conv_width`` each block, capped at ``channels_limit``; each
    block halves every spatial dimension, rounding up (MaxPool3d(2,
    ceil_mode=True), or a stride-2 convolution with kernel 3 and padding 1).
    The fully connected sizes fall from the flattened features to
    ``n_classes`` in equal ratios.
    """
    n_blocks = int(_option(options, "n_convblocks"))
    width = int(_option(options, "first_conv_width"))
    limit = int(_option(options, "channels_limit"))
    d_reduction = _option(options, "d_reduction")
    n_conv = _option(options, "n_conv")
    n_conv = [int(n_conv)] * n_blocks if isinstance(n_conv, int) else [int(n) for n in n_conv]
    if len(n_conv) != n_blocks:
        raise ValueError(f"n_conv has {len(n_conv)} entries for {n_blocks} convolutional blocks")
    shape = [int(size) for size in input_shape]
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be positive spatial sizes, got {list(input_shape)}")

    convolutions: dict[str, dict[str, Any]] = {}
    channels = int(in_channels)
    for index in range(n_blocks):
        out_channels = min(width * 2**index, limit)
        convolutions[f"conv{index}"] = {
            "in_channels": channels,
            "out_channels": out_channels,
            "n_conv": n_conv[index],
            "d_reduction": d_reduction,
        }
        channels = out_channels
        shape = [-(-size // 2) for size in shape]

    n_fc = int(_option(options, "n_fcblocks"))
    in_features = channels * math.prod(shape)
    ratio = (in_features / n_classes) ** (1.0 / n_fc)
    sizes = [max(1, int(np.round(in_features / ratio**index))) for index in range(n_fc + 1)]
    sizes[0], sizes[-1] = in_features, int(n_classes)
    fc = {
        f"FC{index}": {"in_features": sizes[index], "out_features": sizes[index + 1]}
        for index in range(n_fc)
    }
    normalization = _option(options, "network_normalization")
    return {
        "convolutions": convolutions,
        "fc": fc,
        "dropout": float(_option(options, "dropout")),
        "network_normalization": None if normalization == "None" else normalization,
    }


def augmentation_names(value: Any) -> list[str]:
    """train.data_augmentation of a sampled ``data_augmentation``: false, null and "None" are none."""
    from ..data.augmentation import check_names

    names = [] if value in (False, None) else [n for n in value if n != "None"]
    return check_names(names, "random_search.json data_augmentation")


def to_config_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment-config keys one run's options set (see the module docstring)."""
    train = {key: copy.deepcopy(options[key]) for key in _TRAIN_KEYS if key in options}
    if "data_augmentation" in options:
        train["data_augmentation"] = augmentation_names(options["data_augmentation"])
    early_stopping = {key: options[key] for key in _EARLY_STOPPING_KEYS if key in options}
    if early_stopping:
        train["early_stopping"] = early_stopping
    search = {key: copy.deepcopy(options[key]) for key in ARCHITECTURE_KEYS if key in options}
    data = {DATA_KEYS[key]: copy.deepcopy(options[key]) for key in DATA_KEYS if key in options}
    if isinstance(data.get("diagnoses"), str):
        data["diagnoses"] = [data["diagnoses"]]
    from ..train.transfer import search_overrides

    train.update(search_overrides(options))
    overrides: dict[str, Any] = {}
    if train:
        overrides["train"] = train
    model: dict[str, Any] = {"search": search} if search else {}
    if "network_type" in options:
        model["network_type"] = options["network_type"]
    if model:
        overrides["model"] = model
    data.update(mode_overrides(options))
    if data:
        overrides["data"] = data
    return overrides
