"""Status of a MAPS, complete, in progress or partial: ``snakemaps <maps_dir> [--json] [--strict]``.

Per split: epochs validated (the last ``epoch`` of its validation
``aggregated.tsv``, else of ``logs/training_loss.tsv``) against ``num_epochs``
of ``training/optimization.json``; the models saved; the best value and its
epoch of each monitored metric (the ``best-<metric>`` directories present,
from the split's validation log, else from the model's own validation
metrics; the direction is ``higher_is_better`` from ``metrics.json``, else
lower for loss/MSE/MAE, higher otherwise); the epoch of the resume checkpoint
in ``tmp/``; whether ``final/model.pt`` exists. A split without a final model
is "training" while the process of its newest ``exec/run-train_*`` record is
alive (on another host: while the split was written to in the last hour),
else "interrupted" (or "not started"). Then the test groups with the splits
and models evaluated, and whether ``env/environment.txt`` exists.

Every part is optional except ClinicaDL's mandatory files: what is absent is
marked (per split, per test group, at the root), never an error. The last
two lines say whether ``Maps.read()`` opens the MAPS (ClinicaDL's mandatory
files) and whether ``Maps.read(strict=True)`` does (every file ClinicaDL's
trainer writes). The exit status is 0 whenever the status could be shown;
with ``--strict``, 1 when the MAPS is not complete. Never imports torch, so it
answers at once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .. import io
from ..errors import UserError
from . import Maps
from .names import index_of

LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse")
REMOTE_ACTIVE_S = 3600  # a split written to this recently by another host counts as training


def higher_is_better(metric: str, metrics_config: dict[str, Any]) -> bool:
    spec = metrics_config.get(metric)
    if isinstance(spec, dict) and isinstance(spec.get("higher_is_better"), bool):
        return spec["higher_is_better"]
    name = metric.lower()
    return not (name in LOWER_IS_BETTER or name.endswith("loss"))


def _json(path: Path) -> Any:
    try:
        return io.read_json(path)
    except (OSError, ValueError):
        return None


def _tsv(path: Path) -> Any:
    try:
        return io.read_tsv(path)
    except (OSError, ValueError):  # absent, or empty (pandas' EmptyDataError is a ValueError)
        return None


def _pid_alive(pid: int, started_before: float) -> bool:
    """Whether ``pid`` runs here and started before ``started_before`` (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OSError, OverflowError):
        return False
    try:  # Linux: process start time = boot time + field 22 of /proc/<pid>/stat
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return started <= started_before + 2
    except (OSError, ValueError, IndexError, StopIteration):
        return True


def _last_write(path: Path) -> float | None:
    newest = None
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                mtime = os.stat(os.path.join(root, name)).st_mtime
            except OSError:
                continue
            newest = mtime if newest is None else max(newest, mtime)
    return newest


def _train_records(maps: Maps) -> dict[str, dict[str, Any]]:
    """The newest ``exec/run-train_*`` provenance record of each step (``train split-<k>``)."""
    newest: dict[str, dict[str, Any]] = {}
    for name, run in maps.exec.runs.items():
        records = _json(run.provenance_json) if name.startswith("train_") else None
        for record in records if isinstance(records, list) else []:
            step = record.get("step") if isinstance(record, dict) else None
            if step and str(record.get("timestamp", "")) >= str(
                newest.get(step, {}).get("timestamp", "")
            ):
                newest[step] = record
    return newest


def _running(record: dict[str, Any] | None, split_path: Path) -> bool:
    if not record:
        return False
    try:
        stamp = datetime.datetime.fromisoformat(record["timestamp"]).timestamp()
    except (KeyError, TypeError, ValueError):
        stamp = time.time()
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
        return _pid_alive(record["pid"], stamp)
    last = _last_write(split_path)
    return last is not None and time.time() - last < REMOTE_ACTIVE_S


