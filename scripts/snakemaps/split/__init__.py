"""Participant-level stratified splits, leakage checks, and the split manifest.

Every session of a participant lands on one side. The manifest
(``training/data/split_manifest.json``) records the parameters, the
participants of each side and a content hash that training, validation and
test check before they run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .. import io
from ..errors import UserError
from ..maps import Maps

logger = logging.getLogger("snakemaps.split")

KEY_COLUMNS = ["participant_id", "session_id"]


def participant_labels(frame: pd.DataFrame) -> pd.Series:
    """One label per participant: the label of the baseline (first) session."""
    ordered = frame.sort_values(KEY_COLUMNS, kind="stable")
    return ordered.drop_duplicates("participant_id").set_index("participant_id")["label"]


def check_splittable(labels: pd.Series, n_splits: int, source: str) -> None:
    counts = labels.value_counts()
    if len(counts) < 2:
        raise UserError(
            f"{source}: only one class ({', '.join(map(str, counts.index))}) in the label "
            "column; classification needs at least two"
        )
    smallest = counts.min()
    needed = max(n_splits, 2)
    if smallest < needed:
        raise UserError(
            f"split.n_splits = {n_splits} needs at least {needed} participants per class, but "
            f"class {counts.idxmin()!r} has {smallest} in {source}; lower split.n_splits or "
            "add participants"
        )


def check_regression_splittable(labels: pd.Series, n_splits: int, source: str) -> None:
    from ..data.table import numeric_labels

    values = numeric_labels(labels, source)
    needed = 2 * max(n_splits, 2)
    if len(values) < needed:
        raise UserError(
            f"split.n_splits = {n_splits} needs at least {needed} participants for a regression, "
            f"but {source} has {len(values)}; lower split.n_splits or add participants"
        )
    if values.std() == 0:
        raise UserError(
            f"{source}: every label is {values[0]:g}; a regression needs varied targets"
        )


def strata(labels: pd.Series, task: str, n_groups: int) -> pd.Series:
    """What splits are stratified on: the class, or quantile bins of a numeric target.

    ``n_groups`` is the size of the smallest side a split makes (folds, or the
    validation set of a single split); each bin needs about that many members.
    """
    if task != "regression":  # classes (a reconstruction's too: its labels only stratify)
        return labels
    values = pd.to_numeric(labels)
    bins = max(1, min(5, len(values) // max(n_groups, 2), n_groups))
    return pd.Series(pd.qcut(values.rank(method="first"), q=bins, labels=False), index=labels.index)


def assign_splits(
    frame: pd.DataFrame,
    n_splits: int,
    seed: int,
    validation_fraction: float = 0.2,
    task: str = "classification",
) -> list[tuple[list[str], list[str]]]:
    """(train participants, validation participants) for each split."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

    labels = participant_labels(frame)
    if n_splits == 1:
        n_validation = math.ceil(len(labels) * validation_fraction)
        labels = strata(labels, task, min(n_validation, len(labels) - n_validation))
        splitter = StratifiedShuffleSplit(
            n_splits=1, test_size=validation_fraction, random_state=seed
        )
        ids = labels.index.to_numpy()
        folds = [(ids[tr], ids[va]) for tr, va in splitter.split(ids, labels.to_numpy())]
    else:
        # Group-aware, on one row per participant: every session of a participant
        # lands in one fold, and classes are balanced over participants.
        labels = strata(labels, task, n_splits)
        ids = labels.index.to_numpy()
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        folds = [(ids[tr], ids[va]) for tr, va in splitter.split(ids, labels.to_numpy(), ids)]
    return [(sorted(map(str, tr)), sorted(map(str, va))) for tr, va in folds]


def check_leakage(sides: Mapping[str, set[str]]) -> None:
    """Raise UserError if any participant appears on two sides."""
    names = list(sides)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = sorted(sides[first] & sides[second])
            if shared:
                shown = ", ".join(shared[:20]) + (" ..." if len(shared) > 20 else "")
                raise UserError(
                    f"data leakage: {len(shared)} participant(s) appear in both {first} and "
                    f"{second}: {shown}. Remove them from one of the two tables."
                )


