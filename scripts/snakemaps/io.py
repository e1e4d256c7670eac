"""Crash-safe file writing.

Every file is written to a temporary name in its own directory, flushed,
fsynced and renamed into place with ``os.replace``: a killed writer leaves
either the old file or the new one, never a partial one. Files that
concurrent jobs share are updated under a ``filelock.FileLock`` kept next to
them (``.<file>.lock``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

LOCK_TIMEOUT_S = 600


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file (0o666 less the umask); mkstemp's is 0o600."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, writer: Callable[[IO[bytes]], None], fsync: bool = True) -> Path:
    """Write ``path`` atomically; ``writer`` receives a binary file object."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _new_file_mode())
            writer(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if fsync:
        _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), fsync=fsync)


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def write_durable(path: Path, data: bytes) -> None:
    """Write and fsync a new file inside a directory that is published by a rename."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def json_text(obj: Any) -> str:
    """JSON as ClinicaDL writes it: ``indent=4``, a trailing newline."""
    return json.dumps(obj, indent=4, default=_json_default) + "\n"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json_text(obj))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def tsv_text(frame: Any) -> str:
    """A pandas DataFrame as a MAPS TSV: tab-separated, header, no index."""
    buffer = io.StringIO()
    frame.to_csv(buffer, sep="\t", index=False)
    return buffer.getvalue()


def write_tsv(path: str | Path, frame: Any) -> Path:
    return atomic_write_text(path, tsv_text(frame))


def read_tsv(path: str | Path) -> Any:
    import pandas as pd

    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])


def torch_save(path: str | Path, obj: Any, fsync: bool = True) -> Path:
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle), fsync=fsync)


def lock_path(path: str | Path) -> Path:
    """The hidden lock file beside ``path`` (``.<name>.lock``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def locked(path: str | Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the lock that guards ``path`` (a sibling ``<name>.lock`` file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path(path), timeout=timeout):
        yield


def append_text_locked(path: str | Path, text: str) -> Path:
    """Append ``text`` to a file shared by concurrent jobs.

    The whole file is rewritten atomically under its lock, so readers never
    see a torn line and no writer loses another's line.
    """
    path = Path(path)
    with locked(path):
        old = path.read_bytes() if path.exists() else b""
        atomic_write_bytes(path, old + text.encode("utf-8"))
    return path


def replace_link(source: str | Path, target: str | Path) -> Path:
    """Make ``target`` a hard link to ``source`` atomically (copy if links fail)."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        atomic_write_bytes(tmp, source.read_bytes())
    os.replace(tmp, target)
    return target
