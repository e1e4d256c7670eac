"""Shared test helpers: the package on sys.path, tiny data sets, running real snakemake."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.append(str(ROOT))  # benchmarks.common: helpers shared with the benchmarks

from benchmarks.common import local_snakemake_env

# A tiny demo: small volumes, few participants, 2 folds, 3 epochs.
TINY = {
    "data": {
        "synthetic": {
            "n_participants": 16,
            "n_test_participants": 6,
            "n_sessions": 2,
            "shape": [24, 28, 24],
        }
    },
    "split": {"n_splits": 2},
    "train": {"epochs": 3, "batch_size": 4, "save_epochs": [2]},
}


def snakemake_command(workdir: Path, *args: str, config: dict | None = None) -> list[str]:
    """The command that runs the real workflow in ``workdir`` on 2 cores.

    Uses the demo config plus ``config`` on top (written to ``workdir/test_config.yaml``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    configfiles = [str(ROOT / "config" / "config.yaml")]
    if config is not None:
        overlay = workdir / "test_config.yaml"
        overlay.write_text(yaml.safe_dump(config))
        configfiles.append(str(overlay))
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        *configfiles,
        "--cores",
        "2",
        *args,
    ]


def run_snakemake(
    workdir: Path, *args: str, config: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run the real workflow in ``workdir`` with the demo config plus ``config`` on top."""
    return subprocess.run(
        snakemake_command(workdir, *args, config=config),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**local_snakemake_env(), "PYTHONUNBUFFERED": "1"},
        check=False,
    )


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table (rule -> number of jobs) in ``output``; {} if none."""
    if "Job stats:\n" not in output:
        return {}
    table = output.split("Job stats:\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.splitlines()[2:]]  # after the header and rule
    return {rule: int(count) for rule, count in rows if rule != "total"}


def dry_run(workdir: Path, config: dict, *args: str) -> str:
    """The output of ``snakemake -n``, which must succeed."""
    result = run_snakemake(workdir, "-n", *args, config=config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def planned_jobs(workdir: Path, config: dict, group: str | None = None, *args: str) -> dict:
    """Rule -> jobs a dry run plans; with ``group``, checks that no other group's job is planned."""
    output = dry_run(workdir, config, *args)
    if group is not None:
        groups = set(re.findall(r"\bgroup=([A-Za-z0-9]+)", output))
        assert groups <= {group}, f"jobs of other groups planned: {groups - {group}}"
    return job_counts(output)


def write_table(
    folder: Path,
    participants: list[tuple[str, str, int]],
    shape=(16, 16, 16),
    name: str = "data.tsv",
    seed: int = 0,
) -> Path:
    """A TSV with .npy images: ``participants`` is (participant_id, label, n_sessions)."""
    rng = np.random.default_rng(seed)
    rows = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for participant, label, n_sessions in participants:
        for s in range(n_sessions):
            session = f"ses-M{12 * s:03d}"
            image = folder / "images" / f"{participant}_{session}.npy"
            offset = 1.0 if label == "AD" else 0.0
            np.save(image, (rng.normal(size=shape) + offset).astype(np.float32))
            rows.append(
                {
                    "participant_id": participant,
                    "session_id": session,
                    "label": label,
                    "age": 70 + s,
                    "image": f"images/{image.name}",
                }
            )
    path = folder / name
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def cohort(prefix: str, n_per_class: int, sessions: int = 2) -> list[tuple[str, str, int]]:
    return [
        (f"sub-{prefix}{label}{i:03d}", label, sessions)
        for label in ("AD", "CN")
        for i in range(n_per_class)
    ]


@pytest.fixture
def tiny_config() -> dict:
    import copy

    return copy.deepcopy(TINY)


# ClinicaDL 2.0's own MAPS reader, in a virtual environment of its own -----------------------

CLINICADL = "clinicadl==2.0.0"
READ_MAPS = ROOT / "tests" / "clinicadl" / "read_maps.py"


@pytest.fixture(scope="session")
def clinicadl_reader(tmp_path_factory):
    """A function that opens a MAPS with ClinicaDL 2.0's ``Maps`` and walks all it exposes.

    ClinicaDL is installed from PyPI without its dependencies into a virtual environment that
    sees this interpreter's packages: its reader needs only torch, pandas, numpy and tqdm,
    and its full dependency set (MONAI, TorchIO < 0.21, pydantic, ...) would fight ours.
    Returns the reader's summary (splits, models per split, test groups, files opened).
    """
    import json

    venv = tmp_path_factory.mktemp("clinicadl") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", CLINICADL],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, f"pip install {CLINICADL} failed:\n{install.stderr[-3000:]}"

    def read(maps_dir: Path, fails: bool = False) -> dict | str:
        """The summary; with ``fails``, assert that ClinicaDL refuses and give its error."""
        result = subprocess.run(
            [str(python), str(READ_MAPS), str(maps_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        if fails:
            assert result.returncode != 0, f"ClinicaDL 2.0 read {maps_dir}"
            return result.stderr
        assert result.returncode == 0, f"ClinicaDL 2.0 could not read {maps_dir}:\n{result.stderr}"
        return json.loads(result.stdout)

    return read
