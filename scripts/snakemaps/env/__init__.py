"""Environment snapshot: ``env/environment.txt`` (pip freeze), conda exports, lock file, system facts."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .. import io
from ..errors import UserError
from ..maps import Env, Maps

logger = logging.getLogger("snakemaps.env")

# Lock files a project may have at its root; the snapshot copies those it finds.
LOCK_FILES = ("requirements.lock", "uv.lock", "poetry.lock", "pixi.lock", "conda-lock.yml")
# Files the snapshot writes itself, which a lock file's copy must not replace.
SNAPSHOT_FILES = ("environment.txt", "environment.yml", "environment_portable.yml", "system.json")
# The format page's portable export: versions without build strings or channels.
PORTABLE_FLAGS = ("--no-builds", "--ignore-channels")
CONDA_TIMEOUT_S = 300


def pip_freeze() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True
    )
    return result.stdout


def header(target: Path) -> str:
    return (
        "\n".join(
            [
                "# snakemaps environment snapshot",
                f"# timestamp: {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}",
                f"# python_version: {platform.python_version()}",
                f"# python_implementation: {platform.python_implementation()}",
                f"# executable: {sys.executable}",
                f"# platform: {platform.platform()}",
                f"# machine: {platform.machine()}",
                f"# processor: {platform.processor() or platform.machine()}",
                f"# recreate with: pip install -r {target}",
            ]
        )
        + "\n\n"
    )


def system_facts() -> dict[str, Any]:
    """GPU, driver, CUDA and cuDNN facts (nvidia-smi when present)."""
    facts: dict[str, Any] = {"hostname": platform.node(), "cpu_count": os.cpu_count()}
    try:
        import torch

        facts.update(
            torch=torch.__version__,
            cuda=torch.version.cuda,
            cuda_available=torch.cuda.is_available(),
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        )
        if torch.cuda.is_available():
            facts["gpus"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
    except ImportError:
        facts["torch"] = None
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        facts["nvidia_smi"] = out.stdout.strip().splitlines()
    return facts


def packages(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return dict(line.split("==", 1) if "==" in line else (line, "") for line in lines)


def diff_packages(old: dict[str, str], new: dict[str, str]) -> list[str]:
    changes = [
        f"{name}: {old[name]} -> {new[name]}"
        for name in sorted(old.keys() & new.keys())
        if old[name] != new[name]
    ]
    changes += [f"{name} removed" for name in sorted(old.keys() - new.keys())]
    changes += [f"{name} added ({new[name]})" for name in sorted(new.keys() - old.keys())]
    return changes


def installed_packages() -> dict[str, str]:
    """Installed distributions and versions (fast: importlib.metadata, no pip)."""
    from importlib import metadata

    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name.lower().replace("_", "-")] = dist.version
    return found


def recorded_changes(environment_txt: str | Path) -> list[str]:
    """How the running environment differs from a recorded ``environment.txt``."""
    path = Path(environment_txt)
    if not path.exists():
        return []
    recorded = {
        name.lower().replace("_", "-"): version
        for name, version in packages(path.read_text()).items()
        if version and " @ " not in name
    }
    current = installed_packages()
    return diff_packages(recorded, {k: v for k, v in current.items() if k in recorded}) + [
        f"{name} added ({current[name]})"
        for name in sorted(current.keys() - recorded.keys())
        if name != "snakemaps"
    ]


def warn_if_changed(environment_txt: str | Path) -> list[str]:
    """Log a warning naming what changed since the MAPS's environment was recorded."""
    changes = recorded_changes(environment_txt)
    if changes:
        logger.warning(
            "the environment differs from the one recorded in %s: %s",
            environment_txt,
            "; ".join(changes[:20]) + (" ..." if len(changes) > 20 else ""),
        )
    return changes


def project_lock_files(project_dir: str | Path) -> list[Path]:
    """The lock files (``LOCK_FILES``) that the project in ``project_dir`` has."""
    root = Path(project_dir)
    return [root / name for name in LOCK_FILES if (root / name).is_file()]


