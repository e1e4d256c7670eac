"""The launch directory of a random search: the space, and each run's sampled options."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .. import io
from .sampling import sample_runs, to_config_overrides


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# Keys that choose which test groups are evaluated: every group is evaluated on
# every run's MAPS, and no run's training depends on them, so they stay out of
# a run's config (adding a group must not touch any run).
TEST_GROUP_KEYS = (("test",), ("data", "synthetic", "n_test_participants"))


def training_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the random-search settings and the test-group keys."""
    trimmed = copy.deepcopy(dict(config))
    trimmed.pop("random_search", None)
    for *parents, key in TEST_GROUP_KEYS:
        section = trimmed
        for parent in parents:
            section = section.get(parent, {})
        section.pop(key, None)
    return trimmed


def run_configs(
    config: Mapping[str, Any], space: Mapping[str, Any], launch_dir: str, n_runs: int, seed: int
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Job name -> (sampled options, experiment config with its own MAPS).

    The experiment config is ``training_config(config)`` with the options on top.
    """
    base = training_config(config)
    runs = {}
    for i, options in enumerate(sample_runs(space, n_runs, seed)):
        job = f"job-{i}"
        experiment = deep_merge(base, to_config_overrides(options))
        experiment["maps_dir"] = f"{launch_dir}/{job}/maps"
        runs[job] = (options, experiment)
    return runs


def write_launch_dir(
    launch_dir: str | Path, space: Mapping[str, Any], runs: Mapping[str, tuple[dict, dict]]
) -> Path:
    """``random_search.json`` and, per job, ``options.json`` and ``config.yaml``."""
    launch_dir = Path(launch_dir)
    io.write_json(launch_dir / "random_search.json", dict(space))
    for job, (options, experiment) in runs.items():
        io.write_json(launch_dir / job / "options.json", options)
        io.atomic_write_text(
            launch_dir / job / "config.yaml", yaml.safe_dump(experiment, sort_keys=False)
        )
    return launch_dir / "random_search.json"
