# Helpers shared by every stage: config validation, the experiments (one
# MAPS each), input functions and wildcard constraints. Nothing here imports
# torch or the snakemaps package, so building the DAG stays fast.
import re
import shutil
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, "../config/config.schema.yaml")

MAPS_DIR = config["maps_dir"].rstrip("/")
LAUNCH_DIR = config["random_search"]["launch_dir"].rstrip("/")
DATA_DIR = config["data_dir"].rstrip("/")
SYNTHETIC = config["data"]["tsv"] is None
MONITOR = config["train"]["monitor"]
# Models every split declares: best-<metric> per monitored metric, then final.
# Epoch checkpoints (train.save_epochs) are evaluated by the same jobs.
MODEL_NAMES = [f"best-{metric}" for metric in MONITOR] + ["final"]
MODEL_DIRS = [f"best_models/best-{metric}" for metric in MONITOR] + ["final"]
# The experiments of this run, by MAPS directory; random search adds its runs.
EXPERIMENTS = {MAPS_DIR: config}
# One GPU per torch job where a GPU is visible; profiles may override.
GPUS_PER_JOB = (
    1 if config["train"]["device"] != "cpu" and shutil.which("nvidia-smi") else 0
)


def test_groups():
    """Group name -> table. The demo adds its held-out participants as group "test"."""
    groups = dict(config["test"]["groups"])
    if SYNTHETIC and config["data"]["synthetic"]["n_test_participants"] > 0:
        groups.setdefault("test", f"{DATA_DIR}/synthetic/test.tsv")
    return groups


def tables():
    """Data set name (train, group-<name>) -> (table path, config key naming it)."""
    train = (
        f"{DATA_DIR}/synthetic/participants.tsv" if SYNTHETIC else config["data"]["tsv"]
    )
    found = {"train": (train, "data.tsv")}
    for name, path in test_groups().items():
        found[f"group-{name}"] = (path, f"test.groups.{name}")
    return found


def check_tables():
    """Stop before any job if a configured table does not exist."""
    for path, key in tables().values():
        if (
            not (SYNTHETIC and path.startswith(f"{DATA_DIR}/synthetic/"))
            and not Path(path).is_file()
        ):
            raise WorkflowError(
                f"{key}: table not found: {path}. Set {key} to an existing tab-separated file "
                "with columns participant_id, session_id, label and image."
            )


check_tables()


wildcard_constraints:
    maps=r"[^\s]+?",
    data=re.escape(DATA_DIR),
    split=r"\d+",
    group=r"[A-Za-z0-9]+",
    dataset=r"train|group-[A-Za-z0-9]+",
    metric=r"[A-Za-z][A-Za-z0-9]*",
    launch=re.escape(LAUNCH_DIR),
    job=r"job-\d+",


def experiment(maps):
    """The configuration of the experiment whose MAPS is ``maps``."""
    if maps in EXPERIMENTS:
        return EXPERIMENTS[maps]
    if maps.startswith(LAUNCH_DIR + "/"):
        for _, run in random_search_runs().values():
            if run["maps_dir"] == maps:
                return run
    raise WorkflowError(
        f"{maps} is not a MAPS of this workflow (maps_dir is {MAPS_DIR})"
    )


def failure_marker(wildcards):
    """Where a random-search run records why it failed ("" outside random search)."""
    if wildcards.maps.startswith(LAUNCH_DIR + "/job-"):
        return str(Path(wildcards.maps).parent / "failed.txt")
    return ""


def exp(wildcards):
    return experiment(wildcards.maps)


def splits(maps):
    return list(range(experiment(maps)["split"]["n_splits"]))


def table_of(wildcards):
    return tables()[wildcards.dataset][0]


def table_key(wildcards):
    return tables()[wildcards.dataset][1]


def train_manifest(wildcards):
    return f"{DATA_DIR}/cache/train/manifest.tsv"


def test_manifests(wildcards):
    return [f"{DATA_DIR}/cache/group-{name}/manifest.tsv" for name in test_groups()]


def group_manifest(wildcards):
    return f"{DATA_DIR}/cache/group-{wildcards.group}/manifest.tsv"


def trained_models(wildcards):
    return [
        f"{wildcards.maps}/training/split-{wildcards.split}/models/{d}/model.pt"
        for d in MODEL_DIRS
    ]


def group_results_of(maps, group):
    return [
        f"{maps}/test/group-{group}/results/split-{k}/{model}/metrics/aggregated.tsv"
        for k in splits(maps)
        for model in MODEL_NAMES
    ]


def group_results(wildcards):
    return group_results_of(wildcards.maps, wildcards.group)


def maps_targets(maps):
    """Every final output of one MAPS: validation and test results, summaries, env."""
    targets = [f"{maps}/env/environment.txt"]
    for k in splits(maps):
        targets += [
            f"{maps}/training/split-{k}/models/{d}/validation_metrics/aggregated.tsv"
            for d in MODEL_DIRS
        ]
    for group in test_groups():
        targets += [
            f"{maps}/test/group-{group}/summary-{metric}.tsv" for metric in MONITOR
        ]
    return targets
