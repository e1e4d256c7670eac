"""Rule sample_random_search: random_search.json and each job's options.json and config.yaml."""

from pathlib import Path

from snakemaps.search.launch import write_launch_dir
from snakemaps.steps import run_step


def main(smk):
    run_step(
        smk,
        write_launch_dir,
        launch_dir=Path(smk.output.space).parent,
        space=smk.params.space,
        runs=smk.params.runs,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
