"""Rule test: the saved models of one split evaluated on one test group."""

from snakemaps.evaluate import evaluate_test_group
from snakemaps.steps import run_step


def main(smk):
    train = smk.params.train
    models = [f"best-{m}" for m in train["monitor"]] + ["final"]
    models += [f"epoch-{e}" for e in train["save_epochs"] if e <= train["epochs"]]
    run_step(
        smk,
        evaluate_test_group,
        maps_dir=smk.wildcards.maps,
        group=smk.wildcards.group,
        split=int(smk.wildcards.split),
        models=models,
        device=train["device"],
        batch_size=train["batch_size"],
        threads=smk.threads,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
