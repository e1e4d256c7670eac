# Stages 3 and 4: evaluate saved models on validation sets and test groups.


rule validate:
    input:
        trained_models,
    output:
        expand(
            "{{maps}}/training/split-{{split}}/models/{model}/validation_metrics/aggregated.tsv",
            model=MODEL_DIRS,
        ),
    log:
        "logs/{maps}/validate_split-{split}.log",
    conda:
        "../envs/snakemaps.yaml"
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=4000,
        runtime=60,
    params:
        train=lambda wildcards: exp(wildcards)["train"],
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
        models=trained_models,
        # Soft voting (patch, roi, slice) weighs parts by their validation accuracy.
        validation=voting_references,
    output:
        expand(
            "{{maps}}/test/group-{{group}}/results/split-{{split}}/{model}/metrics/aggregated.tsv",
            model=MODEL_NAMES,
        ),
    log:
        "logs/{maps}/test_group-{group}_split-{split}.log",
    conda:
        "../envs/snakemaps.yaml"
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=4000,
        runtime=60,
    params:
        train=lambda wildcards: exp(wildcards)["train"],
    script:
        "../scripts/test.py"


rule summarize_test:
    input:
        group_results,
    output:
        expand("{{maps}}/test/group-{{group}}/summary-{metric}.tsv", metric=MONITOR),
    log:
        "logs/{maps}/summarize_test-{group}.log",
    conda:
        "../envs/snakemaps.yaml"
    params:
        splits=lambda wildcards: splits(wildcards.maps),
        metrics=MONITOR,
    script:
        "../scripts/summarize_test.py"
