"""Trainer unit tests: callback events in order, best models, early stopping, resume guard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from snakemaps.data.dataset import CachedImages
from snakemaps.errors import UserError
from snakemaps.maps import Maps
from snakemaps.models.description import resolve_description
from snakemaps.models.network import build_network
from snakemaps.train.callbacks import EVENTS, Callback, EarlyStopping, ModelCheckpoint
from snakemaps.train.evaluation import Evaluation, Objective
from snakemaps.train.trainer import Settings, Trainer


class Recorder(Callback):
    name = "Recorder"

    def __init__(self):
        self.events = []


for _event in EVENTS:
    setattr(
        Recorder,
        _event,
        lambda self, trainer, _e=_event, **kw: self.events.append((_e, trainer.state.stage)),
    )


def images(tmp_path, name, n, regression=False):
    """Images whose mean intensity carries the label: AD/CN, or a number for a regression."""
    rng = np.random.default_rng(len(name))
    rows = []
    for i in range(n):
        path = tmp_path / f"{name}{i}.npy"
        label = 60 + 3 * i if regression else ("AD" if i % 2 else "CN")
        shift = (label - 60) / 30 if regression else float(label == "AD")
        np.save(path, (rng.normal(size=(1, 12, 12, 12)) + shift).astype(np.float32))
        rows.append(
            {
                "participant_id": f"sub-{name}{i}",
                "session_id": "ses-M000",
                "label": str(label),
                "tensor": str(path),
            }
        )
    return CachedImages(pd.DataFrame(rows), None if regression else ["CN", "AD"])


def make_trainer(
    tmp_path,
    callbacks,
    epochs=2,
    fingerprint="a",
    monitor=("loss",),
    objective=None,
    **options,
):
    objective = objective or Objective()
    torch.manual_seed(0)
    outputs = 2 if objective.target is None else 1
    network = build_network(
        resolve_description({"conv_channels": [4, 8]}, (1, 12, 12, 12), outputs)
    )
    settings = Settings(
        epochs=epochs,
        batch_size=4,
        device=torch.device("cpu"),
        channels_last=False,
        seed=0,
        **options,
    )
    regression = objective.target is not None
    return Trainer(
        maps=Maps(tmp_path / "maps"),
        split=0,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=1e-3),
        optimizer_name="Adam",
        train_data=images(tmp_path, "t", 8, regression),
        val_data=images(tmp_path, "v", 4, regression),
        settings=settings,
        metric_names=["loss", "MAE", "R2"] if regression else ["loss", "BalancedAccuracy"],
        callbacks=[ModelCheckpoint(list(monitor), [1]), *callbacks],
        fingerprint=fingerprint,
        objective=objective,
    )


def test_every_training_event_in_order(tmp_path):
    recorder = Recorder()
    make_trainer(tmp_path, [recorder], epochs=1).fit()
    names = [event for event, _ in recorder.events]
    train_batch = [
        "on_batch_start",
        "on_forward_step_start",
        "on_backward_step_start",
        "on_backward_step_end",
        "on_optimization_step_start",
        "on_optimization_step_end",
        "on_batch_end",
    ]
    val_batch = [
        "on_batch_start",
        "on_evaluation_step_start",
        "on_metrics_computation_start",
        "on_metrics_computation_end",
        "on_batch_end",
    ]
    expected = (
        ["on_train_start", "on_epoch_start"]
        + train_batch * 2
        + ["on_validation_start"]
        + val_batch
        + ["on_validation_end", "on_epoch_end", "on_train_end"]
    )
    assert names == expected
    stages = {event: stage for event, stage in recorder.events}
    assert stages["on_forward_step_start"] == "train"
    assert stages["on_evaluation_step_start"] == "validation"


def test_resume_and_exception_events(tmp_path):
    make_trainer(tmp_path, [], epochs=1).fit()
    # Pretend training stopped after epoch 1 of 2: a checkpoint is in tmp/.
    trainer = make_trainer(tmp_path, [], epochs=2)
    trainer.state.current_epoch = 1
    trainer.write_checkpoint()
    trainer.finish_checkpoint()
    recorder = Recorder()
    resumed = make_trainer(tmp_path, [recorder], epochs=2)
    resumed.fit()
    names = [event for event, _ in recorder.events]
    assert names[0] == "on_resume" and "on_train_start" not in names
    assert names.count("on_epoch_start") == 1 and names[-1] == "on_train_end"

    class Boom(Callback):
        name = "Boom"

        def on_epoch_start(self, trainer, **_):
            raise RuntimeError("boom")

    recorder = Recorder()
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(other, [Boom(), recorder], epochs=1).fit()
    assert recorder.events[-1][0] == "on_exception"


def test_checkpoint_does_not_need_the_published_models(tmp_path):
    """A signalled SLURM job's wrapper may delete the rule's outputs while training checkpoints."""
    trainer = make_trainer(tmp_path, [], epochs=2, monitor=("loss", "BalancedAccuracy"))
    trainer.settings.epochs = trainer.state.num_epochs = 1
    trainer.fit()
    best = trainer.split_dir.models.best_models
    published = {m: best.metrics[m].model_pt.read_bytes() for m in ("loss", "BalancedAccuracy")}
    resumed = make_trainer(tmp_path, [], epochs=2, monitor=("loss", "BalancedAccuracy"))
    resumed.state.current_epoch = 1
    resumed.callbacks[0].best = {
        m: {"value": 0.0, "epoch": 1} for m in ("loss", "BalancedAccuracy")
    }
    kept = resumed.split_dir.tmp.path / "published"
    for metric, data in published.items():
        (kept / f"best-{metric}.pt").parent.mkdir(parents=True, exist_ok=True)
        (kept / f"best-{metric}.pt").write_bytes(data)
        best.metrics[metric].model_pt.unlink()  # what Snakemake does to a failed job's outputs
    resumed.write_checkpoint()
    resumed.finish_checkpoint()
    checkpoint = resumed.split_dir.tmp.epochs[1]
    for metric, data in published.items():
        assert (checkpoint.callbacks / "ModelCheckpoint" / f"best-{metric}.pt").read_bytes() == data
    # The retry restores the published models from the checkpoint, then trains on.
    make_trainer(tmp_path, [], epochs=2, monitor=("loss", "BalancedAccuracy")).fit()
    for metric in published:
        assert best.metrics[metric].model_pt.exists()


def test_checkpoint_event_follows_each_resume_checkpoint(tmp_path):
    from snakemaps.train.callbacks import ResumeCheckpoint

    recorder = Recorder()
    make_trainer(tmp_path, [recorder, ResumeCheckpoint(1)], epochs=2).fit()
    names = [event for event, _ in recorder.events]
    assert names.count("on_checkpoint") == 2
    # Written at each epoch's end, after that epoch's on_epoch_end.
    ends = [i for i, name in enumerate(names) if name == "on_epoch_end"]
    checkpoints = [i for i, name in enumerate(names) if name == "on_checkpoint"]
    assert all(end < checkpoint for end, checkpoint in zip(ends, checkpoints))


def test_failed_checkpoint_write_is_raised_and_publishes_nothing(tmp_path, monkeypatch):
    from snakemaps import io

    trainer = make_trainer(tmp_path, [], epochs=1)
    trainer.fit()
    trainer.state.current_epoch = 1

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "write_durable", disk_full)
    trainer.write_checkpoint()
    with pytest.raises(OSError, match=r"resume checkpoint .*epoch-1 failed: .*No space left"):
        trainer.finish_checkpoint()
    assert trainer.split_dir.tmp.epochs_list == []  # no half-written checkpoint to resume from


def test_resume_checkpoint_from_another_configuration_is_refused(tmp_path):
    make_trainer(tmp_path, [], epochs=1, fingerprint="config-A").fit()
    trainer = make_trainer(tmp_path, [], epochs=2, fingerprint="config-A")
    trainer.state.current_epoch = 1
    trainer.write_checkpoint()
    trainer.finish_checkpoint()
    with pytest.raises(UserError, match="another configuration or split manifest"):
        make_trainer(tmp_path, [], epochs=2, fingerprint="config-B").fit()


class FakeTrainer:
    def __init__(self, tmp_path):
        self.state = type("State", (), {"current_epoch": 0})()
        self.split_dir = Maps(tmp_path).split(0)
        self.saved = []

    def save_model(self, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        self.saved.append((self.state.current_epoch, path.parent.name))


@pytest.mark.parametrize(
    ("metric", "values", "best_epoch"),
    [("loss", [0.9, 0.5, 0.7, 0.5], 2), ("BalancedAccuracy", [0.6, 0.8, 0.8, 0.7], 2)],
)
def test_best_model_follows_each_metrics_direction(tmp_path, metric, values, best_epoch):
    callback = ModelCheckpoint([metric], [])
    trainer = FakeTrainer(tmp_path)
    for epoch, value in enumerate(values, start=1):
        trainer.state.current_epoch = epoch
        callback.on_validation_end(trainer, metrics={metric: value})
    assert callback.best[metric] == {"value": values[best_epoch - 1], "epoch": best_epoch}
    assert [e for e, _ in trainer.saved] == list(range(1, best_epoch + 1))  # saved on improvement
    assert callback.is_better(metric, float("nan")) is False


def test_early_stopping_with_patience_and_tolerance(tmp_path):
    trainer = FakeTrainer(tmp_path)
    trainer.state.should_stop = False
    stopping = EarlyStopping("loss", patience=2, tolerance=0.05)
    for epoch, loss in enumerate([1.0, 0.8, 0.78, 0.77], start=1):  # < 0.05 better: no progress
        trainer.state.current_epoch = epoch
        stopping.on_validation_end(trainer, metrics={"loss": loss})
        assert trainer.state.should_stop == (epoch == 4)
    restored = EarlyStopping("loss", patience=2, tolerance=0.05)
    restored.load_state_dict(stopping.state_dict())
    assert restored.state_dict() == {"best": 0.8, "bad": 2}


def test_early_stopping_ends_a_real_run(tmp_path):
    stopping = EarlyStopping("loss", patience=1, tolerance=10.0)  # nothing counts as progress
    trainer = make_trainer(tmp_path, [stopping], epochs=5)
    trainer.fit()
    assert trainer.state.current_epoch == 2 and trainer.state.should_stop
    assert Maps(tmp_path / "maps").split(0).models.final.model_pt.exists()


def test_gradient_accumulation_steps_the_optimizer_every_n_batches(tmp_path):
    trainer = make_trainer(tmp_path, [], epochs=2, accumulation_steps=2)
    trainer.fit()
    assert trainer.state.optim_step == 2  # 2 batches per epoch, one step per 2 batches
    assert len(trainer.loss_log.rows) == 2


def test_gradient_clipping_bounds_the_update(tmp_path):
    def update_size(folder, **options):
        folder.mkdir()
        trainer = make_trainer(folder, [], epochs=1, **options)
        before = [p.detach().clone() for p in trainer.network.parameters()]
        trainer.optimizer = torch.optim.SGD(trainer.network.parameters(), lr=1.0)
        trainer.fit()
        return sum(
            float((p.detach() - b).norm()) for p, b in zip(trainer.network.parameters(), before)
        )

    free = update_size(tmp_path / "free")
    clipped = update_size(tmp_path / "clipped", clip_grad_norm=1e-3)
    assert clipped < free / 10


VALIDATION_BATCH = [
    "on_batch_start",
    "on_evaluation_step_start",
    "on_metrics_computation_start",
    "on_metrics_computation_end",
    "on_batch_end",
]


@pytest.mark.parametrize("called", ["validate", "test"])
def test_standalone_evaluation_events(tmp_path, called):
    """The validate and test steps' evaluation emits on_<called>_start/_end around its batches."""
    trainer = make_trainer(tmp_path, [], epochs=1)
    trainer.fit()
    recorder = Recorder()
    data = images(tmp_path, "e", 6)
    values, details = Evaluation(
        called=called,
        split=0,
        model="final",
        data_name="validation" if called == "validate" else "group-test",
        network=trainer.network,
        data=data,
        batch_size=4,
        device=torch.device("cpu"),
        dtype=None,
        metric_names=["loss", "BalancedAccuracy"],
        objective=Objective(),
        callbacks=[recorder],
    ).run()
    names = [event for event, _ in recorder.events]
    assert names == [f"on_{called}_start", *VALIDATION_BATCH * 2, f"on_{called}_end"]
    assert {stage for _, stage in recorder.events} == {called}
    assert set(values) == {"loss", "BalancedAccuracy"}
    assert list(details["participant_id"]) == list(data.frame["participant_id"])


