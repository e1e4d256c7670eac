"""The 3D CNN built from a description (see ``snakemaps.models``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import UserError


def _norm(kind: str | None, channels: int) -> nn.Module:
    if kind == "BatchNorm":
        return nn.BatchNorm3d(channels)
    if kind == "InstanceNorm":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind is None:
        return nn.Identity()
    raise UserError(
        f"model.network_normalization: unknown {kind!r}; use BatchNorm, InstanceNorm or null"
    )


class CNN(nn.Module):
    """Convolution blocks, then pooling or flattening, then fully connected layers."""

    def __init__(self, description: Mapping[str, Any]) -> None:
        super().__init__()
        normalization = description.get("network_normalization")
        blocks = []
        for name, block in description["convolutions"].items():
            layers: list[nn.Module] = []
            channels = block["in_channels"]
            n_conv = int(block.get("n_conv", 1))
            stride_reduce = block.get("d_reduction", "MaxPooling") == "stride"
            for i in range(n_conv):
                stride = 2 if stride_reduce and i == n_conv - 1 else 1
                layers += [
                    nn.Conv3d(channels, block["out_channels"], 3, stride=stride, padding=1),
                    _norm(normalization, block["out_channels"]),
                    nn.ReLU(inplace=True),
                ]
                channels = block["out_channels"]
            if not stride_reduce:
                layers.append(nn.MaxPool3d(2, ceil_mode=True))
            blocks.append(nn.Sequential(*layers))
            del name
        self.convolutions = nn.Sequential(*blocks)
        self.pool = (
            nn.AdaptiveAvgPool3d(1) if description.get("pooling") == "avg" else nn.Identity()
        )
        fcs: list[nn.Module] = [nn.Flatten(), nn.Dropout(float(description.get("dropout") or 0))]
        layers_fc = list(description["fc"].values())
        for i, layer in enumerate(layers_fc):
            fcs.append(nn.Linear(int(layer["in_features"]), int(layer["out_features"])))
            if i < len(layers_fc) - 1:
                fcs.append(nn.ReLU(inplace=True))
        self.fc = nn.Sequential(*fcs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.convolutions(x)))


def build_network(description: Mapping[str, Any]) -> nn.Module:
    """The network of a ``model.json`` description (its ``name_``: CNN or AutoEncoder)."""
    if description.get("name_") == "AutoEncoder":
        from .autoencoder import AutoEncoder

        return AutoEncoder(description)
    return CNN(description)


def summary(network: nn.Module, input_shape: Sequence[int]) -> str:
    """A readable layer table with output shapes and parameter counts (nn_summary.txt)."""
    rows: list[tuple[str, str, int]] = []
    hooks = []
    for name, module in network.named_modules():
        if len(list(module.children())) == 0:

            def hook(mod, _inp, out, name=name):
                params = sum(p.numel() for p in mod.parameters())
                out = out[0] if isinstance(out, tuple) else out  # max pooling with indices
                rows.append((f"{name} ({type(mod).__name__})", str(tuple(out.shape)), params))

            hooks.append(module.register_forward_hook(hook))
    was_training = network.training
    network.eval()
    with torch.no_grad():
        network(torch.zeros(1, *input_shape))
    network.train(was_training)
    for h in hooks:
        h.remove()
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'layer':<{width}}{'output shape':<28}{'parameters':>12}", "-" * (width + 40)]
    lines += [f"{n:<{width}}{s:<28}{p:>12,}" for n, s, p in rows]
    total = sum(p.numel() for p in network.parameters())
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    lines += [
        "-" * (width + 40),
        f"input shape: {tuple(input_shape)}",
        f"total parameters: {total:,}",
        f"trainable parameters: {trainable:,}",
    ]
    return "\n".join(lines) + "\n"
