# Stage 6: random search. Runs are sampled while the DAG is built (sampling is
# torch-free and takes milliseconds), so every run's split, train and validate
# jobs are part of one DAG that --cores and --profile spread. This is the one
# place the workflow imports the package: re-implementing the sampler here
# would give two sources of truth for what a seed samples.
import functools
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

RANDOM_SEARCH = config["random_search"]
RANDOM_SEARCH_JOBS = [f"job-{i}" for i in range(RANDOM_SEARCH["n_runs"])]
# The analysis reads the validation of these best models.
SELECTION_METRICS = ["BalancedAccuracy", "loss"]


def space_source():
    """The space: a mapping, or a path (relative to the working directory, else the workflow)."""
    space = RANDOM_SEARCH["space"]
    if isinstance(space, str) and not Path(space).exists():
        shipped = Path(workflow.basedir) / space
        if shipped.exists():
            return str(shipped)
    return space


@functools.cache
def random_search_runs():
    """Job name -> (sampled options, experiment config); sampled on first use only."""
    from snakemaps.errors import UserError
    from snakemaps.search.launch import run_configs
    from snakemaps.search.sampling import load_space

    missing = [m for m in SELECTION_METRICS if m not in MONITOR]
    if missing:
        raise WorkflowError(f"random search needs train.monitor to include {missing}")
    try:
        space = load_space(space_source())
        runs = run_configs(
            config, space, LAUNCH_DIR, RANDOM_SEARCH["n_runs"], RANDOM_SEARCH["seed"]
        )
    except UserError as error:
        raise WorkflowError(str(error)) from None
    for job, (_, experiment) in runs.items():
        try:
            validate(
                experiment,
                str(Path(workflow.basedir) / "config" / "config.schema.yaml"),
            )
        except WorkflowError as error:
            raise WorkflowError(
                f"random search {job}: sampled config is invalid: {error}"
            )
    return runs


def random_search_space(wildcards):
    from snakemaps.search.sampling import load_space

    return load_space(space_source())


def random_search_inputs(wildcards):
    """Every run's options, and the validated best models of the runs that did not fail."""
    inputs = [f"{LAUNCH_DIR}/random_search.json"]
    for job, (_, experiment) in random_search_runs().items():
        inputs.append(f"{LAUNCH_DIR}/{job}/options.json")
        if Path(f"{LAUNCH_DIR}/{job}/failed.txt").exists():
            continue
        maps = experiment["maps_dir"]
        inputs += [
            f"{maps}/training/split-{k}/models/best_models/best-{metric}/validation_metrics/aggregated.tsv"
            for k in splits(maps)
            for metric in SELECTION_METRICS
        ]
    return inputs


rule random_search:
    input:
        f"{LAUNCH_DIR}/analysis_balanced_accuracy.tsv",
        f"{LAUNCH_DIR}/analysis_loss.tsv",
        f"{LAUNCH_DIR}/ranked_runs.tsv",


rule sample_random_search:
    output:
        space="{launch}/random_search.json",
        options=expand("{{launch}}/{job}/options.json", job=RANDOM_SEARCH_JOBS),
    log:
        "{launch}/logs/sample_random_search.log",
    conda:
        "../envs/snakemaps.yaml"
    params:
        space=random_search_space,
        runs=lambda wildcards: random_search_runs(),
    script:
        "../scripts/sample_random_search.py"


rule analyse_random_search:
    input:
        random_search_inputs,
    output:
        balanced_accuracy="{launch}/analysis_balanced_accuracy.tsv",
        loss="{launch}/analysis_loss.tsv",
        ranked="{launch}/ranked_runs.tsv",
    log:
        "{launch}/logs/analyse_random_search.log",
    conda:
        "../envs/snakemaps.yaml"
    params:
        runs=lambda wildcards: random_search_runs(),
    script:
        "../scripts/analyse_random_search.py"
