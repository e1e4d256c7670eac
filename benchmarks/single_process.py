"""The whole experiment of the workflow in one Python process, step by step.

``python benchmarks/single_process.py CONFIG.json THREADS`` run in a working
directory does what ``snakemake --cores 2`` does there for the same config
(a user table plus one test group): the same package functions with the
arguments the rule adapters (``scripts/*.py``) pass, in dependency order,
with ``THREADS`` torch threads for every step.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main(config_path: str, threads: int) -> None:
    start = time.perf_counter()
    from snakemaps.data.prepare import prepare_cache
    from snakemaps.env import project_lock_files, snapshot
    from snakemaps.evaluate import (
        evaluate_test_group,
        register_test_group,
        summarize_group,
        validate_checkpoints,
    )
    from snakemaps.experiment import create_maps
    from snakemaps.steps import configure_logging
    from snakemaps.train import train_split

    config = json.loads(Path(config_path).read_text())
    maps, data_dir = config["maps_dir"].rstrip("/"), config["data_dir"].rstrip("/")
    train = config["train"]
    configure_logging(f"logs/{maps}/single_process.log")
    tables = {"train": (config["data"]["tsv"], "data.tsv")}
    for name, path in config["test"]["groups"].items():
        tables[f"group-{name}"] = (path, f"test.groups.{name}")
    manifests = {}
    for dataset, (table, key) in tables.items():
        manifest = Path(f"{data_dir}/cache/{dataset}/manifest.tsv")
        manifests[dataset] = prepare_cache(
            table, manifest.parent / "tensors", manifest, label=config["data"]["label"], key=key
        )
    groups = list(config["test"]["groups"])
    create_maps(
        maps,
        manifests["train"],
        split=config["split"],
        model=config["model"],
        train=train,
    )
    splits = list(range(config["split"]["n_splits"]))
    for k in splits:
        train_split(maps, k, train, threads=threads)
    models = [f"best-{m}" for m in train["monitor"]] + ["final"]
    models += [f"epoch-{e}" for e in train["save_epochs"] if e <= train["epochs"]]
    evaluation = {"device": train["device"], "batch_size": train["batch_size"], "threads": threads}
    for k in splits:
        validate_checkpoints(maps_dir=maps, split=k, models=models, **evaluation)
    for g in groups:
        register_test_group(
            maps_dir=maps,
            group=g,
            manifest=manifests[f"group-{g}"],
            batch_size=train["batch_size"],
        )
        for k in splits:
            evaluate_test_group(maps_dir=maps, group=g, split=k, models=models, **evaluation)
        for metric in train["monitor"]:
            summarize_group(maps, g, metric, splits)
    snapshot(maps_dir=maps, lock_files=project_lock_files(ROOT))
    print(json.dumps({"in_process_s": time.perf_counter() - start}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
