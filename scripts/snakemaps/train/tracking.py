"""Experiment tracking: an optional callback that logs each split's training to MLflow.

Every split is one MLflow run, in an experiment named after the MAPS (or, for
a random-search run, after the search's launch directory), tagged with the
experiment, the MAPS path, the split and, in a random search, the run
(``job-<i>``). The run holds the configuration as flattened parameters
(``train.*``, ``model.*`` from ``model.json``, ``data.*``, ``split.*``), one
value per epoch of ``train/loss`` (mean of the epoch's optimisation steps),
``train/learning_rate`` and ``validation/<metric>`` (step = epoch, the rows of
``validation_metrics/aggregated.tsv``), and tags naming the best models
(``best-<metric>.path``, ``.epoch``, ``.value``) and the final one.

Off by default: ``train_split`` builds this callback only when
``tracking.mlflow`` is true, and mlflow (seconds to import) is imported only
by the callback.

Resume: the run id is kept in every resume checkpoint (the callback's state)
and in ``tmp/mlflow_run.json`` from the moment the run is created. A resumed
training reopens that run. Epochs redone after the checkpoint were logged
before the interruption; MLflow cannot delete a metric step, so they keep
their first values and every step is logged once. A fresh start whose earlier
attempt created a run but never checkpointed marks that run ``KILLED`` and
starts a new one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from .. import io
from ..errors import UserError
from .callbacks import Callback, ModelCheckpoint

if TYPE_CHECKING:
    from .trainer import Trainer

logger = logging.getLogger("snakemaps.train")

RUN_FILE = "mlflow_run.json"
MAX_PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch call


def resolve_tracking_uri(uri: str) -> str:
    """A URI with a scheme (http://, sqlite:///, file://) as it is; a path as a file:// URI.

    A relative path is relative to the working directory (the workflow's
    ``--directory``).
    """
    scheme = urlparse(uri).scheme
    if uri == "databricks" or len(scheme) > 1:  # one letter: a Windows drive
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def local_store(uri: str) -> Path | None:
    """The folder of a file:// store, None for any other store."""
    parsed = urlparse(uri)
    return Path(url2pathname(parsed.path)) if parsed.scheme == "file" else None


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists, numbers and null as JSON."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


def experiment_name(setting: str | None, maps_dir: str | Path, search_run: str | None) -> str:
    """``tracking.experiment``, else the launch directory of a random search, else the MAPS."""
    if setting:
        return setting
    if search_run:
        return str(Path(search_run).parent)
    return str(maps_dir)


def mlflow_callback(
    tracking: Mapping[str, Any],
    maps_dir: str | Path,
    split: int,
    params: Mapping[str, Any],
    search_run: str | None = None,
) -> MLflowTracking:
    """The callback for split ``split`` of ``maps_dir`` from the config's ``tracking`` section.

    ``search_run`` is the random-search run folder (``<launch_dir>/job-<i>``)
    that the MAPS belongs to, None outside a random search.
    """
    experiment = experiment_name(tracking.get("experiment"), maps_dir, search_run)
    tags = {
        "experiment": experiment,
        "maps_dir": str(Path(maps_dir).resolve()),
        "split": str(split),
    }
    run_name = f"split-{split}"
    if search_run:
        job = Path(search_run).name
        tags["random_search.job"] = job
        tags["random_search.launch_dir"] = str(Path(search_run).parent.resolve())
        run_name = f"{job} split-{split}"
    return MLflowTracking(
        tracking_uri=tracking.get("tracking_uri") or "mlruns",
        experiment=experiment,
        run_name=run_name,
        tags=tags,
        params=flatten(params),
    )


class MLflowTracking(Callback):
    """Log one split's training to an MLflow run (see the module docstring)."""

    name = "MLflowTracking"

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, str],
    ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise UserError(
                "tracking.mlflow is true but MLflow is not installed: "
                "pip install 'mlflow-skinny>=2.10,<4' (or the project's extra: "
                "pip install -e '.[tracking]'), or set tracking.mlflow: false"
            ) from error
        self.uri = resolve_tracking_uri(tracking_uri)
        if local_store(self.uri) is not None:
            # MLflow 3 keeps its file store in maintenance mode behind this switch. Parallel
            # training jobs on a shared file system each write their own run's files there,
            # where a single SQLite file would be one lock for all of them.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
        except Exception as error:
            raise UserError(
                f"tracking.tracking_uri = {tracking_uri!r}: MLflow cannot open a store there "
                f"({type(error).__name__}: {error}); give a folder, sqlite:///<file> or an "
                "http:// tracking server"
            ) from error
        self.experiment, self.run_name = experiment, run_name
        self.tags, self.params = dict(tags), dict(params)
        self.run_id: str | None = None
        self.run_uri: str | None = None
        self.active = False
        self.logged: dict[str, int] = {}  # metric -> last step in the run
        self.pending: dict[str, float] = {}
        self.epoch_lr: float | None = None

    # State ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id, self.run_uri = state.get("run_id"), state.get("tracking_uri")

    # Events -----------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, **_: Any) -> None:
        earlier = self._run_file_id(trainer)
        if earlier is not None:
            self._terminate(earlier, "KILLED", only_running=True)
        self._create_run(trainer)

    def on_epoch_start(self, trainer: Trainer, **_: Any) -> None:
        self._reopen(trainer)
        self.epoch_lr = float(trainer.optimizer.param_groups[0]["lr"])

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float], **_: Any) -> None:
        self.pending = {f"validation/{name}": float(v) for name, v in metrics.items()}

    def on_epoch_end(self, trainer: Trainer, **_: Any) -> None:
        epoch = trainer.state.current_epoch
        losses = [row["loss"] for row in trainer.loss_log.rows if row["epoch"] == epoch]
        values = dict(self.pending)
        if losses:
            values["train/loss"] = sum(losses) / len(losses)
        if self.epoch_lr is not None:
            values["train/learning_rate"] = self.epoch_lr
        self.pending = {}
        self._log(epoch, values, self._best_tags(trainer))

    def on_train_end(self, trainer: Trainer, **_: Any) -> None:
        self._reopen(trainer)
        tags = {
            **self._best_tags(trainer),
            "final.path": str(trainer.split_dir.models.final.model_pt.resolve()),
            "epochs_trained": str(trainer.state.current_epoch),
            "stopped_early": str(trainer.state.should_stop).lower(),
        }
        self._log(trainer.state.current_epoch, {}, tags)
        self.client.set_terminated(self.run_id, "FINISHED")
        self.active = False

    def on_exception(self, trainer: Trainer, exception: BaseException, **_: Any) -> None:
        if self.run_id is None or not self.active:
            return
        stopped = isinstance(exception, KeyboardInterrupt) or (
            type(exception).__name__ == "TrainingInterrupted"
        )
        self._terminate(self.run_id, "KILLED" if stopped else "FAILED")
        self.active = False

    # The run ----------------------------------------------------------------
    def _create_run(self, trainer: Trainer) -> None:
        try:
            experiment_id = self._experiment_id()
            run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
            self.run_id, self.run_uri, self.active, self.logged = (
                run.info.run_id,
                self.uri,
                True,
                {},
            )
            io.write_json(
                self._run_file(trainer), {"run_id": self.run_id, "tracking_uri": self.uri}
            )
            items = sorted(self.params.items())
            from mlflow.entities import Param

            for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
                chunk = items[start : start + MAX_PARAMS_PER_BATCH]
                self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in chunk])
        except UserError:
            raise
        except Exception as error:
            raise UserError(
                f"MLflow tracking at {self.uri} (tracking.tracking_uri) failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        logger.info(
            "MLflow: run %s (%s) in experiment %r at %s",
            self.run_id,
            self.run_name,
            self.experiment,
            self.uri,
        )

    def _reopen(self, trainer: Trainer) -> None:
        """After a resume: continue the checkpoint's run (or the run file's), else a new one."""
        if self.active:
            return
        if self.run_id is None:
            self.run_id, self.run_uri = self._run_file_id(trainer), self.uri
        run = None
        if self.run_id is not None and self.run_uri == self.uri:
            from mlflow.exceptions import MlflowException

            with contextlib.suppress(MlflowException):
                run = self.client.get_run(self.run_id)
        if run is None or run.info.lifecycle_stage != "active":
            if self.run_id is not None:
                logger.warning(
                    "MLflow: run %s of the resumed training is not in %s; a new run continues it",
                    self.run_id,
                    self.uri,
                )
            self._create_run(trainer)
            return
        self.client.update_run(self.run_id, status="RUNNING")
        self.logged = {
            key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
            for key in run.data.metrics
        }
        self.active = True
        logger.info("MLflow: continuing run %s (%s)", self.run_id, self.run_name)

    def _log(self, step: int, values: Mapping[str, float], tags: Mapping[str, str]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, value, now, step)
            for key, value in values.items()
            if step > self.logged.get(key, 0)
        ]
        self.client.log_batch(
            self.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()]
        )
        for metric in metrics:
            self.logged[metric.key] = step

    def _best_tags(self, trainer: Trainer) -> dict[str, str]:
        checkpoint = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
        best_models = trainer.split_dir.models.best_models
        tags = {}
        for metric, best in checkpoint.best.items():
            tags[f"best-{metric}.epoch"] = str(best["epoch"])
            tags[f"best-{metric}.value"] = repr(float(best["value"]))
            tags[f"best-{metric}.path"] = str(best_models.metrics[metric].model_pt.resolve())
        return tags

    def _terminate(self, run_id: str, status: str, only_running: bool = False) -> None:
        """End a run; a failure here is a warning (it must not hide the error being raised)."""
        try:
            if only_running and self.client.get_run(run_id).info.status != "RUNNING":
                return
            self.client.set_terminated(run_id, status)
        except Exception as error:  # noqa: BLE001 - see the docstring
            logger.warning("MLflow: could not mark run %s %s: %s", run_id, status, error)

    def _experiment_id(self) -> str:
        """The experiment's id, creating it if needed (concurrent splits may race here)."""
        from mlflow.exceptions import MlflowException

        with self._store_lock():
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    return self.client.create_experiment(self.experiment)
                except MlflowException:
                    found = self.client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
        if found.lifecycle_stage != "active":
            raise UserError(
                f"tracking.experiment: the MLflow experiment {self.experiment!r} at {self.uri} "
                "is deleted; restore it (mlflow experiments restore) or set tracking.experiment "
                "to another name"
            )
        return found.experiment_id

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """A file store checks names without a lock: hold one while creating the experiment."""
        store = local_store(self.uri)
        if store is None:
            yield
            return
        with io.locked(store):
            yield

    # tmp/mlflow_run.json ----------------------------------------------------
    @staticmethod
    def _run_file(trainer: Trainer) -> Path:
        return trainer.split_dir.tmp.path / RUN_FILE

    def _run_file_id(self, trainer: Trainer) -> str | None:
        path = self._run_file(trainer)
        if not path.exists():
            return None
        recorded = io.read_json(path)
        return recorded["run_id"] if recorded.get("tracking_uri") == self.uri else None
