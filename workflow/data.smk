# Stage 0: the demo cohort, and every table's images turned once into a tensor cache.


rule generate_demo:
    # One job per table: participants (training) or test (the held-out group), so
    # that changing the held-out group leaves the training cohort untouched.
    output:
        table="{data}/synthetic/{part}.tsv",
    log:
        "{data}/logs/generate_demo_{part}.log",
    wildcard_constraints:
        part="participants|test",
    conda:
        "../envs/snakemaps.yaml"
    params:
        synthetic=demo_params,
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
    # Before any training that is ready at the same time: a test group's cache
    # feeds register_test_group, whose checks should stop a bad group early.
    priority: 5
    conda:
        "../envs/snakemaps.yaml"
    params:
        key=table_key,
        settings=prepare_params,
    script:
        "../scripts/prepare.py"
