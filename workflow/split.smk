# Stage 1: create the MAPS (configuration files first) and split participants.
# Test groups are no input: each is checked against the split when it is
# registered (evaluate.smk), so adding a group never reruns the split.


rule split:
    input:
        manifest=train_manifest,
    output:
        manifest="{maps}/training/data/split_manifest.json",
        data="{maps}/training/data/data.tsv",
        model="{maps}/model.json",
        metrics="{maps}/metrics.json",
        callbacks="{maps}/callbacks.json",
        optimization="{maps}/training/optimization.json",
    log:
        "logs/{maps}/split.log",
    conda:
        "../envs/snakemaps.yaml"
    params:
        split=section("split"),
        model=section("model"),
        train=section("train"),
        positive_class=POSITIVE_CLASS,
        task=planned(lambda wildcards: exp(wildcards)["data"]["task"]),
        modes=planned(lambda wildcards: mode_settings(exp(wildcards))),
    script:
        "../scripts/split.py"
