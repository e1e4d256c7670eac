# Stage 0: the demo cohort, and every table's images turned once into a tensor cache.


rule generate_demo:
    output:
        participants="{data}/synthetic/participants.tsv",
        test="{data}/synthetic/test.tsv",
    log:
        "{data}/logs/generate_demo.log",
    conda:
        "../envs/snakemaps.yaml"
    params:
        synthetic=config["data"]["synthetic"],
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
