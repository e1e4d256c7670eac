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
from pathlib import Path
from typing import Any

from .. import io
from ..maps import Maps

logger = logging.getLogger("snakemaps.env")

LOCK_FILES = ("requirements.lock", "uv.lock", "poetry.lock", "pixi.lock", "conda-lock.yml")


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


def snapshot(maps_dir: str | Path, project_dir: str | Path = ".") -> Path:
    """Write the MAPS's ``env/``; warn with the differences if an earlier snapshot differs."""
    env = Maps(maps_dir).env
    freeze = pip_freeze()
    target = env.environment_txt
    warn_if_changed(target)
    io.atomic_write_text(target, header(target) + freeze)
    if os.environ.get("CONDA_PREFIX") and shutil.which("conda"):
        for path, extra in (
            (env.environment_yml, []),
            (env.environment_portable_yml, ["--no-builds", "--ignore-channels"]),
        ):
            out = subprocess.run(
                ["conda", "env", "export", *extra], capture_output=True, text=True, check=False
            )
            if out.returncode == 0:
                io.atomic_write_text(path, out.stdout)
    for name in LOCK_FILES:
        lock = Path(project_dir) / name
        if lock.is_file():
            io.atomic_write_bytes(env.path / name, lock.read_bytes())
    io.atomic_write_text(env.system_json, json.dumps(system_facts(), indent=4) + "\n")
    logger.info("environment snapshot written to %s", env.path)
    return target
