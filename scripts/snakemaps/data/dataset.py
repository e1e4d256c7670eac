"""Torch datasets over the tensor cache."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .table import numeric_labels

# Data sets smaller than this are held in memory as one tensor.
IN_MEMORY_BYTES = 2 * 1024**3


class CachedImages(Dataset):
    """Images from the tensor cache with their labels.

    Labels are class indices (``classes`` given) or float32 numbers
    (``classes`` None: regression). Returns ``(image, label, index)``;
    ``index`` points back into ``frame`` so evaluation can name each image's
    participant and session.
    """

    def __init__(self, frame: pd.DataFrame, classes: Sequence[str] | None) -> None:
        self.frame = frame.reset_index(drop=True)
        self.classes = list(classes) if classes else None
        if self.classes is None:
            self.labels = torch.tensor(numeric_labels(self.frame["label"]), dtype=torch.float32)
        else:
            lookup = {name: i for i, name in enumerate(self.classes)}
            unknown = sorted(set(self.frame["label"]) - set(lookup))
            if unknown:
                raise ValueError(
                    f"labels {unknown} are not among the training classes {self.classes}"
                )
            self.labels = torch.tensor([lookup[v] for v in self.frame["label"]], dtype=torch.long)
        first = np.load(self.frame["tensor"].iloc[0], mmap_mode="r")
        self.shape = tuple(first.shape)
        self.images: torch.Tensor | None = None
        if first.nbytes * len(self.frame) <= IN_MEMORY_BYTES:
            self.images = torch.from_numpy(np.stack([np.load(p) for p in self.frame["tensor"]]))

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.images is not None:
            image = self.images[index]
        else:
            image = torch.from_numpy(np.load(self.frame["tensor"].iloc[index]))
        return image, self.labels[index], index
