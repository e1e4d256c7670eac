"""Rules generate_demo and generate_demo_test: the synthetic AD/CN cohort.

generate_demo writes participants.tsv (the training cohort), generate_demo_test
writes test.tsv (the held-out group), each with its NIfTI images.
"""

from pathlib import Path

from snakemaps.data.synthetic import generate_cohort
from snakemaps.steps import run_step


def main(smk):
    synthetic = smk.params.synthetic
    run_step(
        smk,
        generate_cohort,
        out_dir=Path(smk.output[0]).parent,
        n_participants=synthetic["n_participants"],
        # The training job's params leave the held-out count out (it does not change them).
        n_test_participants=synthetic.get("n_test_participants", 0),
        max_sessions=synthetic["n_sessions"],
        shape=tuple(synthetic["shape"]),
        seed=synthetic["seed"],
        effect_size=synthetic["effect_size"],
        groups=smk.params.groups,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