def split_status(
    maps: Maps,
    k: int,
    num_epochs: int | None,
    metrics_config: dict[str, Any],
    record: dict[str, Any] | None,
) -> dict[str, Any]:
    split = maps.split(k)
    aggregated = _tsv(split.validation_metrics.aggregated_tsv)
    epochs = _epochs(aggregated)
    if epochs is None:  # no validation log: the training loss log tells how far it got
        epochs = _epochs(_tsv(split.logs.training_loss_tsv))
    if epochs is not None and epochs.notna().any():
        epochs_done: int | None = int(epochs.max())
    else:  # nothing trained yet, or a split whose logs are absent (unknown)
        epochs_done = None if split.exists() and split.models.names() else 0
    best: dict[str, Any] = {}
    for metric in split.models.best_models.metrics_list:
        higher = higher_is_better(metric, metrics_config)
        value, epoch = _best(aggregated, metric, higher)
        if value is None:  # the model's own validation metrics, where present
            own = split.models.best_models.metrics[metric].validation_metrics.aggregated_tsv
            value, epoch = _best(_tsv(own), metric, higher)
        best[metric] = {"value": value, "epoch": epoch, "higher_is_better": higher}
    tmp_epochs = split.tmp.epochs_list
    resume_epoch = tmp_epochs[-1] if tmp_epochs else None
    final = split.models.final.model_pt.is_file()
    finished = num_epochs and epochs_done is not None and epochs_done >= num_epochs
    if final or (resume_epoch is None and finished):
        state = "done"
    elif _running(record, split.path):
        state = "training"
    elif resume_epoch is not None or epochs_done or split.models.names():
        state = "interrupted"
    else:
        state = "not started"
    last_run = {key: record.get(key) for key in ("host", "pid", "timestamp")} if record else None
    return {
        "split": k,
        "state": state,
        "epochs_done": epochs_done,
        "num_epochs": num_epochs,
        "models": split.models.names(),
        "best": best,
        "resume_epoch": resume_epoch,
        "final": final,
        "last_run": last_run,
    }


def _epochs(frame: Any) -> Any:
    """The numeric ``epoch`` column of a log, or None."""
    import pandas as pd

    if frame is None or "epoch" not in frame or not len(frame):
        return None
    return pd.to_numeric(frame["epoch"], errors="coerce")


def _best(frame: Any, metric: str, higher: bool) -> tuple[float | None, int | None]:
    """The best value of ``metric`` in a validation log and its epoch (None where unknown)."""
    import pandas as pd

    if frame is None or metric not in frame:
        return None, None
    column = pd.to_numeric(frame[metric], errors="coerce").dropna()
    if not len(column):
        return None, None
    index = column.idxmax() if higher else column.idxmin()
    epochs = _epochs(frame)
    epoch = epochs[index] if epochs is not None else None
    return float(column[index]), int(epoch) if epoch is not None and pd.notna(epoch) else None


def _owner(relative: Path) -> tuple[str, Any]:
    """Which part of the status a missing file belongs to: a split, a test group or the root."""
    parts = relative.parts
    if parts[:1] == ("training",):  # training/split-<k>/... or training/data/<subset>/split-<k>/...
        for part in parts[1:4]:
            index = index_of(part, "split")
            if index is not None:
                return "split", index
    if parts[:1] == ("test",) and len(parts) > 1 and parts[1].startswith("group-"):
        return "group", parts[1][len("group-") :]
    return "root", None


def status(maps: Maps) -> dict[str, Any]:
    """Every fact the status table shows, as plain JSON-able data."""
    optimization = _json(maps.training.optimization_json) or {}
    num_epochs = optimization.get("num_epochs") if isinstance(optimization, dict) else None
    metrics = _json(maps.metrics_json) or {}
    metrics_config = metrics.get("metrics", metrics) if isinstance(metrics, dict) else {}
    records = _train_records(maps)
    splits = sorted(set(maps.training.splits_list) | set(maps.training.data.train.splits.keys()))
    missing = [p.relative_to(maps.path) for p in maps.missing_files(strict=True)]
    mandatory = [p.relative_to(maps.path) for p in maps.missing_files(strict=False)]
    owned: dict[tuple[str, Any], list[str]] = {}
    for path in missing:
        owned.setdefault(_owner(path), []).append(str(path))
    splits_facts = []
    for k in splits:
        facts = split_status(maps, k, num_epochs, metrics_config, records.get(f"train split-{k}"))
        splits_facts.append({**facts, "missing": owned.get(("split", k), [])})
    groups = []
    for name in maps.test.groups_list:
        results = maps.test.groups[name].results.splits
        groups.append(
            {
                "group": name,
                "results": [{"split": k, "models": results[k].models.keys()} for k in results],
                "missing": owned.get(("group", name), []),
            }
        )
    return {
        "maps": str(maps.path),
        "num_epochs": num_epochs,
        "splits": splits_facts,
        "test_groups": groups,
        "environment_txt": maps.env.environment_txt.is_file(),
        "readable": not mandatory,
        "complete": not missing,
        "missing_mandatory": [str(p) for p in mandatory],
        "missing_root": owned.get(("root", None), []),
        "missing_files": [str(p) for p in missing],
    }


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        indent + "  ".join([c.ljust(w) for c, w in zip(row, widths)] + [row[-1]]).rstrip()
        for row in rows
    ]


