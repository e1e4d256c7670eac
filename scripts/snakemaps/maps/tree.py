"""Typed paths for every file and directory of a MAPS.

Mirrors ``clinicadl.io.maps.Maps``: ``maps.training.splits[0].models
.best_models.metrics["loss"].model_pt`` is
``<maps>/training/split-0/models/best_models/best-loss/model.pt``. Indexing
(``splits[k]``, ``epochs[e]``, ``metrics[m]``, ``groups[g]``) builds the path
whether or not it exists, so writers can use it; ``*_list`` and ``keys()``
scan the disk.

A tree reached from ``Maps.read()`` shows what is on disk instead: a file
property is None when the file is absent (every part but ClinicaDL's
mandatory files is optional), and a listing is empty when its directory is.
Properties annotated ``Path`` are the mandatory files that ``read()``
guarantees (for the splits on disk); ``Path | None`` ones are optional.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from .names import index_of, model_dir_name, validate_metric_name

T = TypeVar("T")
K = TypeVar("K")
D = TypeVar("D", bound="Dir")


class Dir:
    """A directory of the MAPS tree; ``read=True``: absent files read as None."""

    def __init__(self, path: Path, *, read: bool = False) -> None:
        self.path = Path(path)
        self._read = read

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.is_dir()

    def _file(self, name: str) -> Path | None:
        """``<dir>/<name>``; on a tree from ``read()``, None when that file is absent."""
        path = self.path / name
        return None if self._read and not path.is_file() else path

    def _subdir(self, name: str) -> Path | None:
        path = self.path / name
        return None if self._read and not path.is_dir() else path

    def _dir(self, cls: type[D], name: str) -> D:
        return cls(self.path / name, read=self._read)

    def _children(self, cls: Callable[..., T], prefix: str, numeric: bool) -> Children:
        return Children(self.path, prefix, cls, numeric, read=self._read)


class Children(Generic[K, T]):
    """``<dir>/<prefix>-<key>`` children, indexed by key, listed from disk."""

    def __init__(
        self,
        parent: Path,
        prefix: str,
        factory: Callable[..., T],
        numeric: bool,
        *,
        read: bool = False,
    ) -> None:
        self._parent, self._prefix, self._factory, self._numeric = parent, prefix, factory, numeric
        self._read = read

    def __getitem__(self, key: K) -> T:
        if self._prefix == "best":
            validate_metric_name(str(key))
        return self._factory(self._parent / f"{self._prefix}-{key}", read=self._read)

    def keys(self) -> list[K]:
        if not self._parent.is_dir():
            return []
        found = []
        for child in self._parent.iterdir():
            if not child.is_dir():
                continue
            if self._numeric:
                index = index_of(child.name, self._prefix)
                if index is not None:
                    found.append(index)
            elif child.name.startswith(self._prefix + "-"):
                found.append(child.name[len(self._prefix) + 1 :])
        return sorted(found)

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self.keys())

    def items(self) -> list[tuple[K, T]]:
        return [(key, self[key]) for key in self.keys()]

    def values(self) -> list[T]:
        return [self[key] for key in self.keys()]


class MetricsFiles(Dir):
    """``aggregated.tsv`` and ``details.tsv``."""

    @property
    def aggregated_tsv(self) -> Path | None:
        return self._file("aggregated.tsv")

    @property
    def details_tsv(self) -> Path | None:
        return self._file("details.tsv")


class ModelDir(Dir):
    """``best-<metric>``, ``epoch-<e>`` or ``final``: weights and their validation."""

    @property
    def model_pt(self) -> Path | None:
        return self._file("model.pt")

    @property
    def warning_log(self) -> Path | None:
        return self._file("warning.log")

    @property
    def validation_metrics(self) -> MetricsFiles:
        return self._dir(MetricsFiles, "validation_metrics")


class BestModels(Dir):
    @property
    def metrics(self) -> Children[str, ModelDir]:
        return self._children(ModelDir, "best", False)

    @property
    def metrics_list(self) -> list[str]:
        return self.metrics.keys()


class Checkpoints(Dir):
    @property
    def epochs(self) -> Children[int, ModelDir]:
        return self._children(ModelDir, "epoch", True)

    @property
    def epochs_list(self) -> list[int]:
        return self.epochs.keys()


class Models(Dir):
    @property
    def best_models(self) -> BestModels:
        return self._dir(BestModels, "best_models")

    @property
    def checkpoints(self) -> Checkpoints:
        return self._dir(Checkpoints, "checkpoints")

    @property
    def final(self) -> ModelDir:
        return self._dir(ModelDir, "final")

    def get(self, name: str) -> ModelDir:
        """The directory of ``best-<metric>``, ``epoch-<e>`` or ``final``."""
        name = model_dir_name(name)
        if name == "final":
            return self.final
        kind, _, value = name.partition("-")
        if kind == "best":
            return self.best_models.metrics[value]
        return self.checkpoints.epochs[int(value)]

    def names(self) -> list[str]:
        """Every model saved in this split, by MAPS name."""
        names = [f"best-{m}" for m in self.best_models.metrics_list]
        names += [f"epoch-{e}" for e in self.checkpoints.epochs_list]
        return names + (["final"] if self.final.exists() else [])


class TmpEpoch(Dir):
    """A resume checkpoint: ``tmp/epoch-<e>/``."""

    @property
    def model_pt(self) -> Path | None:
        return self._file("model.pt")

    @property
    def optimizer_pt(self) -> Path | None:
        return self._file("optimizer.pt")

    @property
    def scaler_pt(self) -> Path | None:
        return self._file("scaler.pt")

    @property
    def state_json(self) -> Path | None:
        return self._file("state.json")

    @property
    def callbacks(self) -> Path | None:
        return self._subdir("callbacks")

    @property
    def validation_metrics(self) -> MetricsFiles:
        return self._dir(MetricsFiles, "validation_metrics")


class Tmp(Dir):
    @property
    def epochs(self) -> Children[int, TmpEpoch]:
        return self._children(TmpEpoch, "epoch", True)

    @property
    def epochs_list(self) -> list[int]:
        return self.epochs.keys()


class Logs(Dir):
    @property
    def training_loss_tsv(self) -> Path | None:
        return self._file("training_loss.tsv")

    @property
    def computational_tsv(self) -> Path | None:
        return self._file("computational.tsv")

    @property
    def learning_rates(self) -> Path | None:
        return self._subdir("learning_rates")

    @property
    def learning_rates_list(self) -> list[str]:
        """The optimizers with a ``learning_rates/<optimizer>.tsv``."""
        folder = self.path / "learning_rates"
        return sorted(p.stem for p in folder.glob("*.tsv")) if folder.is_dir() else []

    def learning_rate_tsv(self, optimizer: str) -> Path | None:
        return self._file(f"learning_rates/{optimizer}.tsv")


class TrainingSplit(Dir):
    """``training/split-<k>/``: what training split k produced."""

    @property
    def computational_json(self) -> Path | None:
        return self._file("computational.json")

    @property
    def summary_log(self) -> Path | None:
        return self._file("summary.log")

    @property
    def warning_log(self) -> Path | None:
        return self._file("warning.log")

    @property
    def logs(self) -> Logs:
        return self._dir(Logs, "logs")

    @property
    def models(self) -> Models:
        return self._dir(Models, "models")

    @property
    def validation_metrics(self) -> MetricsFiles:
        return self._dir(MetricsFiles, "validation_metrics")

    @property
    def tmp(self) -> Tmp:
        return self._dir(Tmp, "tmp")


class DataSplit(Dir):
    """``training/data/<train|validation>/split-<k>/``."""

    @property
    def data_tsv(self) -> Path:
        return self.path / "data.tsv"

    @property
    def dataset_json(self) -> Path:
        return self.path / "dataset.json"

    @property
    def dataloader_json(self) -> Path:
        return self.path / "dataloader.json"


class DataSets(Dir):
    @property
    def splits(self) -> Children[int, DataSplit]:
        return self._children(DataSplit, "split", True)


class TrainingData(Dir):
    @property
    def data_tsv(self) -> Path:
        return self.path / "data.tsv"

    @property
    def split_manifest_json(self) -> Path | None:
        """Our addition: the split's parameters, participants and content hash."""
        return self._file("split_manifest.json")

    @property
    def train(self) -> DataSets:
        return self._dir(DataSets, "train")

    @property
    def validation(self) -> DataSets:
        return self._dir(DataSets, "validation")