def check_test_group(split_manifest: Mapping[str, Any], frame: pd.DataFrame, group: str) -> None:
    """Refuse a test group that shares participants with the split or has unknown labels.

    ``split_manifest`` is a loaded ``split_manifest.json``: its train and
    validation sides of every split hold every participant training saw.
    """
    from ..data.table import numeric_labels

    seen = {
        participant
        for side in split_manifest["splits"].values()
        for key in ("train", "validation")
        for participant, _ in side[key]
    }
    check_leakage(
        {"the training data": seen, f"test group {group!r}": set(frame["participant_id"])}
    )
    classes = split_manifest["classes"]
    if classes is None:
        numeric_labels(frame["label"], f"test group {group!r}")
        return
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise UserError(
            f"test group {group!r}: label(s) {unknown} do not occur in the training table "
            f"(classes {classes}); remove those rows or fix test.groups.{group}"
        )


def order_classes(classes: list[str], positive_class: str | None) -> list[str]:
    """Sorted classes, with the positive class (if given) last: output index 1 of a binary model."""
    if positive_class is None:
        return classes
    if positive_class not in classes:
        raise UserError(
            f"data.positive_class: {positive_class!r} is not a label of the table "
            f"(labels: {', '.join(classes)})"
        )
    return [c for c in classes if c != positive_class] + [positive_class]


def content_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def dataloader_description(batch_size: int, shuffle: bool, num_workers: int) -> dict[str, Any]:
    return {
        "name_": "DataLoaderConfig",
        "batch_size": batch_size,
        "sampling_weights": None,
        "shuffle": shuffle,
        "num_workers": num_workers,
        "pin_memory": True,
        "drop_last": False,
        "prefetch_factor": None,
        "persistent_workers": False,
        "collate_fn": None,
    }


