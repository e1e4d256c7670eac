"""Rule generate_demo: one table of the synthetic AD/CN cohort (participants.tsv or test.tsv).

The NIfTI images of that table's participants go to ``images/`` beside it, or to the
Clinica CAPS ``caps/`` beside it with ``data.synthetic.caps``.
"""

from pathlib import Path

from snakemaps.data.synthetic import generate_cohort
from snakemaps.steps import run_step


def main(smk):
    synthetic = smk.params.synthetic
    run_step(
        smk,
        generate_cohort,
        out_dir=Path(smk.output.table).parent,
        parts=[smk.wildcards.part],
        n_participants=synthetic["n_participants"],
        # Left out of the training cohort's params: that table does not depend on it.
        n_test_participants=synthetic.get("n_test_participants", 0),
        max_sessions=synthetic["n_sessions"],
        shape=tuple(synthetic["shape"]),
        seed=synthetic["seed"],
        effect_size=synthetic["effect_size"],
        caps=synthetic.get("caps", False),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
