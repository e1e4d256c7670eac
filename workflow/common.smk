# Helpers shared by every stage: config validation, the experiments (one
# MAPS each), input functions and wildcard constraints. Only torch-free parts
# of the snakemaps package are imported here, so building the DAG stays fast.
import functools
import inspect
import os
import re
import shutil
import sys
from pathlib import Path

from snakemake.common import overwrite_function_params
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, "../config/config.schema.yaml")

# The package (torch-free parts only) is importable while the DAG is built.
sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))
from snakemaps.tasks import resolve_defaults

# train.metrics / train.monitor left null take the task's defaults.
resolve_defaults(config)

# Jobs import the package from this workflow's scripts/ folder, ahead of any
# installed copy (Snakemake appends a script's folder to sys.path, so another
# checkout's `pip install -e` would otherwise win).
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p
        for p in (str(Path(workflow.basedir) / "scripts"), os.environ.get("PYTHONPATH"))
        if p
    )
)

MAPS_DIR = config["maps_dir"].rstrip("/")
LAUNCH_DIR = config["random_search"]["launch_dir"].rstrip("/")
LAUNCH_PREFIX = f"{LAUNCH_DIR}/"
DATA_DIR = config["data_dir"].rstrip("/")
SYNTHETIC = config["data"]["tsv"] is None
MONITOR = config["train"]["monitor"]
# The built-in cohort's positive class is AD; a user's table says it in the config.
POSITIVE_CLASS = config["data"]["positive_class"] or ("AD" if SYNTHETIC else None)
# Models every split declares: best-<metric> per monitored metric, then final.
# Epoch checkpoints (train.save_epochs) are evaluated by the same jobs.
MODEL_NAMES = [f"best-{metric}" for metric in MONITOR] + ["final"]
MODEL_DIRS = [f"best_models/best-{metric}" for metric in MONITOR] + ["final"]
# Every experiment of this workflow (maps_dir and each random-search run) has
# the config's splits: rule test declares all of them.
SPLITS = list(range(config["split"]["n_splits"]))
# The experiments of this run, by MAPS directory; random search adds its runs.
EXPERIMENTS = {MAPS_DIR: config}
# One GPU per torch job where a GPU is visible; profiles may override.
GPUS_PER_JOB = (
    1 if config["train"]["device"] != "cpu" and shutil.which("nvidia-smi") else 0
)


from snakemaps.errors import UserError

if SYNTHETIC:
    from snakemaps.data.synthetic import check_test_count

    try:
        check_test_count(config["data"]["synthetic"]["n_test_participants"])
    except UserError as error:
        raise WorkflowError(str(error)) from None


def check_train(settings, where="train"):
    """Training options the schema cannot check alone (snakemaps.train.options)."""
    from snakemaps.errors import UserError
    from snakemaps.train.options import check_train_options

    try:
        check_train_options(settings["train"], settings["data"]["task"], where)
    except UserError as error:
        raise WorkflowError(str(error)) from None


check_train(config)


def mode_settings(settings):
    """The mode keys of an experiment (data.mode, patch/slice/roi keys, network_type)."""
    from snakemaps.data.extraction import settings as modes

    return modes(settings)


def check_modes(settings, where=""):
    """Stop before any job if an experiment's mode keys cannot run together."""
    from snakemaps.data.extraction import check_config
    from snakemaps.errors import UserError

    try:
        check_config(settings)
    except UserError as error:
        raise WorkflowError(f"{where}{error}") from None


check_modes(config)


def planned(function):
    """``function``, a rule's input, params, threads or resources function, with
    its signature handed to Snakemake once.

    Snakemake otherwise inspects the signature on every call, once per job and
    function: 25,000 times for the train jobs of a 1,000-run, 5-split search.
    """
    overwrite_function_params(function, inspect.signature(function).parameters)
    return function


def section(name):
    """A params function: the ``name`` section of the job's experiment config."""
    return planned(lambda wildcards: exp(wildcards)[name])


@planned
def train_processes(wildcards):
    """A train job's threads: one per rank of train.distributed on this node."""
    return exp(wildcards)["train"]["distributed"]["processes"]


@planned
def train_gpus(wildcards):
    """A train job's GPUs: one per rank on this node where a GPU is visible."""
    return GPUS_PER_JOB * train_processes(wildcards)


