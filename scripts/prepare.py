"""Rule prepare: every image of one table converted once into the tensor cache (manifest.tsv)."""

from pathlib import Path

from snakemaps.data.prepare import prepare_cache
from snakemaps.steps import run_step


def main(smk):
    manifest = Path(smk.output.manifest)
    run_step(
        smk,
        prepare_cache,
        table=smk.input.table,
        cache_dir=manifest.parent / "tensors",
        manifest=manifest,
        key=smk.params.key,
        **smk.params.settings,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