def test_standalone_evaluation_exception_event(tmp_path):
    recorder = Recorder()
    network = build_network(resolve_description({"conv_channels": [4, 8]}, (1, 12, 12, 12), 2))
    with pytest.raises(KeyError):
        Evaluation(
            called="test",
            split=0,
            model="final",
            data_name="group-test",
            network=network,
            data=images(tmp_path, "e", 4),
            batch_size=4,
            device=torch.device("cpu"),
            dtype=None,
            metric_names=["MAE"],  # a regression metric on a classifier
            objective=Objective(),
            callbacks=[recorder],
        ).run()
    assert [event for event, _ in recorder.events][-1] == "on_exception"


def test_regression_learns_and_reports_in_label_units(tmp_path):
    """A regressor trains on the standardized target and predicts in the label's units."""
    ages = np.array([60 + 3 * i for i in range(8)], dtype=float)
    objective = Objective({"mean": float(ages.mean()), "std": float(ages.std())})
    trainer = make_trainer(tmp_path, [], epochs=25, monitor=("loss", "MAE"), objective=objective)
    trainer.fit()
    log = pd.read_csv(trainer.split_dir.validation_metrics.aggregated_tsv, sep="\t")
    assert list(log.columns) == ["epoch", "loss", "MAE", "R2"]
    # Validation ages are 60..69; the intensity shift makes them learnable.
    assert log["MAE"].iloc[-1] < log["MAE"].iloc[0]
    assert log["MAE"].iloc[-1] < 4.0, log
    details = pd.read_csv(trainer.split_dir.validation_metrics.details_tsv, sep="\t")
    assert {"label", "prediction", "loss"} <= set(details.columns)
    assert not any(c.startswith("proba") for c in details.columns)
    assert details["prediction"].between(40, 90).all()
    # MAE from the details equals the logged MAE of the last epoch.
    last = details[details["epoch"] == log["epoch"].iloc[-1]]
    assert np.isclose((last["prediction"] - last["label"]).abs().mean(), log["MAE"].iloc[-1])
    best = trainer.split_dir.models.best_models
    assert (best.path / "best-MAE" / "model.pt").exists()
