"""Rule train: one split trained (resumes from training/split-<k>/tmp/ when a checkpoint exists).

Tracking settings are read from the config, not from params: params are a
rerun trigger, and switching tracking on must not retrain finished splits.
"""

from pathlib import Path

from snakemaps.steps import run_step
from snakemaps.train import train_split


def main(smk):
    maps_dir = smk.wildcards.maps
    marker = smk.params.failure_marker  # <launch_dir>/job-<i>/failed.txt in a random search
    run_step(
        smk,
        train_split,
        maps_dir=maps_dir,
        split=int(smk.wildcards.split),
        train=smk.params.train,
        threads=smk.threads,
        failure_marker=marker or None,
        tracking=smk.config["tracking"],
        tracked_config={key: smk.config[key] for key in ("data", "split")},
        search_run=str(Path(marker).parent) if marker else None,
        log_file=smk.log[0],
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
