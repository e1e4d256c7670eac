"""Rule test: the saved models of one split evaluated on one test group."""

from snakemaps.evaluate import evaluate_test_group, saved_models
from snakemaps.steps import run_step


def main(smk):
    train = smk.params.train
    run_step(
        smk,
        evaluate_test_group,
        maps_dir=smk.wildcards.maps,
        group=smk.wildcards.group,
        split=int(smk.wildcards.split),
        models=saved_models(train),
        device=train["device"],
        batch_size=train["batch_size"],
        threads=smk.threads,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
