"""Rule train: one split trained (resumes from training/split-<k>/tmp/ when a checkpoint exists)."""

from snakemaps.steps import run_step
from snakemaps.train import train_split


def main(smk):
    maps_dir = smk.input.model.removesuffix("/model.json")
    run_step(
        smk,
        train_split,
        maps_dir=maps_dir,
        split=int(smk.wildcards.split),
        train=smk.params.train,
        threads=smk.threads,
        failure_marker=smk.params.failure_marker or None,
        log_file=smk.log[0],
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
