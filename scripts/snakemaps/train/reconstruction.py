"""The reconstruction task (``data.task: reconstruction``, an autoencoder): loss and metrics.

The target is the input itself. The loss is the mean squared error per
voxel (ClinicaDL's default ``MSELoss``). Per image, the metrics are computed
with torchmetrics: ``MSE`` (``mean_squared_error``), ``PSNR``
(``peak_signal_noise_ratio``) and ``SSIM`` (``structural_similarity_index_measure``,
3D Gaussian window), with the input image's intensity range as data range.
Predictions carry these per-image values as a NumPy structured array (one
field per metric), which is how the shared evaluation code tells a
reconstruction's outputs from class probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FIELDS = ("MSE", "PSNR", "SSIM")
DTYPE = np.dtype([(name, np.float64) for name in FIELDS])


def is_reconstruction(outputs: np.ndarray) -> bool:
    return outputs.dtype.names is not None


def voxel_mse(output, inputs):
    """Mean squared error per image: (n,) tensor."""
    return ((output.float() - inputs.float()) ** 2).flatten(1).mean(1)


def per_image(output, inputs) -> np.ndarray:
    """MSE, PSNR and SSIM of each reconstruction against its input (torchmetrics)."""
    import torch
    from torchmetrics.functional import mean_squared_error
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    output, inputs = output.float().contiguous(), inputs.float().contiguous()
    spatial = inputs.shape[2:]
    kernel = min(11, *spatial)
    kernel -= 1 - kernel % 2  # odd, at most the smallest side
    rows = np.zeros(len(inputs), dtype=DTYPE)
    with torch.no_grad():
        for i in range(len(inputs)):
            pred, target = output[i : i + 1], inputs[i : i + 1]
            span = float(target.max() - target.min()) or 1.0
            rows[i] = (
                float(mean_squared_error(pred, target)),
                float(peak_signal_noise_ratio(pred, target, data_range=span)),
                float(
                    structural_similarity_index_measure(
                        pred, target, data_range=span, kernel_size=kernel
                    )
                ),
            )
    return rows


def compute(names: Sequence[str], outputs: np.ndarray, losses: np.ndarray) -> dict[str, float]:
    """Mean over images of each requested metric (and ``loss``)."""
    values: dict[str, float] = {}
    for name in names:
        if name == "loss":
            values[name] = float(losses.mean())
        elif name in FIELDS:
            values[name] = float(outputs[name].mean())
        else:
            raise KeyError(f"{name} is not a reconstruction metric")
    return values
