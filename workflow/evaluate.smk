# Stage 4: evaluate the saved models on the test groups. Stage 3, validation,
# is the end of each train job (train.smk).


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
        train=section("train"),
    script:
        "../scripts/register_test_group.py"


# One test job per MAPS and group, for every split: it evaluates each split's
# models in turn, then writes the summaries. Fewer, larger jobs keep the DAG of
# a 1,000-run search small.
rule test:
    input:
        group="{maps}/test/group-{group}/data.tsv",
        # One declared file per train job (its final model) stands for all it
        # writes, soft voting's validation included: see final_models.
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
        train=section("train"),
        splits=SPLITS,
        metrics=MONITOR,
    script:
        "../scripts/test.py"
