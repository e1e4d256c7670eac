# snakemaps: a deep-learning experiment on medical images as restartable steps,
# written into a ClinicaDL-style MAPS. This file is the table of contents.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/common.smk"
include: "workflow/data.smk"
include: "workflow/split.smk"
include: "workflow/train.smk"
include: "workflow/evaluate.smk"
include: "workflow/interpret.smk"
include: "workflow/env.smk"
include: "workflow/random_search.smk"
include: "workflow/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        maps_targets(MAPS_DIR),
        report_targets(MAPS_DIR),


onstart:
    check_slurm_requests()
