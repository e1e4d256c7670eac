"""The MAPS directory: read, write and inspect it through one module.

``Maps(path)`` exposes every file of the tree as a typed path (see
``tree``); ``save_file`` / ``open_file`` read and write JSON, TSV, ``.pt``
and text files atomically; files shared by concurrent jobs are written under
a lock. Names and formats follow ClinicaDL 2.0, so a ClinicaDL MAPS opens
here and ours opens in ClinicaDL's ``Maps`` reader.

``Maps(path).read()`` refuses exactly what ClinicaDL's reader refuses (its
``@mandatory`` files, see ``mandatory_files``) and returns a view of the
tree where every optional file that is absent reads as None;
``read(strict=True)`` also requires every file ClinicaDL's trainer writes,
which is how the workflow proves that a MAPS it wrote is complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from .. import io
from .names import (
    checkpoint_name,
    model_dir_name,
    parse_checkpoint,
    parse_model,
    validate_metric_name,
)
from .tree import (
    Env,
    Exec,
    ExecRun,
    ModelDir,
    Test,
    TestGroup,
    Training,
    TrainingSplit,
)

__all__ = [
    "Maps",
    "MapsError",
    "checkpoint_name",
    "model_dir_name",
    "parse_checkpoint",
    "parse_model",
    "validate_metric_name",
]

SUPPORTED_SUFFIXES = (".json", ".tsv", ".pt", ".txt", ".log", ".yml", ".yaml")


class MapsError(FileNotFoundError):
    """A MAPS that cannot be read: the message names the missing path."""


class Maps:
    """A MAPS directory (ClinicaDL's ``clinicadl.io.maps.Maps``, crash-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._read = False  # True on the view read() returns: absent files are None

    def __repr__(self) -> str:
        return f"Maps({str(self.path)!r})"

    def _file(self, name: str) -> Path | None:
        path = self.path / name
        return None if self._read and not path.is_file() else path

    def _paths(self) -> Maps:
        """This MAPS with every path built, present or not (what writers need)."""
        return Maps(self.path) if self._read else self

    # Root files -----------------------------------------------------------
    @property
    def model_json(self) -> Path:
        return self.path / "model.json"

    @property
    def metrics_json(self) -> Path:
        return self.path / "metrics.json"

    @property
    def callbacks_json(self) -> Path:
        return self.path / "callbacks.json"

    @property
    def architecture_log(self) -> Path | None:
        return self._file("architecture.log")

    @property
    def nn_summary_txt(self) -> Path | None:
        return self._file("nn_summary.txt")

    @property
    def summary_log(self) -> Path | None:
        return self._file("summary.log")

    @property
    def env(self) -> Env:
        return Env(self.path / "env", read=self._read)

    @property
    def training(self) -> Training:
        return Training(self.path / "training", read=self._read)

    @property
    def test(self) -> Test:
        return Test(self.path / "test", read=self._read)

    @property
    def exec(self) -> Exec:
        return Exec(self.path / "exec", read=self._read)

    def split(self, split: int) -> TrainingSplit:
        return self.training.splits[int(split)]

    def model(self, checkpoint: str) -> ModelDir:
        """The model directory of ``split-<k>_<model>``."""
        split, model = parse_checkpoint(checkpoint)
        return self.split(split).models.get(model)

    def test_group(self, name: str) -> TestGroup:
        return self.test.groups[name]

    # Creation ---------------------------------------------------------------
    def create(
        self,
        *,
        model: dict[str, Any],
        metrics: dict[str, Any],
        callbacks: dict[str, Any],
        optimization: dict[str, Any],
    ) -> None:
        """Write the root configuration files first, so the MAPS is readable early.

        Re-creating with the same content is a no-op; with other content the
        files are replaced atomically (the workflow reruns everything below).
        """
        for name in metrics.get("metrics", {}):
            validate_metric_name(name, where=f"{self.metrics_json}")
        self.path.mkdir(parents=True, exist_ok=True)
        with io.locked(self.path / "maps.json"):
            for path, content in (
                (self.model_json, model),
                (self.metrics_json, metrics),
                (self.callbacks_json, callbacks),
                (self._paths().training.optimization_json, optimization),
            ):
                if not path.exists() or io.read_json(path) != json.loads(io.json_text(content)):
                    io.write_json(path, content)

    # Generic file access --------------------------------------------------
    @staticmethod
    def open_file(path: str | Path) -> Any:
        """Load any MAPS file: JSON -> dict, TSV -> DataFrame, .pt -> object, text -> str."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory, not a file")
        if not path.exists():
            raise FileNotFoundError(f"no such MAPS file: {path}")
        suffix = path.suffix
        if suffix == ".json":
            return io.read_json(path)
        if suffix == ".tsv":
            return io.read_tsv(path)
        if suffix == ".pt":
            import torch

            return torch.load(path, map_location="cpu", weights_only=True)
        if suffix in SUPPORTED_SUFFIXES:
            return path.read_text(encoding="utf-8")
        raise ValueError(f"unsupported MAPS file type {suffix!r} ({path})")

    @staticmethod
    def save_file(obj: Any, path: str | Path, overwrite: bool = False) -> Path:
        """Save ``obj`` atomically; refuse to replace an existing file unless ``overwrite``."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory, not a file path")
        if path.suffix not in SUPPORTED_SUFFIXES:
            raise ValueError(
                f"unsupported MAPS file type {path.suffix!r} ({path}); supported: "
                + ", ".join(SUPPORTED_SUFFIXES)
            )
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if path.suffix == ".json":
            return io.write_json(path, obj)
        if path.suffix == ".tsv":
            return io.write_tsv(path, obj)
        if path.suffix == ".pt":
            return io.torch_save(path, obj)
        return io.atomic_write_text(path, str(obj))

    @staticmethod
    def append_log(path: str | Path, text: str) -> Path:
        """Append to a log shared by concurrent jobs (``summary.log``) under its lock."""
        if not text.endswith("\n"):
            text += "\n"
        return io.append_text_locked(path, text)

    # Reading and checking -------------------------------------------------
    def mandatory_files(self) -> list[Path]:
        """The files ClinicaDL 2.0's reader requires (its ``@mandatory`` paths), as on disk.

        The root ``model.json``, ``metrics.json``, ``callbacks.json``;
        ``training/optimization.json``; ``training/data/data.tsv``;
        ``data.tsv``, ``dataset.json`` and ``dataloader.json`` of every
        ``training/data/{train,validation}/split-<k>`` (and of both for every
        ``training/split-<k>``); ``env/environment.txt`` when ``env/`` exists.
        """
        maps = self._paths()
        data = maps.training.data
        required = [
            maps.model_json,
            maps.metrics_json,
            maps.callbacks_json,
            maps.training.optimization_json,
            data.data_tsv,
        ]
        trained = set(maps.training.splits_list)
        for subset in (data.train, data.validation):
            for k in sorted(trained | set(subset.splits.keys())):
                split = subset.splits[k]
                required += [split.data_tsv, split.dataset_json, split.dataloader_json]
        if maps.env.exists():
            required.append(maps.env.environment_txt)
        return required

    def required_files(self, strict: bool = False) -> list[Path]:
        """What ``read(strict=strict)`` requires for the tree as it is on disk.

        ``strict=False``: ``mandatory_files()``. ``strict=True`` adds every
        file ClinicaDL's trainer writes: per split (each split of
        ``training/data`` included) ``computational.json``, ``summary.log``,
        ``warning.log``, the training and computational logs, the validation
        metrics, and ``model.pt`` with its validation metrics for every model
        saved; per test group its data files and, for every result, its
        ``computational.json`` and metrics.
        """
        required = self.mandatory_files()
        if not strict:
            return required
        maps = self._paths()
        data = maps.training.data
        splits = set(maps.training.splits_list)
        splits |= set(data.train.splits.keys()) | set(data.validation.splits.keys())
        for k in sorted(splits):
            split = maps.split(k)
            required += [
                split.computational_json,
                split.summary_log,
                split.warning_log,
                split.logs.training_loss_tsv,
                split.logs.computational_tsv,
                split.validation_metrics.aggregated_tsv,
                split.validation_metrics.details_tsv,
            ]
            for name in split.models.names():
                model = split.models.get(name)
                required += [
                    model.model_pt,
                    model.validation_metrics.aggregated_tsv,
                    model.validation_metrics.details_tsv,
                ]
        for group_name in maps.test.groups_list:
            group = maps.test.groups[group_name]
            required += [group.data_tsv, group.dataset_json, group.dataloader_json]
            for k in group.results.splits:
                results = group.results.splits[k]
                for name in results.models:
                    result = results.models[name]
                    required += [
                        result.computational_json,
                        result.metrics.aggregated_tsv,
                        result.metrics.details_tsv,
                    ]
        return required

    def missing_files(self, strict: bool = False) -> list[Path]:
        """``required_files(strict)`` that are not on disk, in that order."""
        if not self.training.path.is_dir():
            return [self.training.path, *(p for p in self.mandatory_files() if not p.is_file())]
        return [path for path in self.required_files(strict) if not path.is_file()]

    def read(self, strict: bool = False) -> Maps:
        """Check the MAPS and return a view of it where absent optional files are None.

        Raises MapsError naming the first missing path: a file of
        ``mandatory_files()`` (what ClinicaDL's reader refuses a MAPS for),
        or with ``strict=True`` any file ClinicaDL's trainer writes
        (``required_files(strict=True)``).
        """
        if not self.path.is_dir():
            raise MapsError(f"MAPS directory not found: {self.path}")
        missing = self.missing_files(strict)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            if strict:
                raise MapsError(
                    f"incomplete MAPS {self.path}: missing {missing[0]}{more}; "
                    "read(strict=True) requires every file ClinicaDL's trainer writes"
                )
            raise MapsError(
                f"unreadable MAPS {self.path}: missing {missing[0]}{more}, "
                "which ClinicaDL's reader requires"
            )
        view = Maps(self.path)
        view._read = True
        return view

    def delete_split(self, split: int) -> None:
        """Remove a split: its training dir, its data subsets and its test results."""
        split = int(split)
        maps = self._paths()
        with io.locked(maps.training.data.data_tsv):
            for path in (
                maps.split(split).path,
                maps.training.data.train.splits[split].path,
                maps.training.data.validation.splits[split].path,
            ):
                shutil.rmtree(path, ignore_errors=True)
            for group_name in maps.test.groups_list:
                shutil.rmtree(
                    maps.test.groups[group_name].results.splits[split].path, ignore_errors=True
                )
            remaining = maps.training.splits_list
            data_tsv = maps.training.data.data_tsv
            if data_tsv.exists() and "split" in io.read_tsv(data_tsv).columns:
                frame = io.read_tsv(data_tsv)
                io.write_tsv(data_tsv, frame[frame["split"].isin(remaining)])

    # Provenance -----------------------------------------------------------
    def record_run(
        self, kind: str, record: dict[str, Any], *, started: _dt.datetime | None = None
    ) -> ExecRun:
        """Append a provenance record under ``exec/run-<kind>_YYYY_MM_DD_HH_MM_SS/``.

        Jobs that start in the same second share the directory; records are
        appended to its ``provenance.json`` list under a lock.
        """
        if kind not in ("train", "validate", "test"):
            raise ValueError(f"run kind must be train, validate or test, not {kind!r}")
        started = started or _dt.datetime.now(_dt.timezone.utc)
        run = self._paths().exec.runs[f"{kind}_{started:%Y_%m_%d_%H_%M_%S}"]
        full = {**default_provenance(), **record}
        with io.locked(run.provenance_json):
            records = io.read_json(run.provenance_json) if run.provenance_json.exists() else []
            records.append(full)
            io.write_json(run.provenance_json, records)
            old = run.info_log.read_text() if run.info_log.exists() else ""
            line = (
                f"{full['timestamp']} {kind} {record.get('step', '')} started on {full['host']}\n"
            )
            io.atomic_write_text(run.info_log, old + line)
            if not run.error_log.exists():
                io.atomic_write_text(run.error_log, "")
        return run


def default_provenance() -> dict[str, Any]:
    """Facts about this process: host, command, SLURM job, timestamp."""
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "command": sys.argv,
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
