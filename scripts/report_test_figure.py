"""Rule report_test_figure: one model on a test group, as a figure.

``confusion_roc``: confusion matrix and ROC curves (classification);
``predictions``: predicted against true values (regression);
``reconstruction``: input and reconstruction slices (autoencoder).
"""

from snakemaps.report import confusion_and_roc, predictions_scatter
from snakemaps.report.reconstruction import reconstruction_slices
from snakemaps.steps import run_step

FIGURES = {
    "confusion_roc": confusion_and_roc,
    "predictions": predictions_scatter,
    "reconstruction": reconstruction_slices,
}


def main(smk):
    run_step(
        smk,
        FIGURES[smk.wildcards.figure],
        maps_dir=smk.wildcards.maps,
        group=smk.wildcards.group,
        model=smk.wildcards.model,
        out=smk.output[0],
        splits=smk.params.splits,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
