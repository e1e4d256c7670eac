"""Rule split: the MAPS root files and training/data/ (participant-level split, manifest)."""

from pathlib import Path

from snakemaps.experiment import create_maps
from snakemaps.steps import run_step


def main(smk):
    run_step(
        smk,
        create_maps,
        maps_dir=Path(smk.output.model).parent,
        manifest=smk.input.manifest,
        split=smk.params.split,
        model=smk.params.model,
        train=smk.params.train,
        positive_class=smk.params.positive_class,
        task=smk.params.task,
        modes=smk.params.modes,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
