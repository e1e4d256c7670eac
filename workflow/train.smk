# Stages 2 and 3: one training job per split, which ends by writing the
# validation metrics of every model it saved (mostly training's own rows for
# that epoch). Only files written at the end or restored from the resume
# checkpoint are declared, so tmp/ and the logs survive a failed job and a
# rerun resumes.


rule train:
    input:
        # model.json and the other MAPS files are written by the same split job.
        manifest="{maps}/training/data/split_manifest.json",
        transfer_source=transfer_source,
    output:
        final="{maps}/training/split-{split}/models/final/model.pt",
        best=expand(
            "{{maps}}/training/split-{{split}}/models/best_models/best-{metric}/model.pt",
            metric=MONITOR,
        ),
        validation=expand(
            "{{maps}}/training/split-{{split}}/models/{model}/validation_metrics/aggregated.tsv",
            model=MODEL_DIRS,
        ),
    log:
        "logs/{maps}/train_split-{split}.log",
    benchmark:
        "logs/{maps}/train_split-{split}.benchmark.tsv"
    wildcard_constraints:
        maps=OWN_MAPS,
    conda:
        "../envs/snakemaps.yaml"
    threads: train_processes
    resources:
        gpu=train_gpus,
        mem_mb=4000,
        runtime=240,
    params:
        train=section("train"),
        failure_marker=failure_marker,
    script:
        "../scripts/train.py"
