"""The MAPS directory: read, write and inspect it through one module.

``Maps(path)`` exposes every file of the tree as a typed path (see
``tree``); ``save_file`` / ``open_file`` read and write JSON, TSV, ``.pt``
and text files atomically; files shared by concurrent jobs are written under
a lock. Names and formats follow ClinicaDL 2.0, so a ClinicaDL MAPS opens
here and ours opens in ClinicaDL's ``Maps`` reader.
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

    def __repr__(self) -> str:
        return f"Maps({str(self.path)!r})"

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
    def architecture_log(self) -> Path:
        return self.path / "architecture.log"

    @property
    def nn_summary_txt(self) -> Path:
        return self.path / "nn_summary.txt"

    @property
    def summary_log(self) -> Path:
        return self.path / "summary.log"

    @property
    def env(self) -> Env:
        return Env(self.path / "env")

    @property
    def training(self) -> Training:
        return Training(self.path / "training")

    @property
    def test(self) -> Test:
        return Test(self.path / "test")

    @property
    def exec(self) -> Exec:
        return Exec(self.path / "exec")

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
                (self.training.optimization_json, optimization),
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
    def required_files(self) -> list[Path]:
        """Every file that ClinicaDL's reader requires for the tree as it is on disk."""
        required = [
            self.model_json,
            self.metrics_json,
            self.callbacks_json,
            self.training.optimization_json,
        ]
        if self.env.exists():
            required.append(self.env.environment_txt)
        data = self.training.data
        splits = self.training.splits_list
        if splits:
            required.append(data.data_tsv)
        for k in splits:
            for subset in (data.train.splits[k], data.validation.splits[k]):
                required += [subset.data_tsv, subset.dataset_json, subset.dataloader_json]
            split = self.split(k)
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
        for group_name in self.test.groups_list:
            group = self.test.groups[group_name]
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

    def read(self) -> Maps:
        """Check that the MAPS is complete; raise MapsError naming the first missing path."""
        if not self.path.is_dir():
            raise MapsError(f"MAPS directory not found: {self.path}")
        missing = [path for path in self.required_files() if not path.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise MapsError(f"incomplete MAPS {self.path}: missing {missing[0]}{more}")
        return self

    def delete_split(self, split: int) -> None:
        """Remove a split: its training dir, its data subsets and its test results."""
        split = int(split)
        with io.locked(self.training.data.data_tsv):
            for path in (
                self.split(split).path,
                self.training.data.train.splits[split].path,
                self.training.data.validation.splits[split].path,
            ):
                shutil.rmtree(path, ignore_errors=True)
            for group_name in self.test.groups_list:
                shutil.rmtree(
                    self.test.groups[group_name].results.splits[split].path, ignore_errors=True
                )
            remaining = self.training.splits_list
            data_tsv = self.training.data.data_tsv
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
        run = self.exec.runs[f"{kind}_{started:%Y_%m_%d_%H_%M_%S}"]
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
