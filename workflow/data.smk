# Stage 0: the demo cohort, and every table's images turned once into a tensor cache.


# The training cohort and the held-out group are written by separate jobs, so
# that changing the held-out group (or turning it off with 0) never rewrites
# the training images and so never retrains.
rule generate_demo:
    output:
        participants="{data}/synthetic/participants.tsv",
    log:
        "{data}/logs/generate_demo.log",
    conda:
        "../envs/snakemaps.yaml"
    params:
        synthetic=DEMO_TRAINING_COHORT,
        groups=["participants"],
    script:
        "../scripts/generate_demo.py"


rule generate_demo_test:
    output:
        test="{data}/synthetic/test.tsv",
    log:
        "{data}/logs/generate_demo_test.log",
    conda:
        "../envs/snakemaps.yaml"
    params:
        synthetic=config["data"]["synthetic"],
        groups=["test"],
    script:
        "../scripts/generate_demo.py"


rule prepare:
    input:
        table=table_of,
    output:
        manifest="{data}/cache/{dataset}/manifest.tsv",
        info="{data}/cache/{dataset}/manifest.json",
    log:
        "{data}/logs/prepare_{dataset}.log",
    conda:
        "../envs/snakemaps.yaml"
    params:
        label=config["data"]["label"],
        key=table_key,
    script:
        "../scripts/prepare.py"
