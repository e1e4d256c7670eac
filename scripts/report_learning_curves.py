"""Rule report_learning_curves: loss and validation score per epoch for every split (report)."""

from snakemaps.report import learning_curves
from snakemaps.steps import run_step


def main(smk):
    run_step(
        smk,
        learning_curves,
        maps_dir=smk.wildcards.maps,
        out=smk.output[0],
        splits=smk.params.splits,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