def dataset_description(
    frame: pd.DataFrame,
    manifest: Path,
    classes: list[str],
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """``dataset.json``; ``extra`` adds the extraction (mode) and voting records."""
    return {
        "name_": "CachedImages",
        "cache_manifest": str(Path(manifest).resolve()),
        "label": "label",
        "classes": classes,
        "n_images": len(frame),
        "n_participants": int(frame["participant_id"].nunique()),
        **(dict(extra) if extra else {}),
    }


def training_options(
    rows: pd.DataFrame,
    dataset: dict[str, Any],
    loader: dict[str, Any],
    augmentation: Sequence[str],
    sampler: str | None,
    task: str,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Record augmentations (dataset.json) and weighted sampling (data.tsv, dataloader.json)."""
    from ..data.augmentation import describe
    from ..data.sampler import WEIGHT_COLUMN, sampling_weights

    dataset = {**dataset, "transforms": {"augmentations": describe(augmentation)}}
    if sampler == "weighted":
        rows = rows.assign(**{WEIGHT_COLUMN: sampling_weights(list(rows["label"]), task)})
        loader = {**loader, "sampling_weights": WEIGHT_COLUMN}
    return rows, dataset, loader


def public_columns(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in ("image", "tensor") if c in frame.columns])


def make_splits(
    maps_dir: str | Path,
    manifest: str | Path,
    *,
    n_splits: int,
    seed: int,
    validation_fraction: float,
    longitudinal: bool,
    batch_size: int,
    num_workers: int,
    positive_class: str | None = None,
    task: str = "classification",
    augmentation: Sequence[str] = (),
    sampler: str = "random",
    dataset_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Split the prepared table and write ``training/data/`` of the MAPS.

    The training side records ``augmentation`` (train.data_augmentation) in its
    dataset.json and, with the weighted ``sampler``, each image's sampling
    weight in a data.tsv column that its dataloader.json names (ClinicaDL 2.0's
    ``sampling_weights``).

    Test groups play no part: each is checked against the split when it is
    registered (``check_test_group``), so adding one never reruns the split.
    """
    from ..data.prepare import read_manifest

    maps = Maps(maps_dir)
    frame = read_manifest(manifest)
    labels = participant_labels(frame)
    classes: list[str] | None = None
    if task == "regression":
        check_regression_splittable(labels, n_splits, str(manifest))
    else:
        check_splittable(labels, n_splits, str(manifest))
        classes = order_classes(sorted(labels.unique()), positive_class)
    folds = assign_splits(frame, n_splits, seed, validation_fraction, task)
    data = maps.training.data
    splits: dict[str, dict[str, list[str]]] = {}
    for k, (train, validation) in enumerate(folds):
        check_leakage({"train": set(train), "validation": set(validation)})
        train_rows = frame[frame["participant_id"].isin(train)]
        val_rows = frame[frame["participant_id"].isin(validation)]
        if not longitudinal:
            val_rows = val_rows.sort_values(KEY_COLUMNS).drop_duplicates("participant_id")
        for subset, rows, shuffle in (
            (data.train.splits[k], train_rows, True),
            (data.validation.splits[k], val_rows, False),
        ):
            dataset = dataset_description(rows, manifest, classes, dataset_extra)
            loader = dataloader_description(batch_size, shuffle, num_workers)
            rows, dataset, loader = training_options(
                rows,
                dataset,
                loader,
                augmentation if shuffle else (),
                sampler if shuffle else None,
                task,
            )
            maps.save_file(public_columns(rows), subset.data_tsv, overwrite=True)
            maps.save_file(dataset, subset.dataset_json, overwrite=True)
            maps.save_file(loader, subset.dataloader_json, overwrite=True)
        splits[str(k)] = {
            "train": list(zip(train_rows.participant_id, train_rows.session_id)),
            "validation": list(zip(val_rows.participant_id, val_rows.session_id)),
        }
        logger.info(
            "split-%d: %d train images (%d participants), %d validation images (%d participants)",
            k,
            len(train_rows),
            len(train),
            len(val_rows),
            len(validation),
        )
    with io.locked(data.data_tsv):
        maps.save_file(public_columns(frame), data.data_tsv, overwrite=True)
    content = {
        "n_splits": n_splits,
        "seed": seed,
        "validation_fraction": validation_fraction if n_splits == 1 else None,
        "longitudinal": longitudinal,
        "task": task,
        "classes": classes,
        "cache_manifest": str(Path(manifest).resolve()),
        "splits": splits,
    }
    maps.save_file(
        {**content, "hash": content_hash(content)}, data.split_manifest_json, overwrite=True
    )
    logger.info("wrote %d split(s) to %s", len(folds), data.path)
    return data.split_manifest_json


def load_manifest(maps_dir: str | Path) -> dict[str, Any]:
    """Read the split manifest and check its hash; UserError if missing or altered."""
    path = Maps(maps_dir).training.data.split_manifest_json
    if not path.exists():
        raise UserError(f"missing split manifest {path}: run the split rule first")
    manifest = io.read_json(path)
    recorded = manifest.pop("hash", None)
    if recorded != content_hash(manifest):
        raise UserError(
            f"{path} was altered after the split (hash mismatch); rerun the split rule "
            "(snakemake --forcerun split)"
        )
    manifest["hash"] = recorded
    return manifest


def split_frame(maps_dir: str | Path, split: int, side: str) -> pd.DataFrame:
    """The prepared rows (with tensor paths) of one side of one split."""
    from ..data.prepare import read_manifest

    manifest = load_manifest(maps_dir)
    if str(split) not in manifest["splits"]:
        raise UserError(
            f"split {split} does not exist in {maps_dir} (it has "
            f"{len(manifest['splits'])}); check split.n_splits"
        )
    pairs = {tuple(p) for p in manifest["splits"][str(split)][side]}
    frame = read_manifest(manifest["cache_manifest"])
    keep = [(p, s) in pairs for p, s in zip(frame.participant_id, frame.session_id)]
    return frame[keep].reset_index(drop=True)
