"""The environment: the lock file, envs/, and the snapshot rule's env/ folder."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import ROOT, TINY, local_snakemake_env
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from snakemaps.env import project_lock_files, snapshot
from snakemaps.errors import UserError
from snakemaps.maps import Maps

LOCK = ROOT / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CONDA_ENV = yaml.safe_load((ROOT / "envs" / "snakemaps.yaml").read_text())


@functools.cache
def lock_pins() -> dict[str, Version]:
    """Package -> pinned version; any line but ``name==version [; marker]`` fails."""
    pins = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)(\s*;.*)?", line)
        assert match, f"requirements.lock:{number}: not a name==version pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"requirements.lock:{number}: {name} pinned twice"
        pins[name] = Version(match[2])
    return pins


def direct_requirements() -> list[Requirement]:
    extras = PYPROJECT["optional-dependencies"]
    listed = PYPROJECT["dependencies"] + extras["test"] + extras["slurm"] + extras["tracking"]
    return [Requirement(r) for r in listed]


def test_lock_pins_every_direct_dependency_within_its_range():
    pins = lock_pins()
    problems = []
    for requirement in direct_requirements():
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement.name} is not in requirements.lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(
                f"{requirement.name}=={pins[name]} in requirements.lock is outside "
                f"pyproject.toml's {requirement.specifier}"
            )
    assert not problems, "; ".join(problems) + ". Regenerate it (README: The environment)."


def test_lock_installs_from_pypi_only():
    # lock_pins() also fails on option lines (--index-url, --find-links) and URLs.
    # Local version labels (+cpu, +cu130) exist only on PyTorch's own indexes.
    assert not {name: str(v) for name, v in lock_pins().items() if v.local}


def test_lock_header_command_is_the_readme_regenerate_command():
    command = LOCK.read_text().splitlines()[1].removeprefix("#").strip()
    assert command.startswith("uv pip compile pyproject.toml")
    assert f"```bash\n{command}\n```" in (ROOT / "README.md").read_text()


def conda_env_pins() -> dict[str, str]:
    pip = next(d["pip"] for d in CONDA_ENV["dependencies"] if isinstance(d, dict))
    pins = {}
    for line in pip:
        name, _, version = line.partition("==")
        assert version, f"envs/snakemaps.yaml: {line!r} is not pinned with =="
        pins[canonicalize_name(name)] = version
    return pins


def test_conda_env_pins_the_lock_files_versions():
    pins = lock_pins()
    wrong = {
        name: (version, str(pins.get(name)))
        for name, version in conda_env_pins().items()
        if pins.get(name) != Version(version)
    }
    assert not wrong, f"envs/snakemaps.yaml pins differ from requirements.lock: {wrong}"


def test_conda_env_has_every_runtime_dependency_and_the_locked_python():
    # Jobs import snakemaps, never snakemake itself: the env needs every other one, and
    # the tracking extra, which a train job imports when tracking.mlflow is on.
    jobs = PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["tracking"]
    runtime = {canonicalize_name(Requirement(r).name) for r in jobs}
    assert set(conda_env_pins()) == runtime - {"snakemake"}
    python = re.search(r"--python-version (\S+)", LOCK.read_text().splitlines()[1])[1]
    assert f"python={python}" in CONDA_ENV["dependencies"]


def test_project_lock_files_are_the_known_names_that_are_files(tmp_path):
    for name in ("uv.lock", "poetry.lock", "other.lock"):
        (tmp_path / name).write_text(name)
    (tmp_path / "pixi.lock").mkdir()
    assert project_lock_files(tmp_path) == [tmp_path / "uv.lock", tmp_path / "poetry.lock"]
    assert LOCK in project_lock_files(ROOT)


@pytest.fixture
def no_conda(monkeypatch):
    for name in ("CONDA_PREFIX", "CONDA_EXE"):
        monkeypatch.delenv(name, raising=False)


def test_snapshot_copies_the_lock_file_and_drops_one_the_project_no_longer_has(tmp_path, no_conda):
    project, maps = tmp_path / "project", tmp_path / "maps"
    project.mkdir()
    (project / "requirements.lock").write_text("numpy==2.4.6\n")
    snapshot(maps, lock_files=project_lock_files(project))
    env = Maps(maps).env
    assert (env.path / "requirements.lock").read_text() == "numpy==2.4.6\n"
    assert env.environment_txt.read_text().startswith("# snakemaps environment snapshot")
    assert "torch" in json.loads(env.system_json.read_text())

    (project / "requirements.lock").unlink()
    (project / "uv.lock").write_text("version = 1\n")
    snapshot(maps, lock_files=project_lock_files(project))
    assert sorted(p.name for p in env.path.iterdir()) == [
        "environment.txt",
        "system.json",
        "uv.lock",
    ]


def test_unreadable_or_clashing_lock_file_is_an_error_naming_it(tmp_path, no_conda):
    missing = tmp_path / "gone" / "requirements.lock"
    with pytest.raises(UserError, match=re.escape(str(missing))):
        snapshot(tmp_path / "maps", lock_files=[missing])
    clash = tmp_path / "system.json"
    clash.write_text("{}")
    with pytest.raises(UserError, match=re.escape(f"{clash}: a lock file may not be named")):
        snapshot(tmp_path / "maps", lock_files=[clash])


FULL_EXPORT = "name: demo\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11.7=h1\n"
PORTABLE_EXPORT = "name: demo\ndependencies:\n  - python=3.11.7\n"


def fake_conda(folder: Path, body: str) -> Path:
    """An executable ``conda`` that appends its arguments to ``argv.txt``, then runs ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "conda"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{folder / "argv.txt"}"\n{body}\n')
    script.chmod(0o755)
    return script