def test_groups():
    """Group name -> table. The demo adds its held-out participants as group "test"."""
    groups = dict(config["test"]["groups"])
    if SYNTHETIC and config["data"]["synthetic"]["n_test_participants"] > 0:
        groups.setdefault("test", f"{DATA_DIR}/synthetic/test.tsv")
    return groups


@planned
def demo_params(wildcards):
    """The synthetic config one demo table depends on: the training cohort ignores the test size."""
    synthetic = dict(config["data"]["synthetic"])
    if wildcards.part == "participants":
        del synthetic["n_test_participants"]
    return synthetic


def dataset_specs_of(settings):
    """Base data set name (train, group-<name>) -> (config key, prepare settings)."""
    from snakemaps.data.datasets import dataset_specs

    try:
        return dataset_specs(settings, test_groups(), DATA_DIR)
    except UserError as error:
        raise WorkflowError(str(error)) from None


# The main config's data sets keep their plain names (train, group-<name>).
MAIN_DATASETS = dataset_specs_of(config)


def dataset_names_of(settings):
    """Base name -> tensor cache name of an experiment (suffixed where its data differ)."""
    from snakemaps.data.datasets import dataset_names

    return dataset_names(dataset_specs_of(settings), MAIN_DATASETS)


def dataset_spec(name):
    """(config key, prepare settings) of the data set cached as ``name``."""
    if name in MAIN_DATASETS:
        return MAIN_DATASETS[name]
    for _, run in random_search_runs().values():
        names = dataset_names_of(run)
        for base, spec in dataset_specs_of(run).items():
            if names[base] == name:
                return spec
    raise WorkflowError(f"no experiment of this workflow prepares a data set {name!r}")


CHECKED_DATASETS = set()


def check_datasets(specs):
    """Stop before any job if a configured table or CAPS cannot be read (once per data set)."""
    from snakemaps.data.datasets import check_dataset, digest

    try:
        for key, settings in specs.values():
            checked = digest(settings)
            if checked not in CHECKED_DATASETS:
                check_dataset(key, settings, DATA_DIR)
                CHECKED_DATASETS.add(checked)
    except UserError as error:
        raise WorkflowError(str(error)) from None


check_datasets(MAIN_DATASETS)


wildcard_constraints:
    maps=r"[^\s]+?",
    data=re.escape(DATA_DIR),
    split=r"\d+",
    group=r"[A-Za-z0-9]+",
    dataset=r"(train|group-[A-Za-z0-9]+)(-[0-9a-f]{8})?",
    metric=r"[A-Za-z][A-Za-z0-9]*",
    launch=re.escape(LAUNCH_DIR),
    job=r"job-\d+",


def experiment(maps):
    """The configuration of the experiment whose MAPS is ``maps``."""
    if maps in EXPERIMENTS:
        return EXPERIMENTS[maps]
    # A string test, not Path parents: this runs for every job of a 1,000-run search.
    if maps.startswith(LAUNCH_PREFIX) and maps in random_search_maps():
        return random_search_maps()[maps]
    raise WorkflowError(
        f"{maps} is not a MAPS of this workflow (maps_dir is {MAPS_DIR})"
    )


@planned
def failure_marker(wildcards):
    """Where a random-search run records why it failed ("" outside random search)."""
    job = Path(wildcards.maps).parent
    if job.parent == Path(LAUNCH_DIR) and job.name.startswith("job-"):
        return str(job / "failed.txt")
    return ""


def exp(wildcards):
    return experiment(wildcards.maps)


@planned
def table_of(wildcards):
    return dataset_spec(wildcards.dataset)[1]["table"]


@planned
def table_key(wildcards):
    return dataset_spec(wildcards.dataset)[0]


@planned
def prepare_params(wildcards):
    """prepare_cache's settings of one data set, less its table (the rule's input)."""
    settings = dict(dataset_spec(wildcards.dataset)[1])
    del settings["table"]
    return settings


@planned
def train_manifest(wildcards):
    return f"{DATA_DIR}/cache/{dataset_names_of(exp(wildcards))['train']}/manifest.tsv"


@planned
def group_manifest(wildcards):
    name = dataset_names_of(exp(wildcards))[f"group-{wildcards.group}"]
    return f"{DATA_DIR}/cache/{name}/manifest.tsv"


