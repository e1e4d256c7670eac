"""Unit tests of the participant-level splitter and its leakage checks."""

from __future__ import annotations

import pandas as pd
import pytest
from snakemaps.errors import UserError
from snakemaps.split import (
    assign_splits,
    check_leakage,
    check_splittable,
    check_test_group,
    participant_labels,
)


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


def split_manifest(classes):
    """A loaded split manifest of sub-01..sub-04 (sub-04 validated only, in split 1)."""
    return {
        "classes": classes,
        "splits": {
            "0": {"train": [["sub-01", "ses-M000"], ["sub-02", "ses-M000"]], "validation": []},
            "1": {"train": [["sub-03", "ses-M000"]], "validation": [["sub-04", "ses-M012"]]},
        },
    }


def group(participants, labels):
    return pd.DataFrame({"participant_id": participants, "session_id": "ses-M000", "label": labels})


def test_test_group_is_checked_against_every_side_of_every_split():
    manifest = split_manifest(["CN", "AD"])
    check_test_group(manifest, group(["sub-10", "sub-11"], ["AD", "CN"]), "ext")
    with pytest.raises(UserError, match=r"training data and test group 'ext': sub-04\. Remove"):
        check_test_group(manifest, group(["sub-10", "sub-04"], ["AD", "CN"]), "ext")


def test_test_group_labels_must_be_training_classes():
    with pytest.raises(
        UserError, match=r"test group 'ext': label\(s\) \['MCI'\].*test\.groups\.ext"
    ):
        check_test_group(split_manifest(["CN", "AD"]), group(["sub-10"], ["MCI"]), "ext")
    # Regression (classes null): the labels must be numbers.
    check_test_group(split_manifest(None), group(["sub-10"], ["71.5"]), "ext")
    with pytest.raises(UserError, match=r"test group 'ext'.*'old'"):
        check_test_group(split_manifest(None), group(["sub-10"], ["old"]), "ext")


def test_positive_class_is_last_and_must_exist():
    from snakemaps.split import order_classes

    assert order_classes(["AD", "CN"], None) == ["AD", "CN"]
    assert order_classes(["AD", "CN"], "AD") == ["CN", "AD"]
    with pytest.raises(UserError, match=r"data.positive_class: 'MCI' is not a label"):
        order_classes(["AD", "CN"], "MCI")


def age_table(n=40, sessions=2):
    return pd.DataFrame(
        [
            {
                "participant_id": f"sub-{i:03d}",
                "session_id": f"ses-M{12 * s:03d}",
                "label": f"{55 + i * 0.75 + s:.1f}",
            }
            for i in range(n)
            for s in range(1 + i % sessions)
        ]
    )


def test_regression_splits_group_participants_and_spread_the_target():
    frame = age_table()
    folds = assign_splits(frame, 4, seed=0, task="regression")
    ages = participant_labels(frame).astype(float)
    everyone = set(frame["participant_id"])
    assert sorted(p for _, va in folds for p in va) == sorted(everyone)
    for train, validation in folds:
        assert not set(train) & set(validation)
        # Stratified on age quintiles: every fold's validation spans young to old.
        assert ages[validation].min() < 62 and ages[validation].max() > 77, ages[validation]
    # A single split: the validation set takes one participant per age quartile.
    ((train, validation),) = assign_splits(age_table(16), 1, 0, 0.25, task="regression")
    ages = participant_labels(age_table(16)).astype(float)
    assert len(validation) == 4 and len(train) == 12
    assert sorted(pd.qcut(ages, 4, labels=False)[validation]) == [0, 1, 2, 3]


def test_regression_needs_numbers_and_variation():
    from snakemaps.split import check_regression_splittable

    frame = age_table()
    frame.loc[3, "label"] = "old"
    with pytest.raises(UserError, match=r"not finite numbers: 'old'.*data.task: classification"):
        check_regression_splittable(participant_labels(frame), 3, "train.tsv")
    constant = age_table().assign(label="70")
    with pytest.raises(UserError, match="every label is 70"):
        check_regression_splittable(participant_labels(constant), 3, "train.tsv")
    with pytest.raises(UserError, match="needs at least 10 participants"):
        check_regression_splittable(participant_labels(age_table(n=6)), 5, "train.tsv")
