"""Rule register_test_group: test/group-<g>/{data.tsv,dataset.json,dataloader.json}."""

from snakemaps.evaluate import register_test_group
from snakemaps.steps import run_step


def main(smk):
    run_step(
        smk,
        register_test_group,
        maps_dir=smk.wildcards.maps,
        group=smk.wildcards.group,
        manifest=smk.input.manifest,
        batch_size=smk.params.train["batch_size"],
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
