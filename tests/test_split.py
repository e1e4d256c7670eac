"""Unit tests of the participant-level splitter and its leakage checks."""

from __future__ import annotations

import pandas as pd
import pytest
from snakemaps.errors import UserError
from snakemaps.split import assign_splits, check_leakage, check_splittable, participant_labels


def table(n_ad=10, n_cn=14, sessions=3):
    rows = []
    for label, n in (("AD", n_ad), ("CN", n_cn)):
        for i in range(n):
            for s in range(1 + i % sessions):
                rows.append(
                    {
                        "participant_id": f"sub-{label}{i:02d}",
                        "session_id": f"ses-M{12 * s:03d}",
                        "label": label,
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_splits", [2, 3, 5])
def test_kfold_groups_participants_and_covers_everyone_once(n_splits):
    frame = table()
    folds = assign_splits(frame, n_splits, seed=0)
    assert len(folds) == n_splits
    everyone = set(frame["participant_id"])
    validated = [p for _, validation in folds for p in validation]
    assert sorted(validated) == sorted(everyone)  # each participant validated exactly once
    for train, validation in folds:
        assert not set(train) & set(validation)
        assert set(train) | set(validation) == everyone


def test_kfold_is_stratified():
    frame = table(n_ad=10, n_cn=20)
    labels = participant_labels(frame)
    for _, validation in assign_splits(frame, 5, seed=1):
        counts = labels[validation].value_counts()
        assert counts["AD"] == 2 and counts["CN"] == 4


def test_split_is_deterministic_and_seed_dependent():
    frame = table()
    assert assign_splits(frame, 3, seed=7) == assign_splits(frame, 3, seed=7)
    assert assign_splits(frame, 3, seed=7) != assign_splits(frame, 3, seed=8)


def test_single_split_uses_validation_fraction():
    frame = table(n_ad=10, n_cn=10)
    [(train, validation)] = assign_splits(frame, 1, seed=0, validation_fraction=0.2)
    assert len(validation) == 4 and len(train) == 16
    assert not set(train) & set(validation)


def test_single_class_is_refused():
    frame = table(n_cn=0)
    with pytest.raises(UserError, match="only one class"):
        check_splittable(participant_labels(frame), 2, "data.tsv")


def test_more_splits_than_smallest_class_is_refused():
    frame = table(n_ad=3, n_cn=10)
    with pytest.raises(UserError, match=r"n_splits = 5.*'AD' has 3"):
        check_splittable(participant_labels(frame), 5, "data.tsv")


def test_leakage_lists_participants():
    with pytest.raises(UserError, match="sub-02, sub-03") as error:
        check_leakage(
            {"train": {"sub-01", "sub-02", "sub-03"}, "test group 'x'": {"sub-02", "sub-03"}}
        )
    assert "2 participant(s)" in str(error.value)


def test_positive_class_is_last_and_must_exist():
    from snakemaps.split import order_classes

    assert order_classes(["AD", "CN"], None) == ["AD", "CN"]
    assert order_classes(["AD", "CN"], "AD") == ["CN", "AD"]
    with pytest.raises(UserError, match=r"data.positive_class: 'MCI' is not a label"):
        order_classes(["AD", "CN"], "MCI")
