# Stage 6: random search (helpers in common.smk). Every run's split, train,
# validate and test jobs are part of one DAG that --cores and --profile spread.
# Every test group is evaluated on every run's MAPS (a group added later too,
# without retraining); the analysis itself reads validation only.


rule random_search:
    input:
        # analysis_balanced_accuracy.tsv, analysis_loss.tsv (classification) and
        # ranked_runs.tsv: what snakemaps.search.analysis writes for data.task.
        [path.format(launch=LAUNCH_DIR) for path in ANALYSIS_OUTPUTS.values()],
        f"reports/{LAUNCH_DIR}/ranked_runs.png",
        random_search_test_summaries,


# Its outputs name the launch directory, not a wildcard: Snakemake indexes
# outputs by the text before their first wildcard, and 1,000 options.json
# patterns that all start with one would be tried against every file of the DAG.
rule sample_random_search:
    output:
        space=f"{LAUNCH_DIR}/random_search.json",
        options=expand(f"{LAUNCH_DIR}/{{job}}/options.json", job=RANDOM_SEARCH_JOBS),
    log:
        f"{LAUNCH_DIR}/logs/sample_random_search.log",
    conda:
        "../envs/snakemaps.yaml"
    params:
        space=random_search_space,
        runs=lambda wildcards: random_search_runs(),
    script:
        "../scripts/sample_random_search.py"


rule analyse_random_search:
    input:
        random_search_inputs,
    output:
        **ANALYSIS_OUTPUTS,
    log:
        "{launch}/logs/analyse_random_search.log",
    conda:
        "../envs/snakemaps.yaml"
    params:
        runs=lambda wildcards: random_search_runs(),
        task=SEARCH_TASK,
    script:
        "../scripts/analyse_random_search.py"


rule report_random_search:
    input:
        ranked="{launch}/ranked_runs.tsv",
    output:
        report(
            "reports/{launch}/ranked_runs.png",
            category="Random search",
            caption="report/random_search.rst",
            labels={"figure": "ranked runs"},
        ),
    log:
        "{launch}/logs/report_random_search.log",
    conda:
        "../envs/snakemaps.yaml"
    script:
        "../scripts/report_random_search.py"
