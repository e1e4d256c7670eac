# Stages 3 and 4: evaluate saved models on validation sets and test groups.


# One validate job per MAPS, and one test job per MAPS and group, for every
# split: each reads the splits' models in turn. Fewer, larger jobs keep the
# DAG of a 1,000-run search small; validation mostly copies training's rows.
rule validate:
    input:
        trained_models,
    output:
        expand(
            "{{maps}}/training/split-{split}/models/{model}/validation_metrics/aggregated.tsv",
            split=SPLITS,
            model=MODEL_DIRS,
        ),
    log:
        "logs/{maps}/validate.log",
    conda:
        "../envs/snakemaps.yaml"
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=4000,
        runtime=60,
    params:
        train=lambda wildcards: exp(wildcards)["train"],
        splits=SPLITS,
    script:
        "../scripts/validate.py"


# The test group's own checks (no participant of the split, only training's
# classes) live here, not in the split, so a group added to a finished MAPS
# trains nothing again. Its priority runs it before any training that is ready
# at the same time, so a bad group is reported early.
rule register_test_group:
    input:
        split="{maps}/training/data/split_manifest.json",
        manifest=group_manifest,
    output:
        data="{maps}/test/group-{group}/data.tsv",
        dataset="{maps}/test/group-{group}/dataset.json",
        dataloader="{maps}/test/group-{group}/dataloader.json",
    log:
        "logs/{maps}/register_test_group-{group}.log",
    priority: 10
    conda:
        "../envs/snakemaps.yaml"
    params:
        train=lambda wildcards: exp(wildcards)["train"],
    script:
        "../scripts/register_test_group.py"


rule test:
    input:
        group="{maps}/test/group-{group}/data.tsv",
        # Every split's models; soft voting (patch, roi, slice) weighs parts
        # by their validation accuracy.
        models=test_inputs,
    output:
        results=expand(
            "{{maps}}/test/group-{{group}}/results/split-{split}/{model}/metrics/aggregated.tsv",
            split=SPLITS,
            model=MODEL_NAMES,
        ),
        summaries=expand(
            "{{maps}}/test/group-{{group}}/summary-{metric}.tsv", metric=MONITOR
        ),
    log:
        "logs/{maps}/test_group-{group}.log",
    conda:
        "../envs/snakemaps.yaml"
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=4000,
        runtime=60,
    params:
        train=lambda wildcards: exp(wildcards)["train"],
        splits=SPLITS,
        metrics=MONITOR,
    script:
        "../scripts/test.py"
