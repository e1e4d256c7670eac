# The Snakemake report (snakemake --report report.html): figures and an
# environment page for each MAPS, written to reports/<maps_dir>/ (outside the
# MAPS). Each rule's inputs are the declared MAPS outputs it reads, so the
# figures are drawn after training, validation, testing and the snapshot.

REPORT_MODEL = r"best-[A-Za-z][A-Za-z0-9]*|final"

# Every report file of one MAPS: learning curves, environment page, per test
# group the test metrics and a confusion matrix + ROC figure per model, and a
# saliency figure per interpreted model (config key interpret). (Lambdas,
# not functions: `snakemake --lint` refuses functions beside rules.)
report_targets = lambda maps: [
    f"reports/{maps}/learning_curves.png",
    f"reports/{maps}/environment.html",
    *(f"reports/{maps}/group-{group}/test_metrics.png" for group in test_groups()),
    *(
        f"reports/{maps}/group-{group}/{PER_MODEL_FIGURE}_{model}.png"
        for group in test_groups()
        for model in MODEL_NAMES
    ),
    *(
        f"reports/{maps}/group-{group}/interpretation_split-{split}_{model}.png"
        for group, split, model in interpret_jobs(maps)
    ),
]
# Per model and test group: a confusion matrix + ROC, for a regression the
# predictions against the true values, for an autoencoder input and
# reconstruction slices.
PER_MODEL_FIGURE = {
    "classification": "confusion_roc",
    "regression": "predictions",
    "reconstruction": "reconstruction",
}[config["data"]["task"]]


rule report_learning_curves:
    input:
        lambda wildcards: validation_of(wildcards.maps),
    output:
        report(
            "reports/{maps}/learning_curves.png",
            category="Training",
            subcategory="{maps}",
            caption="report/learning_curves.rst",
            labels={"figure": "learning curves", "MAPS": "{maps}"},
        ),
    log:
        "logs/{maps}/report_learning_curves.log",
    conda:
        "../envs/snakemaps.yaml"
    params:
        splits=SPLITS,
    script:
        "../scripts/report_learning_curves.py"


rule report_test_metrics:
    input:
        results=group_results,
        summaries=expand(
            "{{maps}}/test/group-{{group}}/summary-{metric}.tsv", metric=MONITOR
        ),
    output:
        report(
            "reports/{maps}/group-{group}/test_metrics.png",
            category="Test results",
            subcategory="{maps}: group {group}",
            caption="report/test_metrics.rst",
            labels={"figure": "test metrics", "model": "all"},
        ),
    log:
        "logs/{maps}/report_test_metrics-{group}.log",
    conda:
        "../envs/snakemaps.yaml"
    params:
        splits=SPLITS,
        models=MODEL_NAMES,
    script:
        "../scripts/report_test_metrics.py"


rule report_test_figure:
    input:
        lambda wildcards: [
            f"{wildcards.maps}/test/group-{wildcards.group}/results/split-{k}/"
            f"{wildcards.model}/metrics/aggregated.tsv"
            for k in SPLITS
        ],
    output:
        report(
            "reports/{maps}/group-{group}/{figure}_{model}.png",
            category="Test results",
            subcategory="{maps}: group {group}",
            caption="report/test_figure.rst",
            labels={"figure": "{figure}", "model": "{model}"},
        ),
    log:
        "logs/{maps}/report_{figure}-{group}_{model}.log",
    wildcard_constraints:
        model=REPORT_MODEL,
        figure="confusion_roc|predictions|reconstruction",
    conda:
        "../envs/snakemaps.yaml"
    params:
        splits=SPLITS,
    script:
        "../scripts/report_test_figure.py"


rule report_interpretation:
    input:
        interpretation_dirs,
    output:
        report(
            "reports/{maps}/group-{group}/interpretation_split-{split}_{model}.png",
            category="Interpretation",
            subcategory="{maps}: group {group}",
            caption="report/interpretation.rst",
            labels={"figure": "saliency maps", "split": "{split}", "model": "{model}"},
        ),
    log:
        "logs/{maps}/report_interpretation-{group}_split-{split}_{model}.log",
    wildcard_constraints:
        model=INTERPRET_MODEL,
    conda:
        "../envs/snakemaps.yaml"
    params:
        methods=config["interpret"]["methods"],
    script:
        "../scripts/report_interpretation.py"


rule report_environment:
    input:
        txt="{maps}/env/environment.txt",
        system="{maps}/env/system.json",
    output:
        report(
            "reports/{maps}/environment.html",
            category="Environment",
            subcategory="{maps}",
            caption="report/environment.rst",
            labels={"page": "software environment", "MAPS": "{maps}"},
        ),
    log:
        "logs/{maps}/report_environment.log",
    conda:
        "../envs/snakemaps.yaml"
    script:
        "../scripts/report_environment.py"
