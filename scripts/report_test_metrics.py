"""Rule report_test_metrics: a test group's metrics per split and mean ± std per model (report)."""

from snakemaps.report import test_metrics
from snakemaps.steps import run_step


def main(smk):
    run_step(
        smk,
        test_metrics,
        maps_dir=smk.wildcards.maps,
        group=smk.wildcards.group,
        out=smk.output[0],
        splits=smk.params.splits,
        models=smk.params.models,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
