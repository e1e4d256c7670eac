"""Rule validate: every saved model of every split evaluated on its validation set."""

from snakemaps.evaluate import saved_models, validate_splits
from snakemaps.steps import run_step


def main(smk):
    train = smk.params.train
    run_step(
        smk,
        validate_splits,
        maps_dir=smk.wildcards.maps,
        splits=smk.params.splits,
        models=saved_models(train),
        device=train["device"],
        batch_size=train["batch_size"],
        threads=smk.threads,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
