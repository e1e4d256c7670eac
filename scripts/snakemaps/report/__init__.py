"""Figures and summaries for the Snakemake report, read from a MAPS (no torch).

Each function reads MAPS files through ``Maps`` and writes one file
atomically (rendered in memory, then ``io.atomic_write_bytes``):

- ``learning_curves``: training and validation loss and the validation score
  per epoch, one row of panels per split, with the epochs of the saved best
  models marked;
- ``test_metrics``: every test metric of a test group, per split and mean ±
  std, for each evaluated model;
- ``confusion_and_roc``: confusion matrix summed over splits and one ROC curve
  per split for one model on one test group;
- ``environment_summary``: an HTML page with the environment snapshot header,
  system facts and the versions of the key packages.

Figures are drawn with matplotlib's object API (``Figure``, rendered by the
Agg canvas), so no global backend or GUI is involved. A missing input raises
``UserError`` naming the file and the step that writes it.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import io
from ..errors import UserError
from ..maps import Maps, parse_model
from ..train.metrics import METRICS

__all__ = [
    "KEY_PACKAGES",
    "confusion_and_roc",
    "environment_summary",
    "learning_curves",
    "test_metrics",
]

DPI = 110
KEY_PACKAGES = ("torch", "snakemake", "numpy", "pandas", "scikit-learn", "nibabel", "matplotlib")

# Readable names of the metrics the trainer computes.
METRIC_LABELS = {
    "loss": "Loss",
    "Accuracy": "Accuracy",
    "BalancedAccuracy": "Balanced accuracy",
    "Sensitivity": "Sensitivity",
    "Specificity": "Specificity",
    "RocAuc": "ROC AUC",
    "F1": "F1 score",
    "MSE": "Mean squared error",
    "MAE": "Mean absolute error",
    "R2": "R² (coefficient of determination)",
    "PSNR": "Peak signal-to-noise ratio (dB)",
    "SSIM": "Structural similarity (SSIM)",
}
# Metrics whose values lie in [0, 1].
BOUNDED = {"Accuracy", "BalancedAccuracy", "Sensitivity", "Specificity", "RocAuc", "F1"}
SPLIT_COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
BEST_STYLES = [("#d62728", "--"), ("#6a3d9a", ":"), ("#b15928", "-."), ("#33a02c", "--")]


# Helpers -------------------------------------------------------------------
def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def loss_label(maps: Maps) -> str:
    """The loss with its kind, from model.json (cross-entropy, or MSE on the standardized target)."""
    model = io.read_json(maps.model_json) if maps.model_json.exists() else {}
    kind = model.get("loss", {}).get("name_")
    if model.get("task") == "reconstruction":
        return "Loss (MSE per voxel, input against reconstruction)"
    return {
        "CrossEntropyLoss": "Loss (cross-entropy)",
        "MSELoss": "Loss (MSE, standardized target)",
    }.get(kind, "Loss")


def higher_is_better(name: str) -> bool:
    return METRICS.get(name, (name != "loss",))[0]


def model_label(model: str) -> str:
    """``best-loss`` -> 'best validation loss', ``final`` -> 'final (last epoch)'."""
    kind, value = parse_model(model)
    if kind == "best":
        return f"best validation\n{metric_label(str(value)).split(' (')[0].lower()}"
    if kind == "epoch":
        return f"epoch {value}"
    return "final\n(last epoch)"


def model_description(model: str) -> str:
    """``best-loss`` -> 'best-loss (the epoch with the lowest validation loss)'."""
    kind, value = parse_model(model)
    if kind == "best":
        extreme = "highest" if higher_is_better(str(value)) else "lowest"
        name = metric_label(str(value)).split(" (")[0].lower()
        return f"{model} (the epoch with the {extreme} validation {name})"
    if kind == "epoch":
        return f"{model} (saved after epoch {value})"
    return "final (the model after the last epoch)"


def class_note(metric: str, classes: Sequence[str]) -> str:
    """Which class a binary Sensitivity or Specificity is about (the second class is positive)."""
    if len(classes) != 2:
        return ""
    if metric == "Sensitivity":
        return f" of {classes[1]}"
    if metric == "Specificity":
        return f" (recall of {classes[0]})"
    return ""


def _require(path: Path, hint: str) -> Path:
    if not Path(path).is_file():
        raise UserError(f"missing {path}: {hint}")
    return Path(path)


def _read_tsv(path: Path, hint: str, columns: Sequence[str] = ()) -> pd.DataFrame:
    return _require_columns(io.read_tsv(_require(path, hint)), path, columns)


def _require_columns(frame: pd.DataFrame, path: Path, columns: Sequence[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)} (found {', '.join(frame.columns)}); "
            "the file is not a MAPS file written by this workflow or is damaged; "
            "delete it and rerun the step that writes it."
        )
    return frame


def _save_figure(fig: Any, out: str | Path) -> Path:
    buffer = BytesIO()
    fmt = Path(out).suffix.lstrip(".").lower() or "png"
    fig.savefig(buffer, format=fmt, dpi=DPI)
    return io.atomic_write_bytes(out, buffer.getvalue())


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _splits(maps: Maps, splits: Sequence[int] | None) -> list[int]:
    found = list(splits) if splits is not None else maps.training.splits_list
    if not found:
        raise UserError(
            f"{maps.training.path}: no split-<k> directory; train at least one split first "
            "(snakemake --cores all)."
        )
    return [int(k) for k in found]


def _classes(frame: pd.DataFrame) -> list[str]:
    return [c[len("proba") :] for c in frame.columns if c.startswith("proba")]


# Learning curves ---------------------------------------------------------------
def _best_epochs(maps: Maps, split: int, log: pd.DataFrame) -> dict[str, int]:
    """Monitored metric -> epoch of its saved best model (from the model's validation)."""
    found: dict[str, int] = {}
    best_models = maps.split(split).models.best_models
    for metric in best_models.metrics_list:
        saved = best_models.metrics[metric].validation_metrics.aggregated_tsv
        if saved.is_file():
            frame = io.read_tsv(saved)
            if "epoch" in frame.columns and len(frame):
                found[metric] = int(frame["epoch"].iloc[0])
                continue
        if metric in log.columns and log[metric].notna().any():
            column = log[metric]
            best = column.idxmax() if higher_is_better(metric) else column.idxmin()
            found[metric] = int(log.loc[best, "epoch"])
    return found


def _validation_epochs(log: pd.DataFrame, train: pd.DataFrame) -> Any:
    """Where each validation ran, in epochs: inside epoch e after batch b, e - 1 + (b + 1) / n."""
    if "batch" not in log.columns or "batch" not in train.columns:
        return log["epoch"]
    n_batches = train.groupby("epoch")["batch"].max() + 1
    n = log["epoch"].map(n_batches).fillna(log["batch"] + 1)
    return log["epoch"] - 1 + (log["batch"] + 1) / n


def _score_metric(log: pd.DataFrame) -> str | None:
    for name in ("BalancedAccuracy", "Accuracy", "RocAuc", "F1"):
        if name in log.columns:
            return name
    others = [c for c in log.columns if c not in ("epoch", "batch", "loss")]
    return others[0] if others else None


def learning_curves(
    maps_dir: str | Path, out: str | Path, splits: Sequence[int] | None = None
) -> Path:
    """Loss (training and validation) and validation score per epoch, one row per split."""
    maps = Maps(maps_dir)
    splits = _splits(maps, splits)
    rows = []
    for k in splits:
        split = maps.split(k)
        train = _read_tsv(
            split.logs.training_loss_tsv,
            f"the training loss log of split {k}, written by rule train",
            ("epoch", "loss"),
        )
        log = _read_tsv(
            split.validation_metrics.aggregated_tsv,
            f"the per-epoch validation metrics of split {k}, written by rule train",
            ("epoch", "loss"),
        )
        classes = []
        if split.validation_metrics.details_tsv.is_file():
            classes = _classes(pd.read_csv(split.validation_metrics.details_tsv, sep="\t", nrows=0))
        rows.append((k, train, log, _best_epochs(maps, k, log), len(classes)))

    score = _score_metric(rows[0][2])
    ncols = 2 if score else 1
    fig = _new_figure(6.0 * ncols, 0.6 + 3.0 * len(rows))
    subfigures = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
    axes = np.array([sub.subplots(1, ncols, squeeze=False)[0] for sub in subfigures])
    best_names = sorted({m for *_, best, _ in rows for m in best})
    styles = {m: BEST_STYLES[i % len(BEST_STYLES)] for i, m in enumerate(best_names)}
    for row, (k, train, log, best, n_classes) in enumerate(rows):
        per_epoch = train.groupby("epoch", sort=True)["loss"].mean()
        ax = axes[row][0]
        ax.plot(
            per_epoch.index,
            per_epoch.to_numpy(),
            "-o",
            color="#1f77b4",
            markersize=3,
            label="training loss (mean over the batches of the epoch)",
        )
        when = _validation_epochs(log, train)
        ax.plot(when, log["loss"], "-s", color="#ff7f0e", markersize=4, label="validation loss")
        ax.set_title("Loss per epoch", fontsize=10)
        ax.set_ylabel(loss_label(maps))
        panels = [(ax, "loss")]
        if score:
            ax2 = axes[row][1]
            if score in log.columns:
                ax2.plot(
                    when,
                    log[score],
                    "-s",
                    color="#2ca02c",
                    markersize=4,
                    label=f"validation {metric_label(score).lower()}",
                )
            if score in ("BalancedAccuracy", "RocAuc") or (score == "Accuracy" and n_classes):
                chance = 0.5 if score == "RocAuc" or not n_classes else 1.0 / n_classes
                ax2.axhline(
                    chance,
                    color="grey",
                    linewidth=1,
                    linestyle=(0, (1, 2)),
                    label=f"chance level ({chance:.2g})",
                )
            if score in BOUNDED:
                ax2.set_ylim(-0.04, 1.07)
            ax2.set_title(f"Validation {metric_label(score).lower()} per epoch", fontsize=10)
            ax2.set_ylabel(metric_label(score))
            panels.append((ax2, score))
        for metric, epoch in sorted(best.items()):
            color, style = styles[metric]
            for panel, column in panels:
                panel.axvline(
                    epoch, color=color, linestyle=style, linewidth=1.2, label=f"best-{metric} model"
                )
                if column == metric and column in log.columns:
                    value = log.loc[log["epoch"] == epoch, column]
                    if len(value):
                        panel.plot(
                            [epoch], [value.iloc[0]], "*", color=color, markersize=13, zorder=5
                        )
        by_epoch: dict[int, list[str]] = {}
        for metric, epoch in sorted(best.items()):
            by_epoch.setdefault(epoch, []).append(f"best-{metric}")
        kept = "; ".join(
            f"{' and '.join(names)} model{'s' if len(names) > 1 else ''} from epoch {e}"
            for e, names in by_epoch.items()
        )
        subfigures[row].suptitle(
            f"Split {k}" + (f": {kept}" if kept else ""), fontsize=11, weight="bold"
        )
        for panel, _ in panels:
            panel.set_xlabel("Epoch")
            panel.grid(alpha=0.3)
            _integer_epochs(panel)
    handles: dict[str, Any] = {}
    for panel in axes.ravel():
        for handle, label in zip(*panel.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(
        list(handles.values()),
        list(handles.keys()),
        loc="outside lower center",
        ncols=min(len(handles), 4),
        fontsize=9,
    )
    fig.suptitle(
        f"Learning curves of {maps.path} ({len(rows)} split{'s' if len(rows) > 1 else ''}); "
        "vertical lines: epochs whose weights were kept as best models",
        fontsize=12,
    )
    return _save_figure(fig, out)


# Test metrics ------------------------------------------------------------------
def _test_models(group_dir: Any, splits: list[int], models: Sequence[str] | None) -> list[str]:
    if models is not None:
        return list(models)
    found = group_dir.results.splits[splits[0]].models.keys()
    best = sorted(m for m in found if m.startswith("best-"))
    return best + (["final"] if "final" in found else [])


def test_metrics(
    maps_dir: str | Path,
    group: str,
    out: str | Path,
    splits: Sequence[int] | None = None,
    models: Sequence[str] | None = None,
) -> Path:
    """Each test metric of ``group``: one dot per split and mean ± std, for each model."""
    maps = Maps(maps_dir)
    group_dir = maps.test_group(group)
    if splits is None:
        splits = group_dir.results.splits.keys()
        if not splits:
            raise UserError(
                f"missing {group_dir.results.path}/split-<k>: test group {group!r} has no "
                "results; they are written by rule test."
            )
    splits = [int(k) for k in splits]
    models = _test_models(group_dir, splits, models)
    records = []
    for model in models:
        for k in splits:
            path = group_dir.results.splits[k].models[model].metrics.aggregated_tsv
            frame = _read_tsv(
                path, f"test metrics of split {k}, model {model} on group {group}, by rule test"
            )
            records.append({"model": model, "split": k, **frame.iloc[0].to_dict()})
    table = pd.DataFrame(records)
    metrics = [c for c in table.columns if c not in ("model", "split", "epoch")]
    n_images = None
    if group_dir.data_tsv.is_file():
        n_images = len(io.read_tsv(group_dir.data_tsv))
    details = group_dir.results.splits[splits[0]].models[models[0]].metrics.details_tsv
    classes = _classes(pd.read_csv(details, sep="\t", nrows=0)) if details.is_file() else []

    ncols = min(4, len(metrics))
    nrows = -(-len(metrics) // ncols)
    width = max(3.2, 1.2 * len(models) + 0.8)
    fig = _new_figure(width * ncols, 0.9 + 3.3 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    x = np.arange(len(models))
    offsets = (np.arange(len(splits)) - (len(splits) - 1) / 2) * min(0.08, 0.5 / len(splits))
    for ax, metric in zip(axes, metrics, strict=False):
        for i, k in enumerate(splits):
            values = [
                table.loc[(table["model"] == m) & (table["split"] == k), metric].iloc[0]
                for m in models
            ]
            ax.plot(
                x + offsets[i],
                values,
                "o",
                color=SPLIT_COLORS[i % len(SPLIT_COLORS)],
                alpha=0.75,
                markersize=5,
                label=f"split {k}",
            )
        means = table.groupby("model")[metric].mean().reindex(models)
        stds = table.groupby("model")[metric].std(ddof=1).reindex(models)
        ax.errorbar(
            x,
            means.to_numpy(dtype=float),
            yerr=np.nan_to_num(stds.to_numpy(dtype=float)),
            fmt="_",
            color="black",
            markersize=22,
            markeredgewidth=2,
            capsize=6,
            elinewidth=1.5,
            label="mean ± std",
            zorder=4,
        )
        for xi, mean, std in zip(x, means, stds, strict=True):
            if np.isnan(mean):
                continue
            text = f"{mean:.3f}" if np.isnan(std) else f"{mean:.3f}\n± {std:.3f}"
            ax.annotate(
                text,
                (xi, mean),
                xytext=(14, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        ax.set_xticks(x, [model_label(m) for m in models], fontsize=8)
        ax.set_xlim(-0.5, len(models) - 0.5 + 0.35)
        direction = "higher is better" if higher_is_better(metric) else "lower is better"
        note = class_note(metric, classes)
        if metric == "Sensitivity" and note:
            note = f" (recall{note})"
        ax.set_title(f"{metric_label(metric)}{note}\n({direction})", fontsize=10)
        ax.set_ylabel(metric_label(metric))
        if metric in BOUNDED:
            top = np.nanmax(np.append((means + stds.fillna(0)).to_numpy(dtype=float), 1.0))
            ax.set_ylim(-0.03, max(1.08, top + 0.05))
        if metric in ("BalancedAccuracy", "RocAuc"):
            chance = 1.0 / len(classes) if metric == "BalancedAccuracy" and classes else 0.5
            ax.axhline(chance, color="grey", linewidth=1, linestyle=(0, (1, 2)))
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(labels), 8),
        fontsize=9,
        title="Each dot: the model trained on one split, evaluated on this test group.\n"
        "Black: mean ± standard deviation over splits. Dotted grey line: chance level.",
        title_fontsize=9,
    )
    images = f", {n_images} images" if n_images is not None else ""
    fig.suptitle(
        f"Test group '{group}'{images}: test metrics of {len(splits)} "
        f"split{'s' if len(splits) > 1 else ''} ({maps.path})",
        fontsize=12,
    )
    return _save_figure(fig, out)


# Confusion matrix and ROC --------------------------------------------------------
def _test_details(
    maps: Maps,
    group: str,
    model: str,
    splits: Sequence[int] | None,
    columns: Sequence[str] = ("label", "prediction"),
) -> dict[int, pd.DataFrame]:
    """Split -> per-image test predictions of ``model`` on ``group``."""
    group_dir = maps.test_group(group)
    parse_model(model)
    if splits is None:
        splits = group_dir.results.splits.keys()
        if not splits:
            raise UserError(
                f"missing {group_dir.results.path}/split-<k>: test group {group!r} has no "
                "results; they are written by rule test."
            )
    return {
        int(k): _read_tsv(
            group_dir.results.splits[int(k)].models[model].metrics.details_tsv,
            f"per-image test predictions of split {k}, model {model} on group {group}, "
            "by rule test",
            columns,
        )
        for k in splits
    }


def confusion_and_roc(
    maps_dir: str | Path,
    group: str,
    model: str,
    out: str | Path,
    splits: Sequence[int] | None = None,
) -> Path:
    """Confusion matrix summed over splits and one ROC curve per split, for one model."""
    from sklearn import metrics as skm
    from sklearn.preprocessing import label_binarize

    maps = Maps(maps_dir)
    frames = _test_details(maps, group, model, splits)
    splits = list(frames)
    for k, frame in frames.items():
        if len(_classes(frame)) < 2:
            path = maps.test_group(group).results.splits[k].models[model].metrics.details_tsv
            raise UserError(
                f"{path}: needs one proba<class> column per class (at least 2), found "
                f"{', '.join(frame.columns)}; delete it and rerun rule test."
            )
    classes = _classes(frames[splits[0]])
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    for frame in frames.values():
        matrix += skm.confusion_matrix(
            frame["label"].astype(str), frame["prediction"].astype(str), labels=classes
        )

    fig = _new_figure(12.0, 5.6)
    ax_cm, ax_roc = fig.subplots(1, 2, width_ratios=[1, 1.15])
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    image = ax_cm.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax_cm, shrink=0.8, label="Share of the true class (row)")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax_cm.text(
                j,
                i,
                f"{matrix[i, j]}\n({100 * shares[i, j]:.0f}% of true {classes[i]})",
                ha="center",
                va="center",
                fontsize=10,
                color="white" if shares[i, j] > 0.5 else "black",
            )
    ax_cm.set_xticks(range(len(classes)), classes)
    ax_cm.set_yticks(range(len(classes)), classes)
    ax_cm.set_xlabel("Predicted label")
    ax_cm.set_ylabel("True label")
    n_images = len(frames[splits[0]])
    ax_cm.set_title(
        f"Confusion matrix, summed over {len(splits)} split{'s' if len(splits) > 1 else ''}\n"
        f"({n_images} test images, each counted once per split)",
        fontsize=10,
    )

    aucs = []
    binary = len(classes) == 2
    for i, (k, frame) in enumerate(frames.items()):
        labels = frame["label"].astype(str).to_numpy()
        probs = frame[[f"proba{c}" for c in classes]].to_numpy(dtype=float)
        color = SPLIT_COLORS[i % len(SPLIT_COLORS)]
        if len(np.unique(labels)) < 2:
            ax_roc.plot([], [], color=color, label=f"split {k}: one class only, no ROC")
            continue
        if binary:
            truth = (labels == classes[1]).astype(int)
            fpr, tpr, _ = skm.roc_curve(truth, probs[:, 1])
            auc = skm.roc_auc_score(truth, probs[:, 1])
        else:
            truth = label_binarize(labels, classes=classes)
            fpr, tpr, _ = skm.roc_curve(truth.ravel(), probs.ravel())
            auc = skm.roc_auc_score(
                labels, probs, multi_class="ovr", labels=classes, average="macro"
            )
        aucs.append(auc)
        ax_roc.plot(fpr, tpr, color=color, linewidth=1.8, label=f"split {k} (AUC = {auc:.3f})")
    ax_roc.plot(
        [0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance (AUC = 0.5)"
    )
    ax_roc.set_xlim(-0.01, 1.01)
    ax_roc.set_ylim(-0.01, 1.01)
    ax_roc.set_aspect("equal")
    ax_roc.grid(alpha=0.3)
    ax_roc.legend(loc="lower right", fontsize=9)
    if binary:
        ax_roc.set_xlabel(
            f"False positive rate (1 − specificity; true {classes[0]} called {classes[1]})"
        )
        ax_roc.set_ylabel(f"True positive rate (sensitivity for {classes[1]})")
        kind = f"positive class: {classes[1]}"
    else:
        ax_roc.set_xlabel("False positive rate (pooled one-vs-rest)")
        ax_roc.set_ylabel("True positive rate (pooled one-vs-rest)")
        kind = "micro-averaged curves, macro one-vs-rest AUC"
    mean = (
        f"mean AUC {np.mean(aucs):.3f} ± {np.std(aucs, ddof=1):.3f}"
        if len(aucs) > 1
        else (f"AUC {aucs[0]:.3f}" if aucs else "no AUC")
    )
    ax_roc.set_title(f"ROC curve per split ({kind})\n{mean}", fontsize=10)
    fig.suptitle(
        f"Test group '{group}', model {model_description(model)}\nMAPS {maps.path}",
        fontsize=12,
    )
    return _save_figure(fig, out)


# Regression: predicted against true values ----------------------------------------
def predictions_scatter(
    maps_dir: str | Path,
    group: str,
    model: str,
    out: str | Path,
    splits: Sequence[int] | None = None,
) -> Path:
    """A regression's predictions against the true values, and the error against the truth."""
    maps = Maps(maps_dir)
    frames = _test_details(maps, group, model, splits)
    fig = _new_figure(12.0, 5.6)
    ax_pred, ax_err = fig.subplots(1, 2)
    lows, highs, maes = [], [], []
    for i, (k, frame) in enumerate(frames.items()):
        truth = frame["label"].to_numpy(dtype=float)
        predicted = frame["prediction"].to_numpy(dtype=float)
        error = predicted - truth
        mae = float(np.abs(error).mean())
        maes.append(mae)
        color = SPLIT_COLORS[i % len(SPLIT_COLORS)]
        ax_pred.scatter(truth, predicted, s=14, alpha=0.7, color=color)
        ax_pred.plot([], [], "o", color=color, label=f"split {k} (MAE {mae:.2f})")
        ax_err.scatter(truth, error, s=14, alpha=0.7, color=color)
        ax_err.plot([], [], "o", color=color, label=f"split {k} (mean error {error.mean():+.2f})")
        lows.append(min(truth.min(), predicted.min()))
        highs.append(max(truth.max(), predicted.max()))
    low, high = min(lows), max(highs)
    ax_pred.plot(
        [low, high],
        [low, high],
        color="grey",
        linestyle="--",
        linewidth=1,
        label="prediction = truth",
    )
    ax_pred.set_xlabel("True value")
    ax_pred.set_ylabel("Predicted value")
    ax_pred.set_aspect("equal")
    ax_pred.grid(alpha=0.3)
    ax_pred.legend(loc="upper left", fontsize=9)
    mean = f"MAE {np.mean(maes):.2f}" + (
        f" ± {np.std(maes, ddof=1):.2f} over splits" if len(maes) > 1 else ""
    )
    ax_pred.set_title(f"Predicted against true value\n{mean}", fontsize=10)
    ax_err.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax_err.set_xlabel("True value")
    ax_err.set_ylabel("Prediction − truth")
    ax_err.grid(alpha=0.3)
    ax_err.legend(loc="upper right", fontsize=9)
    ax_err.set_title(
        "Error against the true value\n(a slope shows regression to the mean)", fontsize=10
    )
    fig.suptitle(
        f"Test group '{group}', model {model_description(model)}\nMAPS {maps.path}",
        fontsize=12,
    )
    return _save_figure(fig, out)


# Environment summary ---------------------------------------------------------
def _header(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        key, sep, value = line.lstrip("#").strip().partition(":")
        if sep:
            found[key.strip()] = value.strip()
    return found


def _packages(text: str) -> dict[str, str]:
    """Normalised distribution name -> version (or the reference of a direct install)."""
    found = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-e "):
            line = line[3:].strip()
            name = line.rsplit("#egg=", 1)[-1] if "#egg=" in line else line
            found[_normalise(name)] = f"editable ({line})"
        elif "==" in line:
            name, version = line.split("==", 1)
            found[_normalise(name)] = version.strip()
        elif " @ " in line:
            name, reference = line.split(" @ ", 1)
            found[_normalise(name)] = reference.strip()
    return found


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def _cudnn(version: Any) -> str:
    """92400 -> '9.24.0 (92400)', 8902 -> '8.9.2 (8902)'."""
    if not version:
        return "none"
    try:
        v = int(version)
    except (TypeError, ValueError):
        return str(version)
    major, rest = (v // 10000, v % 10000) if v >= 90000 else (v // 1000, v % 1000)
    return f"{major}.{rest // 100}.{rest % 100} ({v})"


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f"<table>\n{body}\n</table>"


STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em;
       color: #222; max-width: 60em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: left; vertical-align: top; }
th { background: #f3f5f7; font-weight: 600; }
code { background: #f3f5f7; padding: 0 0.2em; }
.missing { color: #b00; }
"""


def environment_summary(maps_dir: str | Path, out: str | Path) -> Path:
    """A self-contained HTML page: snapshot header, system facts, key package versions."""
    env = Maps(maps_dir).env
    text = _require(
        env.environment_txt, "the environment snapshot, written by rule environment"
    ).read_text(encoding="utf-8")
    system_path = _require(env.system_json, "the system facts, written by rule environment")
    try:
        system = json.loads(system_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(
            f"{system_path}: not valid JSON ({error}); delete it and rerun rule environment."
        ) from None
    header = _header(text)
    packages = _packages(text)

    labels = {
        "timestamp": "Snapshot taken (UTC)",
        "python_version": "Python",
        "python_implementation": "Python implementation",
        "executable": "Python executable",
        "platform": "Platform",
        "machine": "Machine",
        "processor": "Processor",
        "recreate with": "Recreate with",
    }
    header_rows = [
        (labels.get(k, k), v) for k, v in header.items() if k != "snakemaps environment snapshot"
    ]

    gpus = system.get("gpus") or system.get("nvidia_smi") or []
    system_rows = [
        ("Host", system.get("hostname", "unknown")),
        ("CPU cores", system.get("cpu_count", "unknown")),
        ("PyTorch (as imported)", system.get("torch") or "not installed"),
        ("CUDA version of PyTorch", system.get("cuda") or "none (CPU build)"),
        ("cuDNN", _cudnn(system.get("cudnn"))),
        ("GPU available to PyTorch", "yes" if system.get("cuda_available") else "no"),
        ("GPUs", "; ".join(map(str, gpus)) if gpus else "none"),
    ]
    known = {"hostname", "cpu_count", "torch", "cuda", "cudnn", "cuda_available", "gpus"}
    system_rows += [(k, v) for k, v in system.items() if k not in known and k != "nvidia_smi"]

    package_rows = "\n".join(
        f"<tr><th>{html.escape(name)}</th>"
        + (
            f"<td>{html.escape(packages[name])}</td>"
            if name in packages
            else '<td class="missing">not in the snapshot</td>'
        )
        + "</tr>"
        for name in KEY_PACKAGES
    )
    other_files = [
        p.name
        for p in sorted(env.path.iterdir())
        if p.is_file() and p.name not in ("environment.txt", "system.json")
    ]
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Software environment of {html.escape(str(Path(maps_dir)))}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>Software environment of the MAPS <code>{html.escape(str(Path(maps_dir)))}</code></h1>
<p>Recorded by the <code>environment</code> step in <code>env/</code> of the MAPS:
{len(packages)} Python packages in <code>env/environment.txt</code> (pip freeze)
and the machine facts in <code>env/system.json</code>.</p>
<h2>Key packages</h2>
<table>
{package_rows}
</table>
<h2>Python and platform</h2>
{_table(header_rows)}
<h2>Machine and GPU</h2>
{_table(system_rows)}
<h2>Other environment files in env/</h2>
<p>{", ".join(f"<code>{html.escape(n)}</code>" for n in other_files) or "none"}</p>
</body>
</html>
"""
    return io.atomic_write_text(out, page)


def random_search_ranking(ranked_tsv: str | Path, out: str | Path) -> Path:
    """Each random-search run's ranking metric (mean ± std over splits), best run at the top.

    A classification search is ranked by validation balanced accuracy; a
    search of another task by the validation loss of its best-loss models.
    """
    path = Path(ranked_tsv)
    frame = _read_tsv(
        path,
        "the random search's ranked table, written by rule analyse_random_search",
        ["job", "status"],
    )
    metric = "BalancedAccuracy" if "BalancedAccuracy_mean" in frame.columns else "loss"
    _require_columns(frame, path, [f"{metric}_mean"])
    frame = frame.iloc[::-1].reset_index(drop=True)  # best run at the top
    fig = _new_figure(7.5, 1.2 + 0.35 * len(frame))
    ax = fig.add_subplot()
    done = frame["status"] == "done"
    means = pd.to_numeric(frame[f"{metric}_mean"], errors="coerce").where(done, 0.0)
    stds = frame.get(f"{metric}_std", pd.Series(0.0, index=frame.index))
    stds = pd.to_numeric(stds, errors="coerce").fillna(0.0).where(done, 0.0)
    ax.barh(
        frame.index,
        means,
        xerr=stds,
        color=["tab:blue" if d else "lightgrey" for d in done],
        capsize=3,
    )
    top = float(means.max()) if done.any() and metric == "loss" else 1.0
    top = top if math.isfinite(top) and top > 0 else 1.0
    for i, (is_done, mean) in enumerate(zip(done, means)):
        ax.text(
            min(mean, 0.98 * top) + 0.01 * top if is_done else 0.01 * top,
            i,
            f"{mean:.3g}" if is_done else "not run",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(frame.index, frame["job"])
    if metric == "BalancedAccuracy":
        ax.axvline(0.5, color="grey", linestyle=":", linewidth=1, label="chance (2 classes)")
        ax.set_xlim(0, 1.05)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(
            "validation balanced accuracy of the best-BalancedAccuracy model "
            "(mean ± std over splits)"
        )
        ax.set_title("Random search: runs ranked by validation balanced accuracy")
    else:
        ax.set_xlim(0, 1.15 * top)
        ax.set_xlabel("validation loss of the best-loss model (mean ± std over splits)")
        ax.set_title("Random search: runs ranked by validation loss (lowest first)")
    return _save_figure(fig, out)
