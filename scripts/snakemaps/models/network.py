"""The CNN built from a description (see ``snakemaps.models``): 3D, or 2D for slices.

``"dimension": 2`` in the description builds the same blocks from 2D layers
(ClinicaDL's 2D networks for slice mode). ``"n_networks": K`` builds a
``MultiCNN``: K independent networks, one per patch, slice or roi index
(ClinicaDL's multicnn / ``multi_network``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import UserError


def _norm(kind: str | None, channels: int, dimension: int = 3) -> nn.Module:
    if kind == "BatchNorm":
        return (nn.BatchNorm2d if dimension == 2 else nn.BatchNorm3d)(channels)
    if kind == "InstanceNorm":
        return (nn.InstanceNorm2d if dimension == 2 else nn.InstanceNorm3d)(channels, affine=True)
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
        dimension = int(description.get("dimension", 3))
        conv = nn.Conv2d if dimension == 2 else nn.Conv3d
        pool = nn.MaxPool2d if dimension == 2 else nn.MaxPool3d
        blocks = []
        for name, block in description["convolutions"].items():
            layers: list[nn.Module] = []
            channels = block["in_channels"]
            n_conv = int(block.get("n_conv", 1))
            stride_reduce = block.get("d_reduction", "MaxPooling") == "stride"
            for i in range(n_conv):
                stride = 2 if stride_reduce and i == n_conv - 1 else 1
                layers += [
                    conv(channels, block["out_channels"], 3, stride=stride, padding=1),
                    _norm(normalization, block["out_channels"], dimension),
                    nn.ReLU(inplace=True),
                ]
                channels = block["out_channels"]
            if not stride_reduce:
                layers.append(pool(2, ceil_mode=True))
            blocks.append(nn.Sequential(*layers))
            del name
        self.convolutions = nn.Sequential(*blocks)
        self.pool = (
            (nn.AdaptiveAvgPool2d if dimension == 2 else nn.AdaptiveAvgPool3d)(1)
            if description.get("pooling") == "avg"
            else nn.Identity()
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


class MultiCNN(nn.Module):
    """One CNN per part index; the input's last channel holds each sample's part index.

    ``snakemaps.data.extraction.SubSamples(id_channel=True)`` appends that
    channel. Each sample goes through its part's network only, so every
    network learns from its own part of every image, as ClinicaDL's
    multicnn does.
    """

    def __init__(self, description: Mapping[str, Any]) -> None:
        super().__init__()
        single = {k: v for k, v in description.items() if k != "n_networks"}
        self.networks = nn.ModuleList(CNN(single) for _ in range(int(description["n_networks"])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x[:, -1].flatten(1)[:, 0].round().long()
        x = x[:, :-1]
        order = torch.argsort(parts, stable=True)
        outputs = []
        for part in torch.unique(parts).tolist():
            chosen = order[parts[order] == part]
            outputs.append((chosen, self.networks[part](x[chosen])))
        chosen = torch.cat([c for c, _ in outputs])
        out = torch.cat([o for _, o in outputs])
        return out[torch.argsort(chosen)]


def build_network(description: Mapping[str, Any]) -> nn.Module:
    """The network of a ``model.json`` description (its ``name_``: CNN or AutoEncoder)."""
    if description.get("name_") == "AutoEncoder":
        from .autoencoder import AutoEncoder

        return AutoEncoder(description)
    if description.get("n_networks"):
        return MultiCNN(description)
    return CNN(description)


def memory_format(description: Mapping[str, Any], channels_last: bool) -> torch.memory_format:
    """channels_last(_3d) for the network's dimension, or the contiguous format."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if description.get("dimension", 3) == 2 else torch.channels_last_3d


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
