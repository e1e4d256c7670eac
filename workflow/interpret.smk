# Stage 4b: saliency maps (ClinicaDL's interpret) of saved models on test
# groups, beside each model's test metrics (config key interpret; off by default).

INTERPRET_MODEL = r"best-[A-Za-z][A-Za-z0-9]*|final|epoch-\d+"


rule interpret:
    input:
        group="{maps}/test/group-{group}/dataset.json",
        model=interpreted_model,
    output:
        [
            directory(path)
            for path in expand(
                "{{maps}}/test/group-{{group}}/results/split-{{split}}/{{model}}/interpret-{method}",
                method=config["interpret"]["methods"],
            )
        ],
    log:
        "logs/{maps}/interpret_group-{group}_split-{split}_{model}.log",
    wildcard_constraints:
        model=INTERPRET_MODEL,
    conda:
        "../envs/snakemaps.yaml"
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=4000,
        runtime=60,
    params:
        interpret=section("interpret"),
        train=section("train"),
    script:
        "../scripts/interpret.py"
