"""Rule analyse_random_search: ranked_runs.tsv, and the threshold tables of a classification search."""

from pathlib import Path

from snakemaps.search.analysis import write_analysis
from snakemaps.steps import run_step


def main(smk):
    runs = smk.params.runs
    run_step(
        smk,
        write_analysis,
        launch_dir=Path(smk.output.ranked).parent,
        job_maps={job: Path(experiment["maps_dir"]) for job, (_, experiment) in runs.items()},
        options_by_run={job: options for job, (options, _) in runs.items()},
        task=smk.params.task,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
