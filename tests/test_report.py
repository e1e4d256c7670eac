"""Report figures: drawn from a small hand-built MAPS, clear errors on missing files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from snakemaps import report
from snakemaps.errors import UserError
from snakemaps.maps import Maps

SPLITS = (0, 1)
EPOCHS = (1, 2, 3)
MODELS = ("best-loss", "best-BalancedAccuracy", "final")
CLASSES = ("AD", "CN")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(rng: np.random.Generator) -> dict[str, float]:
    return {
        "loss": float(rng.uniform(0.4, 0.7)),
        "Accuracy": float(rng.uniform(0.5, 0.9)),
        "BalancedAccuracy": float(rng.uniform(0.5, 0.9)),
        "Sensitivity": float(rng.uniform(0.4, 1.0)),
        "Specificity": float(rng.uniform(0.4, 1.0)),
        "RocAuc": float(rng.uniform(0.5, 1.0)),
        "F1": float(rng.uniform(0.4, 0.9)),
    }


def _details(rng: np.random.Generator, n: int = 12) -> pd.DataFrame:
    labels = np.array([CLASSES[i % 2] for i in range(n)])
    p_cn = np.clip(np.where(labels == "CN", 0.65, 0.35) + rng.normal(0, 0.2, n), 0.01, 0.99)
    return pd.DataFrame(
        {
            "participant_id": [f"sub-{i:03d}" for i in range(n)],
            "session_id": "ses-M000",
            "label": labels,
            "prediction": np.where(p_cn > 0.5, "CN", "AD"),
            "loss": -np.log(np.where(labels == "CN", p_cn, 1 - p_cn)),
            "probaAD": 1 - p_cn,
            "probaCN": p_cn,
        }
    )


@pytest.fixture(scope="module")
def maps_dir(tmp_path_factory):
    """2 splits, 3 epochs, best/final models, a test group "test" with predictions, env/."""
    rng = np.random.default_rng(0)
    maps = Maps(tmp_path_factory.mktemp("report") / "maps")
    for k in SPLITS:
        split = maps.split(k)
        train = pd.DataFrame(
            [
                {"epoch": e, "batch": b, "loss": 0.8 / e + 0.05 * rng.random()}
                for e in EPOCHS
                for b in range(4)
            ]
        )
        Maps.save_file(train, split.logs.training_loss_tsv)
        log = pd.DataFrame([{"epoch": e, **_metrics(rng)} for e in EPOCHS])
        Maps.save_file(log, split.validation_metrics.aggregated_tsv)
        Maps.save_file(_details(rng).assign(epoch=1), split.validation_metrics.details_tsv)
        for model in MODELS:
            row = log.iloc[[int(rng.integers(len(EPOCHS)))]]
            Maps.save_file(row, split.models.get(model).validation_metrics.aggregated_tsv)
            result = maps.test_group("test").results.splits[k].models[model]
            Maps.save_file(pd.DataFrame([_metrics(rng)]), result.metrics.aggregated_tsv)
            Maps.save_file(_details(rng), result.metrics.details_tsv)
    Maps.save_file(
        _details(rng)[["participant_id", "session_id", "label"]], maps.test_group("test").data_tsv
    )
    Maps.save_file(
        "# snakemaps environment snapshot\n# timestamp: 2026-01-01T00:00:00+00:00\n"
        "# python_version: 3.11.7\n# platform: Linux-x86_64\n\n"
        "numpy==2.4.6\ntorch==2.14.1\nscikit-learn==1.9.1\nsnakemake==9.27.1\n"
        "nibabel @ file:///wheels/nibabel-5.4.2-py3-none-any.whl\n",
        maps.env.environment_txt,
    )
    Maps.save_file(
        {"hostname": "node1", "cpu_count": 8, "torch": "2.14.1", "cuda": None, "cudnn": 8902},
        maps.env.system_json,
    )
    return maps.path


def _check_png(path, min_bytes=10_000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert min_bytes < len(data) < 2_000_000
    assert not list(path.parent.glob(f".{path.name}.*.tmp")), "temporary file left behind"


def test_figures(maps_dir, tmp_path):
    out = tmp_path / "reports"
    _check_png(report.learning_curves(maps_dir, out / "learning_curves.png"))
    _check_png(report.test_metrics(maps_dir, "test", out / "test_metrics.png", models=MODELS))
    _check_png(report.confusion_and_roc(maps_dir, "test", "final", out / "confusion_roc.png"))


def test_environment_summary(maps_dir, tmp_path):
    page = report.environment_summary(maps_dir, tmp_path / "environment.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for expected in ("2.14.1", "9.27.1", "1.9.1", "nibabel-5.4.2", "node1", "8.9.2", "3.11.7"):
        assert expected in page


@pytest.mark.parametrize(
    ("missing", "call"),
    [
        (
            "training/split-1/logs/training_loss.tsv",
            lambda m, out: report.learning_curves(m, out / "f.png"),
        ),
        (
            "test/group-test/results/split-0/best-loss/metrics/aggregated.tsv",
            lambda m, out: report.test_metrics(m, "test", out / "f.png", models=MODELS),
        ),
        (
            "test/group-test/results/split-1/final/metrics/details.tsv",
            lambda m, out: report.confusion_and_roc(m, "test", "final", out / "f.png"),
        ),
        ("env/system.json", lambda m, out: report.environment_summary(m, out / "f.html")),
    ],
)
def test_missing_input_names_the_file(maps_dir, tmp_path, missing, call):
    import shutil

    maps = tmp_path / "maps"
    shutil.copytree(maps_dir, maps)
    (maps / missing).unlink()
    with pytest.raises(UserError, match="missing .*" + missing.replace("/", r"[/\\]")):
        call(maps, tmp_path)
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "f.html").exists()


def test_damaged_file_is_a_user_error(maps_dir, tmp_path):
    import shutil

    maps = tmp_path / "maps"
    shutil.copytree(maps_dir, maps)
    (maps / "env" / "system.json").write_text("{not json")
    with pytest.raises(UserError, match="system.json"):
        report.environment_summary(maps, tmp_path / "f.html")
    details = maps / "test/group-test/results/split-0/final/metrics/details.tsv"
    pd.read_csv(details, sep="\t").drop(columns="prediction").to_csv(details, sep="\t")
    with pytest.raises(UserError, match="prediction"):
        report.confusion_and_roc(maps, "test", "final", tmp_path / "f.png")


def test_random_search_ranking_figure(tmp_path):
    from snakemaps.report import random_search_ranking

    ranked = tmp_path / "ranked_runs.tsv"
    pd.DataFrame(
        {
            "job": ["job-1", "job-0", "job-2"],
            "rank": [1, 2, None],
            "status": ["done", "done", "not run"],
            "BalancedAccuracy_mean": [0.9, 0.7, None],
            "BalancedAccuracy_std": [0.05, 0.1, None],
        }
    ).to_csv(ranked, sep="\t", index=False)
    out = random_search_ranking(ranked, tmp_path / "ranked.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    with pytest.raises(UserError, match="ranked_runs.tsv"):
        random_search_ranking(tmp_path / "missing" / "ranked_runs.tsv", tmp_path / "x.png")