def copy_lock_files(env_dir: Path, lock_files: Iterable[str | Path]) -> list[Path]:
    """Copy each lock file into ``env_dir`` under its own name; drop copies the project no longer has."""
    copies = []
    for source in map(Path, lock_files):
        if source.name in SNAPSHOT_FILES:
            raise UserError(
                f"{source}: a lock file may not be named {source.name}, a file the snapshot "
                "itself writes; rename it."
            )
        try:
            data = source.read_bytes()
        except OSError as error:
            raise UserError(
                f"{source}: cannot read the project's lock file ({error.strerror}); "
                "restore it or remove it from the project."
            ) from None
        copies.append(io.atomic_write_bytes(env_dir / source.name, data))
    names = {copy.name for copy in copies}
    for name in LOCK_FILES:
        stale = env_dir / name
        if name not in names and stale.is_file():
            stale.unlink()
            logger.info("removed %s: the project no longer has %s", stale, name)
    return copies


def conda_executable() -> str | None:
    """The conda that manages the running environment: ``$CONDA_EXE``, else ``conda`` on PATH."""
    exe = os.environ.get("CONDA_EXE")
    if exe and os.path.isfile(exe) and os.access(exe, os.X_OK):
        return exe
    return shutil.which("conda")


def conda_export(conda: str, prefix: str, *flags: str) -> str | None:
    """``conda env export -p <prefix> <flags>``; None, with a warning, when it fails."""
    command = [conda, "env", "export", "-p", prefix, *flags]
    shown = " ".join(command)
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=CONDA_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.warning("%s failed: %s", shown, error)
        return None
    if out.returncode != 0:
        message = out.stderr.strip()[-2000:] or "(nothing on stderr)"
        logger.warning("%s exited with status %d: %s", shown, out.returncode, message)
        return None
    try:
        exported = yaml.safe_load(out.stdout)
    except yaml.YAMLError as error:
        logger.warning("%s printed no valid YAML: %s", shown, error)
        return None
    if not isinstance(exported, dict) or "dependencies" not in exported:
        logger.warning("%s printed no environment (no dependencies list)", shown)
        return None
    return out.stdout


def conda_exports(env: Env) -> list[Path]:
    """``environment.yml`` and ``environment_portable.yml`` when running inside conda.

    A conda that is missing or fails leaves a warning in the log and no export
    (never a stale one from an earlier snapshot): the rest of the snapshot
    stands without it.
    """
    targets = {env.environment_yml: (), env.environment_portable_yml: PORTABLE_FLAGS}
    written = []
    prefix = os.environ.get("CONDA_PREFIX")
    if prefix:
        conda = conda_executable()
        if conda is None:
            logger.warning(
                "CONDA_PREFIX is %s but no conda executable was found ($CONDA_EXE, PATH): "
                "env/ gets no conda export",
                prefix,
            )
        else:
            for path, flags in targets.items():
                text = conda_export(conda, prefix, *flags)
                if text is not None:
                    written.append(io.atomic_write_text(path, text))
    for path in targets:
        if path not in written and path.is_file():
            path.unlink()
            logger.info("removed %s: it described an earlier environment", path)
    return written


def snapshot(maps_dir: str | Path, lock_files: Iterable[str | Path] = ()) -> Path:
    """Write the MAPS's ``env/``; warn with the differences if an earlier snapshot differs.

    ``lock_files`` are the project's lock files (``project_lock_files``),
    copied into ``env/`` under their own names.
    """
    env = Maps(maps_dir).env
    freeze = pip_freeze()
    target = env.environment_txt
    warn_if_changed(target)
    io.atomic_write_text(target, header(target) + freeze)
    conda_exports(env)
    copy_lock_files(env.path, lock_files)
    io.atomic_write_text(env.system_json, json.dumps(system_facts(), indent=4) + "\n")
    logger.info("environment snapshot written to %s", env.path)
    return target