# The MAPS this workflow trains: maps_dir and the random-search runs'. Rule
# train is constrained to them, so that a source MAPS of train.transfer_learning
# written elsewhere is an input file like any other, not a job of this workflow.
OWN_MAPS = rf"{re.escape(MAPS_DIR)}|{re.escape(LAUNCH_DIR)}/job-\d+/maps"


@planned
def transfer_source(wildcards):
    """The model train.transfer_learning starts split k from ([] when it is off).

    A source MAPS this workflow writes is built first; any other must exist
    already, else the DAG stops here naming the key and the missing file.
    """
    from snakemaps.errors import UserError
    from snakemaps.train.transfer import check_source, source_model

    settings = exp(wildcards)["train"].get("transfer_learning") or {}
    model = source_model(settings, int(wildcards.split))
    if model is None:
        return []
    source = str(settings["path"]).rstrip("/")
    if source in EXPERIMENTS or (
        Path(LAUNCH_DIR) in Path(source).parents and source in random_search_maps()
    ):
        return str(model)
    try:
        check_source(settings, int(wildcards.split))
    except UserError as error:
        raise WorkflowError(str(error)) from None
    return str(model)


# Each rule's inputs are the declared outputs it reads (or, for a train job's
# outputs, its final model: see final_models), so that a deleted or changed
# file reruns what made it and what reads it.


def validation_of(maps):
    """The validation aggregated.tsv of every saved model of every split of ``maps``."""
    return [
        f"{maps}/training/split-{k}/models/{d}/validation_metrics/aggregated.tsv"
        for k in SPLITS
        for d in MODEL_DIRS
    ]


def final_models(maps):
    """Every split's final model: the file that stands for all its train job writes.

    A train job writes its final model, best models and their validation
    metrics, and what reads any of them takes the final models as inputs.
    Snakemake reruns a job when any of its declared outputs is missing, and
    then whatever reads one of its outputs, so a deleted best model or
    validation file is made again and its readers rerun. One input per split
    instead of every file keeps the DAG of a 1,000-run search small.
    """
    return [f"{maps}/training/split-{k}/models/final/model.pt" for k in SPLITS]


@planned
def test_inputs(wildcards):
    """Rule test: every split's train job (its models and, for soft voting, their validation)."""
    return final_models(wildcards.maps)


@planned
def group_results(wildcards):
    """Every split's test results of one group: what its summaries and figures read."""
    return [
        f"{wildcards.maps}/test/group-{wildcards.group}/results/split-{k}/{model}/metrics/aggregated.tsv"
        for k in SPLITS
        for model in MODEL_NAMES
    ]


@planned
def interpreted_model(wildcards):
    """The weights rule interpret reads; epoch-<e> models exist once final is written."""
    model = wildcards.model
    folder = f"best_models/{model}" if model.startswith("best-") else "final"
    return f"{wildcards.maps}/training/split-{wildcards.split}/models/{folder}/model.pt"


def interpret_jobs(maps):
    """(group, split, model) of every interpretation the config asks for (none when off)."""
    from snakemaps.errors import UserError
    from snakemaps.interpret import interpretation_jobs

    settings = experiment(maps)
    try:
        return interpretation_jobs(
            settings["interpret"],
            groups=list(test_groups()),
            n_splits=settings["split"]["n_splits"],
            train=settings["train"],
            task=settings["data"]["task"],
        )
    except UserError as error:
        raise WorkflowError(str(error)) from None


def interpret_targets(maps):
    from snakemaps.interpret import output_dirs

    methods = experiment(maps)["interpret"]["methods"]
    return [
        path
        for group, split, model in interpret_jobs(maps)
        for path in output_dirs(maps, group, split, model, methods)
    ]


@planned
def interpretation_dirs(wildcards):
    """The interpret-<method>/ folders of one (maps, group, split, model)."""
    from snakemaps.interpret import output_dirs

    return output_dirs(
        wildcards.maps,
        wildcards.group,
        int(wildcards.split),
        wildcards.model,
        experiment(wildcards.maps)["interpret"]["methods"],
    )


def maps_targets(maps):
    """Every final output of one MAPS: validation and test results, summaries, env, maps."""
    targets = [f"{maps}/env/environment.txt", *validation_of(maps)]
    for group in test_groups():
        targets += [
            f"{maps}/test/group-{group}/summary-{metric}.tsv" for metric in MONITOR
        ]
    return targets + interpret_targets(maps)


