"""Rule validate: every saved model of a split evaluated on its validation set."""

from snakemaps.evaluate import saved_models, validate_checkpoints
from snakemaps.steps import run_step


def main(smk):
    train = smk.params.train
    run_step(
        smk,
        validate_checkpoints,
        maps_dir=smk.wildcards.maps,
        split=int(smk.wildcards.split),
        models=saved_models(train),
        device=train["device"],
        batch_size=train["batch_size"],
        threads=smk.threads,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
