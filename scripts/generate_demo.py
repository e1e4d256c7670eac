"""Rule generate_demo: the synthetic AD/CN cohort (participants.tsv, test.tsv, NIfTI images)."""

from pathlib import Path

from snakemaps.data.synthetic import generate_cohort
from snakemaps.steps import run_step


def main(smk):
    synthetic = smk.params.synthetic
    run_step(
        smk,
        generate_cohort,
        out_dir=Path(smk.output.participants).parent,
        n_participants=synthetic["n_participants"],
        n_test_participants=synthetic["n_test_participants"],
        max_sessions=synthetic["n_sessions"],
        shape=tuple(synthetic["shape"]),
        seed=synthetic["seed"],
        effect_size=synthetic["effect_size"],
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
