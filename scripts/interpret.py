"""Rule interpret: saliency maps of one saved model on one test group.

Writes ``test/group-<g>/results/split-<k>/<model>/interpret-<method>/`` for
each method: per-image and class-average maps as ``.pt`` and ``.nii.gz``.
"""

from snakemaps.interpret.saliency import interpret_group
from snakemaps.steps import run_step


def main(smk):
    settings, train = smk.params.interpret, smk.params.train
    run_step(
        smk,
        interpret_group,
        maps_dir=smk.wildcards.maps,
        group=smk.wildcards.group,
        split=int(smk.wildcards.split),
        model=smk.wildcards.model,
        methods=settings["methods"],
        target_node=settings["target_node"],
        level_grad_cam=settings["level_grad_cam"],
        device=train["device"],
        batch_size=train["batch_size"],
        threads=smk.threads,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
