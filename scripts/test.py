"""Rule test: every split's saved models evaluated on one test group, then its summaries."""

from snakemaps.evaluate import run_test_group, saved_models
from snakemaps.steps import run_step


def main(smk):
    train = smk.params.train
    run_step(
        smk,
        run_test_group,
        maps_dir=smk.wildcards.maps,
        group=smk.wildcards.group,
        splits=smk.params.splits,
        models=saved_models(train),
        metrics=smk.params.metrics,
        device=train["device"],
        batch_size=train["batch_size"],
        threads=smk.threads,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
