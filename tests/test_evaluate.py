"""Unit tests of the evaluation helpers that need no torch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from snakemaps.errors import UserError
from snakemaps.evaluate import _training_validation, model_batch, model_epoch

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


def test_a_saved_model_is_matched_to_the_validation_row_it_was_saved_after():
    # train.evaluation_steps: validations after batches 1 and 3 of 5, and at each epoch's end
    log = pd.DataFrame(
        {
            "epoch": [1, 1, 1, 2, 2, 2],
            "batch": [1, 3, 4, 1, 3, 4],
            "loss": [0.9, 0.5, 0.7, 0.6, 0.3, 0.4],
        }
    )
    source = Path("split-0/validation_metrics/aggregated.tsv")
    assert (model_epoch("best-loss", log, source), model_batch("best-loss", log, 2)) == (2, 3)
    assert model_batch("final", log, model_epoch("final", log, source)) == 4
    assert model_batch("epoch-1", log, 1) == 4  # an epoch checkpoint is the epoch's end
    assert model_batch("final", LOG, 3) is None  # no batch column: the epoch alone
    rows = _training_validation(log, log, 2, 3)
    assert rows is not None and list(rows[0]["loss"]) == [0.3]
    # a batch training did not validate after: evaluated afresh, not mixed up
    assert _training_validation(log, log, 2, 2) is None
