"""Where a train job's start-up goes, in a fresh process, up to the first epoch.

``python benchmarks/job_startup.py MAPS_DIR TRAIN.json`` replays what the
train rule's adapter does (import the package, then ``train_split``) and
prints, as JSON, seconds per phase: the adapter's imports, torch, the
metrics module (pandas; scikit-learn itself is imported at the first
validation, after the first epoch has started), the first optimizer (which
imports torch._dynamo) and the rest of ``train_split`` until ``Trainer.fit``
starts.
Each phase is timed on its own by importing its heavy module first.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


class _FirstEpoch(Exception):
    pass


def main(maps_dir: str, train_json: str) -> None:
    phases: dict[str, float] = {}
    start = last = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        phases[name] = now - last
        last = now

    from snakemaps.steps import run_step  # noqa: F401  (what the adapter imports)
    from snakemaps.train import train_split

    mark("adapter_imports_s")
    import torch

    mark("import_torch_s")
    import snakemaps.train.metrics  # noqa: F401  (imports sklearn.metrics)

    mark("import_metrics_sklearn_s")
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo

    mark("first_optimizer_dynamo_s")
    from snakemaps.train import trainer

    mark("import_trainer_s")

    def stop(self: object) -> None:
        raise _FirstEpoch

    trainer.Trainer.fit = stop
    train = json.loads(Path(train_json).read_text())
    with contextlib.suppress(_FirstEpoch):
        train_split(maps_dir, 0, train, threads=1)
    mark("train_split_setup_s")
    phases["total_s"] = time.perf_counter() - start
    print(json.dumps(phases))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
