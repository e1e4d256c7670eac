"""Rule report_interpretation: class-average saliency maps over the mean image, as a figure."""

from snakemaps.report.interpretation import interpretation_figure
from snakemaps.steps import run_step


def main(smk):
    run_step(
        smk,
        interpretation_figure,
        maps_dir=smk.wildcards.maps,
        group=smk.wildcards.group,
        split=int(smk.wildcards.split),
        model=smk.wildcards.model,
        methods=smk.params.methods,
        out=smk.output[0],
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
