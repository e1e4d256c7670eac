"""What a run's process needs around the loop: device, seeds, random states, weights, state.

Shared by the trainer, the standalone evaluations (validate, test),
interpretation and the distributed launcher, none of which needs the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .distributed import bare


@dataclasses.dataclass
class TrainerState:
    """What ``state.json`` holds (ClinicaDL's TrainerState fields)."""

    called: str = "train"
    stage: str = "init"
    should_stop: bool = False
    current_train_batch: int = 0
    num_train_batches: int = 0
    current_val_batch: int = 0
    num_val_batches: int = 0
    current_test_batch: int = 0
    num_test_batches: int = 0
    current_epoch: int = 0
    num_epochs: int = 0
    optim_step: int = 0
    split_idx: int = 0


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"train.device = {setting!r} but no CUDA device is visible; use 'auto' or 'cpu'"
        )
    return torch.device(setting)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_dict_for_maps(network: nn.Module) -> dict[str, torch.Tensor]:
    """Weights as ClinicaDL stores them: keys prefixed with ``network.``, on the CPU."""
    return {f"network.{k}": v.detach().cpu() for k, v in bare(network).state_dict().items()}


def load_maps_weights(network: nn.Module, path: str | Path) -> nn.Module:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("network."): v for k, v in state.items()}
    bare(network).load_state_dict(state)
    return network


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def fingerprint(*parts: Any) -> str:
    from ..split import content_hash

    return content_hash(json.loads(json.dumps(parts, default=str)))
