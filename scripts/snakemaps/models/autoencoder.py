"""Convolutional autoencoder built from a CNN description, as ClinicaDL builds it.

ClinicaDL (``CNN_Transformer``) makes an autoencoder out of a CNN: the
encoder is the CNN's convolutional part, the decoder mirrors it layer by
layer in reverse order (``Conv3d`` -> ``ConvTranspose3d`` with in and out
channels swapped, max pooling -> max unpooling with the pooling's indices),
and in each mirrored convolution the transposed convolution comes before its
normalisation and ReLU. So every decoder block is: unpool (if the encoder
block pools), then for each of its convolutions in reverse order
``ConvTranspose3d(out, in) -> norm(in) -> ReLU``.

The encoder's modules are named as the CNN's ``convolutions``
(``encoder.<block>.<layer>`` against ``convolutions.<block>.<layer>``), so
weights move between the two by renaming the prefix (``snakemaps.train.transfer``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .network import CNN, _norm


class AutoEncoder(nn.Module):
    """Encoder: a CNN's convolution blocks; decoder: their mirror image."""

    def __init__(self, description: Mapping[str, Any]) -> None:
        super().__init__()
        cnn_like = {**description, "fc": {}, "pooling": "flatten"}
        self.encoder = CNN(cnn_like).convolutions
        normalization = description.get("network_normalization")
        decoder = []
        for block in self.encoder:
            for layer in block:
                if isinstance(layer, nn.MaxPool3d):
                    layer.return_indices = True
            mirrored: list[nn.Module] = []
            if any(isinstance(layer, nn.MaxPool3d) for layer in block):
                mirrored.append(nn.MaxUnpool3d(2))
            for conv in reversed([m for m in block if isinstance(m, nn.Conv3d)]):
                mirrored += [
                    nn.ConvTranspose3d(
                        conv.out_channels,
                        conv.in_channels,
                        conv.kernel_size,
                        stride=conv.stride,
                        padding=conv.padding,
                    ),
                    _norm(normalization, conv.in_channels),
                    nn.ReLU(inplace=True),
                ]
            decoder.append(nn.Sequential(*mirrored))
        self.decoder = nn.Sequential(*reversed(decoder))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[list[Any]]]:
        """The code and, per block, what its mirror needs: (input size, pooling indices)."""
        trace: list[list[Any]] = []
        for block in self.encoder:
            steps: list[Any] = []
            for layer in block:
                if isinstance(layer, nn.MaxPool3d):
                    size = x.shape[2:]
                    x, indices = layer(x)
                    steps.append(("pool", size, indices))
                elif isinstance(layer, nn.Conv3d):
                    steps.append(("conv", x.shape[2:]))
                    x = layer(x)
                else:
                    x = layer(x)
            trace.append(steps)
        return x, trace

    def decode(self, x: torch.Tensor, trace: list[list[Any]]) -> torch.Tensor:
        for block, steps in zip(self.decoder, reversed(trace)):
            steps = list(reversed(steps))
            layers = iter(block)
            for step in steps:
                layer = next(layers)
                if step[0] == "pool":
                    x = layer(x, step[2], output_size=step[1])
                else:  # a transposed convolution, then its norm and ReLU
                    x = layer(x, output_size=step[1])
                    x = next(layers)(x)
                    x = next(layers)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code, trace = self.encode(x)
        return self.decode(code, trace)


def autoencoder_description(description: Mapping[str, Any]) -> dict[str, Any]:
    """A CNN description reduced to what the autoencoder uses (its convolutions)."""
    return {
        "name_": "AutoEncoder",
        "convolutions": {k: dict(v) for k, v in description["convolutions"].items()},
        "network_normalization": description.get("network_normalization"),
    }
