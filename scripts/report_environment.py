"""Rule report_environment: an HTML page summarising the MAPS's environment snapshot (report)."""

from snakemaps.report import environment_summary
from snakemaps.steps import run_step


def main(smk):
    run_step(smk, environment_summary, maps_dir=smk.wildcards.maps, out=smk.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