def _missing_line(where: str, missing: list[str], shown: int = 3) -> str:
    more = f" (and {len(missing) - shown} more)" if len(missing) > shown else ""
    return f"  missing in {where}: " + ", ".join(missing[:shown]) + more


def format_status(facts: dict[str, Any]) -> str:
    lines = [f"MAPS {facts['maps']}"]
    rows = [["split", "state", "epochs", "resume", "models", "best value (epoch)"]]
    for split in facts["splits"]:
        total = split["num_epochs"] if split["num_epochs"] is not None else "?"
        done = split["epochs_done"] if split["epochs_done"] is not None else "?"
        best = ", ".join(
            f"{metric} {b['value']:.4f} ({b['epoch'] if b['epoch'] is not None else '?'})"
            if b["value"] is not None
            else f"{metric} -"
            for metric, b in split["best"].items()
        )
        resume = split["resume_epoch"]
        rows.append(
            [
                str(split["split"]),
                split["state"],
                f"{done}/{total}",
                f"epoch-{resume}" if resume is not None else "-",
                ",".join(split["models"]) or "-",
                best or "-",
            ]
        )
    lines += _table(rows) if facts["splits"] else ["  no splits yet"]
    for split in facts["splits"]:
        if split["missing"]:
            lines.append(_missing_line(f"split-{split['split']}", split["missing"]))
    lines.append("test groups:" if facts["test_groups"] else "test groups: none")
    for group in facts["test_groups"]:
        name = f"group-{group['group']}"
        results = [
            f"split-{r['split']}: " + (", ".join(r["models"]) or "-") for r in group["results"]
        ]
        for i, result in enumerate(results or ["no results yet"]):
            lines.append(f"  {name if i == 0 else '':{len(name)}}  {result}")
        if group["missing"]:
            lines.append(_missing_line(name, group["missing"]))
    env = "env/environment.txt" + (" present" if facts["environment_txt"] else " missing")
    lines.append(f"environment: {env}")
    if facts["missing_root"]:
        lines.append(_missing_line("the MAPS root", facts["missing_root"]).lstrip())
    mandatory, missing = facts["missing_mandatory"], facts["missing_files"]
    lines.append(
        "readable: yes (every file ClinicaDL's reader requires is there)"
        if not mandatory
        else f"readable: no, {len(mandatory)} mandatory file(s) missing, first {mandatory[0]}"
    )
    lines.append(
        "complete: yes (every file ClinicaDL's trainer writes is there)"
        if not missing
        else f"complete: no, {len(missing)} file(s) the trainer writes missing, first {missing[0]}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="snakemaps",
        description="Show the status of a MAPS directory (complete or in progress).",
    )
    parser.add_argument("maps_dir", type=Path, help="the MAPS directory")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 unless every file ClinicaDL's trainer writes is there "
        "(what Maps.read(strict=True) requires)",
    )
    args = parser.parse_args(argv)
    maps = Maps(args.maps_dir)
    if not maps.path.is_dir():
        print(f"snakemaps: no such MAPS directory: {maps.path}", file=sys.stderr)
        return 2
    if not (maps.model_json.is_file() or maps.training.exists()):
        print(
            f"snakemaps: {maps.path} is not a MAPS directory (it has neither model.json "
            "nor training/)",
            file=sys.stderr,
        )
        return 2
    try:
        facts = status(maps)
    except UserError as error:  # a directory name that breaks the MAPS naming rules
        print(f"snakemaps: {error}", file=sys.stderr)
        return 2
    print(json.dumps(facts, indent=4) if args.json else format_status(facts))
    if args.strict and not facts["complete"]:
        missing = facts["missing_files"]
        print(
            f"snakemaps: incomplete MAPS {maps.path}: {len(missing)} file(s) missing, "
            f"first {missing[0]}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
