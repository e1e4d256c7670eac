"""Rule report_confusion_roc: confusion matrix and ROC curves of one model on a test group."""

from snakemaps.report import confusion_and_roc
from snakemaps.steps import run_step


def main(smk):
    run_step(
        smk,
        confusion_and_roc,
        maps_dir=smk.wildcards.maps,
        group=smk.wildcards.group,
        model=smk.wildcards.model,
        out=smk.output[0],
        splits=smk.params.splits,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
