"""Network descriptions (torch-free): ClinicaDL ``convolutions`` / ``fc`` dicts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import UserError


def default_description(
    conv_channels: Sequence[int],
    n_outputs: int,
    dropout: float,
    normalization: str | None,
    in_channels: int = 1,
) -> dict[str, Any]:
    convolutions, previous = {}, in_channels
    for i, channels in enumerate(conv_channels):
        convolutions[f"conv{i}"] = {
            "in_channels": previous,
            "out_channels": int(channels),
            "n_conv": 1,
            "d_reduction": "MaxPooling",
        }
        previous = int(channels)
    return {
        "convolutions": convolutions,
        "fc": {"FC0": {"in_features": previous, "out_features": n_outputs}},
        "dropout": dropout,
        "network_normalization": normalization,
        "pooling": "avg",
    }


def reduced_shape(shape: Sequence[int], n_blocks: int) -> list[int]:
    dims = list(shape)
    for _ in range(n_blocks):
        dims = [math.ceil(d / 2) for d in dims]
    return dims


def resolve_description(
    model: Mapping[str, Any], input_shape: Sequence[int], n_outputs: int
) -> dict[str, Any]:
    """The full description for a model config and an input shape ``(C, D, H, W)``."""
    if model.get("search"):
        from ..search.sampling import build_architecture

        arch = build_architecture(model["search"], input_shape[1:], n_outputs, input_shape[0])
        return {"pooling": "flatten", **arch}
    if model.get("convolutions"):
        if not model.get("fc"):
            raise UserError("model.convolutions is set but model.fc is not; give both")
        description = {
            "convolutions": dict(model["convolutions"]),
            "fc": {k: dict(v) for k, v in model["fc"].items()},
            "dropout": model.get("dropout", 0.0),
            "network_normalization": model.get("network_normalization", "BatchNorm"),
            "pooling": "flatten",
        }
        blocks = list(description["convolutions"].values())
        first_fc = next(iter(description["fc"].values()))
        if first_fc.get("in_features") is None:
            dims = reduced_shape(input_shape[1:], len(blocks))
            first_fc["in_features"] = blocks[-1]["out_channels"] * math.prod(dims)
        last_fc = list(description["fc"].values())[-1]
        if last_fc["out_features"] != n_outputs:
            raise UserError(
                f"model.fc: the last layer has {last_fc['out_features']} outputs but the "
                f"data has {n_outputs} classes"
            )
        return description
    return default_description(
        model.get("conv_channels", [8, 16, 32, 32]),
        n_outputs,
        model.get("dropout", 0.0),
        model.get("network_normalization", "BatchNorm"),
        in_channels=input_shape[0],
    )
