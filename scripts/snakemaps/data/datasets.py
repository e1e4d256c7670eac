"""The data sets an experiment prepares, and what each one's tensor cache depends on.

Torch-free: the workflow calls these while it builds the DAG. A data set is
one table turned into a tensor cache (``<data_dir>/cache/<name>/``): the
training table (``train``) or a test group's (``group-<name>``). Its
``settings`` are everything the prepare step reads besides the files: the
table, the label column, the CAPS query, ``diagnoses``, ``baseline`` (the
training table only) and ``unnormalize``. An experiment whose settings
differ from the main config's (a random-search run that samples
``preprocessing``, ``baseline``, ...) gets its own cache, ``<name>-<digest>``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError
from .tsvtools import refuse_split_folder

CAPS_KEYS = (
    "caps_directory",
    "preprocessing",
    "use_uncropped_image",
    "tracer",
    "suvr_reference_region",
    "custom_suffix",
)

CAPS_DEFAULTS = {"preprocessing": "t1-linear"}


def synthetic_table(data_dir: str, part: str = "participants") -> str:
    return f"{data_dir}/synthetic/{part}.tsv"


def caps_settings(data: Mapping[str, Any], data_dir: str) -> dict[str, Any] | None:
    """The CAPS query keys of ``data`` (None: the table's image column holds the images)."""
    demo_caps = data["tsv"] is None and data["synthetic"].get("caps", False)
    if data["tsv"] is None and data.get("caps_directory"):
        raise UserError(
            "data.caps_directory is set but data.tsv is null: give data.tsv the table of "
            "sessions (participant_id, session_id, and the label column) to read from the CAPS, "
            "or set data.synthetic.caps: true for the demo cohort written as a CAPS"
        )
    if demo_caps and data["label"] != "diagnosis":
        raise UserError(
            "data.synthetic.caps writes ClinicaDL-style tables whose label column is diagnosis; "
            f"set data.label: diagnosis (it is {data['label']!r})"
        )
    if not demo_caps and not data.get("caps_directory"):
        given = {
            key: data.get(key)
            for key in CAPS_KEYS[1:]
            if data.get(key) not in (None, False, CAPS_DEFAULTS.get(key))
        }
        if given:
            raise UserError(
                f"data.{next(iter(given))} is set but data.caps_directory is null: the CAPS "
                "options find images in a CAPS. Set data.caps_directory, or remove "
                + ", ".join(f"data.{key}" for key in given)
            )
        return None
    settings = {key: data.get(key) for key in CAPS_KEYS}
    if demo_caps:
        settings.update(caps_directory=f"{data_dir}/synthetic/caps", preprocessing="t1-linear")
    return settings


def prepare_settings(
    data: Mapping[str, Any], table: str, data_dir: str, group: bool = False
) -> dict[str, Any]:
    """What the prepare step of ``table`` reads from the config (``prepare_cache``'s keywords)."""
    return {
        "table": table,
        "label": data["label"],
        "caps": caps_settings(data, data_dir),
        "diagnoses": list(data["diagnoses"]) if data.get("diagnoses") else None,
        "baseline": False if group else bool(data.get("baseline", False)),
        "unnormalize": bool(data.get("unnormalize", False)),
    }


def dataset_specs(
    config: Mapping[str, Any], groups: Mapping[str, str], data_dir: str
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Base name (train, group-<name>) -> (config key naming the table, prepare settings)."""
    data = config["data"]
    train = synthetic_table(data_dir) if data["tsv"] is None else data["tsv"]
    specs = {"train": ("data.tsv", prepare_settings(data, train, data_dir))}
    for name, path in groups.items():
        specs[f"group-{name}"] = (
            f"test.groups.{name}",
            prepare_settings(data, path, data_dir, True),
        )
    return specs


def digest(settings: Mapping[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def dataset_names(
    specs: Mapping[str, tuple[str, dict]], reference: Mapping[str, tuple[str, dict]]
) -> dict[str, str]:
    """Base name -> cache name: the base where the settings are the reference's, else suffixed."""
    return {
        base: base if reference.get(base) == spec else f"{base}-{digest(spec[1])}"
        for base, spec in specs.items()
    }


def check_dataset(key: str, settings: Mapping[str, Any], data_dir: str) -> None:
    """UserError before any job if the table or the CAPS of a data set cannot be read.

    With a CAPS, the table is read and each session's file found (the prepare
    step does it again). The demo cohort's files are written by the workflow
    itself and not checked.
    """
    table = settings["table"]
    if table.startswith(f"{data_dir}/synthetic/"):
        return
    refuse_split_folder(table, key)
    if not Path(table).is_file():
        caps = settings["caps"] is not None
        columns = "participant_id, session_id and the label column" + (
            "" if caps else ", and image"
        )
        raise UserError(
            f"{key}: table not found: {table}. Set {key} to an existing tab-separated file "
            f"with columns {columns}."
        )
    if settings["caps"] is not None:
        # Every session's file is found now, so a missing one stops the run before any job.
        from .prepare import read_source_table

        read_source_table(
            table,
            label=settings["label"],
            key=key,
            caps=settings["caps"],
            diagnoses=settings["diagnoses"],
            baseline=settings["baseline"],
        )