class Training(Dir):
    @property
    def optimization_json(self) -> Path:
        return self.path / "optimization.json"

    @property
    def data(self) -> TrainingData:
        return self._dir(TrainingData, "data")

    @property
    def splits(self) -> Children[int, TrainingSplit]:
        return self._children(TrainingSplit, "split", True)

    @property
    def splits_list(self) -> list[int]:
        return self.splits.keys()


class TestResult(Dir):
    """``test/group-<g>/results/split-<k>/<model>/``."""

    @property
    def computational_json(self) -> Path | None:
        return self._file("computational.json")

    @property
    def warning_log(self) -> Path | None:
        return self._file("warning.log")

    @property
    def metrics(self) -> MetricsFiles:
        return self._dir(MetricsFiles, "metrics")


class TestSplitResults(Dir):
    @property
    def models(self) -> _ModelResults:
        return _ModelResults(self.path, read=self._read)


class _ModelResults:
    def __init__(self, path: Path, *, read: bool = False) -> None:
        self._path, self._read = path, read

    def __getitem__(self, name: str) -> TestResult:
        return TestResult(self._path / model_dir_name(name), read=self._read)

    def keys(self) -> list[str]:
        if not self._path.is_dir():
            return []
        return sorted(p.name for p in self._path.iterdir() if p.is_dir())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