EXPORTS = f"""case "$*" in
  *--no-builds*) printf '%s' '{PORTABLE_EXPORT}' ;;
  *) printf '%s' '{FULL_EXPORT}' ;;
esac"""


@pytest.fixture
def conda_prefix(tmp_path, monkeypatch):
    prefix = tmp_path / "envs" / "demo"
    prefix.mkdir(parents=True)
    monkeypatch.setenv("CONDA_PREFIX", str(prefix))
    monkeypatch.delenv("CONDA_EXE", raising=False)
    return prefix


def test_conda_exports_with_conda_on_path(tmp_path, monkeypatch, conda_prefix):
    conda = fake_conda(tmp_path / "bin", EXPORTS)
    monkeypatch.setenv("PATH", f"{conda.parent}{os.pathsep}{os.environ['PATH']}")
    snapshot(tmp_path / "maps")
    env = Maps(tmp_path / "maps").env
    assert env.environment_yml.read_text() == FULL_EXPORT
    assert env.environment_portable_yml.read_text() == PORTABLE_EXPORT
    assert (conda.parent / "argv.txt").read_text().splitlines() == [
        f"env export -p {conda_prefix}",
        f"env export -p {conda_prefix} --no-builds --ignore-channels",
    ]


def test_conda_exe_is_used_when_conda_is_not_on_path(tmp_path, monkeypatch, conda_prefix):
    conda = fake_conda(tmp_path / "miniforge" / "bin", EXPORTS)
    monkeypatch.setenv("CONDA_EXE", str(conda))
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    assert shutil.which("conda") is None
    snapshot(tmp_path / "maps")
    assert Maps(tmp_path / "maps").env.environment_yml.read_text() == FULL_EXPORT
    assert len((conda.parent / "argv.txt").read_text().splitlines()) == 2


def test_no_conda_export_outside_conda(tmp_path, monkeypatch, no_conda):
    conda = fake_conda(tmp_path / "bin", EXPORTS)
    monkeypatch.setenv("PATH", f"{conda.parent}{os.pathsep}{os.environ['PATH']}")
    snapshot(tmp_path / "maps")
    assert not Maps(tmp_path / "maps").env.environment_yml.exists()
    assert not (conda.parent / "argv.txt").exists()


@pytest.mark.parametrize(
    ("body", "warning"),
    [
        ("echo 'CondaError: boom' >&2; exit 1", "exited with status 1: CondaError: boom"),
        ("echo 'dependencies: [unclosed'", "printed no valid YAML"),
        ("echo 'just a line'", "printed no environment"),
    ],
)
def test_failing_conda_warns_and_leaves_a_complete_snapshot(
    tmp_path, monkeypatch, caplog, conda_prefix, body, warning
):
    env = Maps(tmp_path / "maps").env
    env.path.mkdir(parents=True)
    env.environment_yml.write_text("name: an-earlier-environment\n")
    fake_conda(tmp_path / "bin", body)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with caplog.at_level(logging.WARNING, logger="snakemaps.env"):
        snapshot(tmp_path / "maps")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(warning in w for w in warnings), warnings
    assert f"env export -p {conda_prefix}" in warnings[0]
    # Complete, with no stale export and no temporary file left behind.
    assert sorted(p.name for p in env.path.iterdir()) == ["environment.txt", "system.json"]
    assert env.environment_txt.read_text().startswith("# snakemaps environment snapshot")


def test_conda_prefix_without_a_conda_executable_warns(tmp_path, monkeypatch, caplog, conda_prefix):
    monkeypatch.setenv("CONDA_EXE", str(tmp_path / "missing" / "conda"))
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    with caplog.at_level(logging.WARNING, logger="snakemaps.env"):
        snapshot(tmp_path / "maps")
    assert f"CONDA_PREFIX is {conda_prefix} but no conda executable" in caplog.text
    assert Maps(tmp_path / "maps").env.system_json.is_file()


WORKFLOW_FILES = ("Snakefile", "workflow", "scripts", "config", "envs")


def snakemake_env_rule(workflow: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``workflow``'s environment rule alone, on the tiny demo config."""
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "test_config.yaml"
    overlay.write_text(yaml.safe_dump(TINY))
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(workflow / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workflow / "config" / "config.yaml"),
        str(overlay),
        "--cores",
        "1",
        *args,
        "results/maps/env/environment.txt",
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env=local_snakemake_env(),
        check=False,
    )


@pytest.mark.workflow
def test_environment_rule_copies_the_lock_file_and_reruns_when_it_changes(
    tmp_path, monkeypatch, conda_prefix
):
    workflow, workdir = tmp_path / "project", tmp_path / "run"
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, workflow / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            workflow.mkdir(exist_ok=True)
            shutil.copy2(source, workflow / name)
    lock = workflow / "requirements.lock"
    shutil.copy2(LOCK, lock)
    fake_conda(tmp_path / "bin", "echo 'CondaNotFound: no such environment' >&2; exit 1")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")

    result = snakemake_env_rule(workflow, workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    env = Maps(workdir / "results" / "maps").env
    assert (env.path / "requirements.lock").read_bytes() == LOCK.read_bytes()
    assert not env.environment_yml.exists()
    log = (workdir / "logs" / "results" / "maps" / "environment.log").read_text()
    assert "WARNING" in log and "exited with status 1: CondaNotFound" in log

    lock.write_text(lock.read_text() + "# edited\n")
    dry = snakemake_env_rule(workflow, workdir, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-5000:]
    assert "rule environment:" in dry.stdout and str(lock) in dry.stdout, dry.stdout
    result = snakemake_env_rule(workflow, workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    assert (env.path / "requirements.lock").read_text().endswith("# edited\n")
