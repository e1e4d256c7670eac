"""Unit tests of the evaluation helpers that need no torch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from snakemaps.errors import UserError
from snakemaps.evaluate import model_epoch

LOG = pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.9, 0.4, 0.6], "MAE": [3.0, 2.5, 1.5]})


def test_model_epoch_follows_each_metric_direction():
    source = Path("split-0/validation_metrics/aggregated.tsv")
    assert model_epoch("best-loss", LOG, source) == 2  # lower is better
    assert model_epoch("best-MAE", LOG, source) == 3
    assert model_epoch("final", LOG, source) == 3
    assert model_epoch("epoch-1", None, source) == 1  # needs no log


def test_model_epoch_without_the_validation_log_names_it():
    source = Path("maps/training/split-0/validation_metrics/aggregated.tsv")
    with pytest.raises(
        UserError, match=r"missing maps/training/split-0/.*aggregated.tsv.*best-loss"
    ):
        model_epoch("best-loss", None, source)