# Random search. Runs are sampled while the DAG is built (sampling is
# torch-free and takes milliseconds), so every run's jobs join one DAG. The
# workflow imports the package's sampler lazily: re-implementing it here would
# give two sources of truth for what a seed samples.

RANDOM_SEARCH = config["random_search"]
RANDOM_SEARCH_JOBS = [f"job-{i}" for i in range(RANDOM_SEARCH["n_runs"])]
# The analysis reads the validation of these best models (by task: balanced
# accuracy and loss for classification, loss otherwise) and writes these files.
from snakemaps.search.analysis import analysis_files, selection_metrics

SEARCH_TASK = config["data"]["task"]
SELECTION_METRICS = selection_metrics(SEARCH_TASK)
ANALYSIS_OUTPUTS = {
    kind: f"{{launch}}/{name}" for kind, name in analysis_files(SEARCH_TASK).items()
}


def space_source():
    """The space: a mapping, or a path (relative to the working directory, else the workflow)."""
    space = RANDOM_SEARCH["space"]
    if isinstance(space, str) and not Path(space).exists():
        shipped = Path(workflow.basedir) / space
        if shipped.exists():
            return str(shipped)
    return space


@functools.cache
def config_validator():
    """The config schema, loaded once (validating each sampled run re-read it)."""
    import jsonschema
    import yaml

    schema_path = Path(workflow.basedir) / "config" / "config.schema.yaml"
    return jsonschema.Draft202012Validator(yaml.safe_load(schema_path.read_text()))


@functools.cache
def random_search_runs():
    """Job name -> (sampled options, experiment config); sampled on first use only."""
    from snakemaps.errors import UserError
    from snakemaps.search.launch import run_configs
    from snakemaps.search.sampling import load_space

    missing = [m for m in SELECTION_METRICS if m not in MONITOR]
    if missing:
        raise WorkflowError(
            f"a {SEARCH_TASK} random search ranks its runs by the validation of "
            f"best-{SELECTION_METRICS[0]}: add {missing} to train.monitor"
        )
    try:
        space = load_space(space_source())
        runs = run_configs(
            config, space, LAUNCH_DIR, RANDOM_SEARCH["n_runs"], RANDOM_SEARCH["seed"]
        )
    except UserError as error:
        raise WorkflowError(str(error)) from None
    unused = [key for key in ("n_fcblocks", "dropout") if space.get(key)]
    if SEARCH_TASK == "reconstruction" and unused:
        print(
            f"NOTE: random_search.json {' and '.join(unused)}: an autoencoder keeps the "
            "sampled convolutions only (ClinicaDL builds it from the CNN's convolutional "
            "part), so these set no layer; options.json records them, model.json shows "
            "the network built",
            file=sys.stderr,
        )
    from snakemaps.tasks import check_search_run

    validator = config_validator()
    for job, (_, experiment) in runs.items():
        error = next(iter(validator.iter_errors(experiment)), None)
        if error is not None:
            where = ".".join(map(str, error.absolute_path))
            raise WorkflowError(
                f"random search {job}: sampled config is invalid at {where}: {error.message}"
            )
        if experiment["split"]["n_splits"] != len(SPLITS):
            raise WorkflowError(
                f"random search {job}: split.n_splits is {experiment['split']['n_splits']}, "
                f"the config's is {len(SPLITS)}; every run of a search has the config's splits"
            )
        demo_group = test_groups().get("test", "").startswith(f"{DATA_DIR}/synthetic/")
        if demo_group and experiment["data"]["tsv"] is not None:
            raise WorkflowError(
                f"random search {job}: tsv_path sets data.tsv to {experiment['data']['tsv']}, "
                "but the config's demo cohort adds its held-out group 'test', which every run "
                "is evaluated on. Set data.synthetic.n_test_participants: 0, or give your "
                "cohort in the config (data.tsv, data.caps_directory) with test.groups of it."
            )
        try:
            check_datasets(dataset_specs_of(experiment))
        except WorkflowError as error:
            from snakemaps.search.sampling import DATA_KEYS

            options = runs[job][0]
            mapped = ", ".join(
                f"{key} -> data.{DATA_KEYS[key]}" for key in DATA_KEYS if key in options
            )
            where = f" (random_search.json {mapped})" if mapped else ""
            raise WorkflowError(f"random search {job}{where}: {error}") from None
        try:
            check_search_run(job, experiment, config["data"]["task"])
        except UserError as error:
            raise WorkflowError(str(error)) from None
        check_train(experiment, f"random search {job}: train")
        check_modes(experiment, f"random search {job}: ")
    return runs


