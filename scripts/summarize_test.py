"""Rule summarize_test: per-split test metrics with mean and std, one TSV per monitored metric."""

from snakemaps.evaluate import summarize_group
from snakemaps.steps import run_step


def summarize(maps_dir, group, metrics, splits):
    return [summarize_group(maps_dir, group, metric, splits) for metric in metrics]


def main(smk):
    run_step(
        smk,
        summarize,
        maps_dir=smk.wildcards.maps,
        group=smk.wildcards.group,
        metrics=smk.params.metrics,
        splits=smk.params.splits,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
