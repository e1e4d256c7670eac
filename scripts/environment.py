"""Rule environment: env/environment.txt (pip freeze), conda exports, lock file, system.json."""

from pathlib import Path

from snakemaps.env import snapshot
from snakemaps.steps import run_step


def main(smk):
    maps_dir = Path(smk.output.txt).parent.parent
    run_step(smk, snapshot, maps_dir=maps_dir, lock_files=list(smk.input.lock))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