@functools.cache
def random_search_maps():
    """MAPS directory -> experiment config of every run (a dict: lookups stay O(1))."""
    return {run["maps_dir"]: run for _, run in random_search_runs().values()}


def random_search_space(wildcards):
    from snakemaps.search.sampling import load_space

    return load_space(space_source())


def random_search_maps_not_failed():
    """MAPS directory of every random-search run that has not failed."""
    return [
        experiment["maps_dir"]
        for job, (_, experiment) in random_search_runs().items()
        if not Path(f"{LAUNCH_DIR}/{job}/failed.txt").exists()
    ]


def random_search_test_summaries(wildcards):
    """Every test group evaluated on every run's MAPS that did not fail."""
    return [
        f"{maps}/test/group-{group}/summary-{metric}.tsv"
        for maps in random_search_maps_not_failed()
        for group in test_groups()
        for metric in MONITOR
    ]


def random_search_inputs(wildcards):
    """Every run's options, and the train jobs (their validated best models) of the runs that
    did not fail."""
    inputs = [f"{LAUNCH_DIR}/random_search.json"]
    inputs += [f"{LAUNCH_DIR}/{job}/options.json" for job in random_search_runs()]
    for maps in random_search_maps_not_failed():
        inputs += final_models(maps)
    return inputs


def project_lock_files(wildcards):
    """The lock files (requirements.lock, uv.lock, ...) beside the Snakefile."""
    from snakemaps.env import project_lock_files as found

    return [str(path) for path in found(workflow.basedir)]


def warn_if_environment_changed(maps):
    """Print what changed since the environment of ``maps`` was recorded."""
    from snakemaps.env import recorded_changes

    changes = recorded_changes(f"{maps}/env/environment.txt")
    if changes:
        shown = "; ".join(changes[:20]) + (" ..." if len(changes) > 20 else "")
        print(
            f"WARNING: the environment differs from the one recorded in "
            f"{maps}/env/environment.txt: {shown}",
            file=sys.stderr,
        )


# Steps that need no GPU and take seconds run on the host that runs Snakemake,
# whatever the executor: under profiles/slurm only train and test jobs are
# submitted. SNAKEMAPS_SUBMIT="split,environment" submits those rules too.
LOCAL_RULES = [
    "all",
    "generate_demo",
    "prepare",
    "split",
    "register_test_group",
    "environment",
    "random_search",
    "sample_random_search",
    "analyse_random_search",
    "report_random_search",
    "report_learning_curves",
    "report_test_metrics",
    "report_test_figure",
    "report_environment",
    "report_interpretation",
]
SUBMITTED = {
    name.strip()
    for name in os.environ.get("SNAKEMAPS_SUBMIT", "").split(",")
    if name.strip()
}
if SUBMITTED - set(LOCAL_RULES):
    raise WorkflowError(
        f"SNAKEMAPS_SUBMIT names {sorted(SUBMITTED - set(LOCAL_RULES))}, which are not "
        f"rules that run locally; choose from {LOCAL_RULES} (train and test are always "
        "submitted)."
    )
workflow.localrules(*(name for name in LOCAL_RULES if name not in SUBMITTED))


def check_slurm_requests():
    """Stop before the first sbatch if SLURM could never start one of the jobs."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.cli_prefix != "slurm":
        return
    import subprocess

    from snakemaps.slurm import (
        impossible,
        profile_partition,
        query_partitions,
        request_of,
    )

    try:
        partitions, default = query_partitions()
    except (OSError, subprocess.SubprocessError) as error:
        print(
            f"WARNING: could not check job requests with sinfo: {error}",
            file=sys.stderr,
        )
        return
    jobs = [job for job in workflow.dag.needrun_jobs() if not job.is_local]
    # Default resources are not evaluated before a job's inputs exist: read the
    # partition the profile gives every job from its expression.
    given = profile_partition(workflow.resource_settings.default_resources.args)
    problems = impossible((request_of(job, given) for job in jobs), partitions, default)
    if problems:
        raise WorkflowError(
            "SLURM could never start these jobs (nothing was submitted):\n- "
            + "\n- ".join(problems)
        )
