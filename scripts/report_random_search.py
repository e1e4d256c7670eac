"""Rule report_random_search: the ranked runs of a random search as a figure (report)."""

from snakemaps.report import random_search_ranking
from snakemaps.steps import run_step


def main(smk):
    run_step(smk, random_search_ranking, ranked_tsv=smk.input.ranked, out=smk.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