class TestResults(Dir):
    @property
    def splits(self) -> Children[int, TestSplitResults]:
        return self._children(TestSplitResults, "split", True)


class TestGroup(Dir):
    """``test/group-<name>/``."""

    @property
    def data_tsv(self) -> Path | None:
        return self._file("data.tsv")

    @property
    def dataset_json(self) -> Path | None:
        return self._file("dataset.json")

    @property
    def dataloader_json(self) -> Path | None:
        return self._file("dataloader.json")

    @property
    def results(self) -> TestResults:
        return self._dir(TestResults, "results")

    def summary_tsv(self, metric: str) -> Path | None:
        """Our addition: per-split values with mean and std for ``best-<metric>``."""
        return self._file(f"summary-{validate_metric_name(metric)}.tsv")


class Test(Dir):
    @property
    def groups(self) -> Children[str, TestGroup]:
        return self._children(TestGroup, "group", False)

    @property
    def groups_list(self) -> list[str]:
        return self.groups.keys()


class Env(Dir):
    @property
    def environment_txt(self) -> Path | None:
        return self._file("environment.txt")

    @property
    def environment_yml(self) -> Path | None:
        return self._file("environment.yml")

    @property
    def environment_portable_yml(self) -> Path | None:
        return self._file("environment_portable.yml")

    @property
    def system_json(self) -> Path | None:
        """Our addition: GPU, driver, CUDA and cuDNN facts."""
        return self._file("system.json")


class ExecRun(Dir):
    """``exec/run-<kind>_YYYY_MM_DD_HH_MM_SS/``."""

    @property
    def debug_log(self) -> Path | None:
        return self._file("debug.log")

    @property
    def error_log(self) -> Path | None:
        return self._file("error.log")

    @property
    def info_log(self) -> Path | None:
        return self._file("info.log")

    @property
    def provenance_json(self) -> Path | None:
        """Our addition: who ran what, where, with which config and code."""
        return self._file("provenance.json")


class Exec(Dir):
    @property
    def runs(self) -> Children[str, ExecRun]:
        return self._children(ExecRun, "run", False)
