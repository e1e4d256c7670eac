"""Open a MAPS with ClinicaDL 2.0's own reader and walk everything it exposes.

Run with an interpreter where ``clinicadl`` 2.0 is installed (tests/test_clinicadl_reader.py
makes one). Prints a JSON summary: the splits, checkpoints and test groups ClinicaDL sees,
and every JSON/TSV/PT file it exposes, each opened with ``Maps.open_file``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clinicadl.io.base import Directory
from clinicadl.io.maps import Maps

OPENED = {".json", ".tsv", ".pt", ".txt", ".log"}


def _children(obj: Directory):
    for klass in type(obj).__mro__:
        for name, member in vars(klass).items():
            if isinstance(member, property) and not name.startswith("_"):
                yield name


def walk(obj, where: str, seen: dict) -> None:
    if isinstance(obj, Directory):
        if not obj.path.exists() or str(obj.path) in seen["dirs"]:
            return
        seen["dirs"].append(str(obj.path))
        for name in dict.fromkeys(_children(obj)):
            walk(getattr(obj, name), f"{where}.{name}", seen)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            walk(value, f"{where}[{key!r}]", seen)
    elif isinstance(obj, Path) and obj.is_file() and obj.suffix in OPENED:
        Maps.open_file(obj)  # raises if ClinicaDL cannot parse it
        seen["files"].append(str(obj))


def main(path: str) -> None:
    maps = Maps(path)
    maps.read()  # checks every mandatory file and folder
    seen: dict = {"dirs": [], "files": []}
    walk(maps, "maps", seen)
    training = maps.training
    summary = {
        "splits": sorted(training.splits_list),
        "models": {
            str(k): sorted(split.models.get_all_models()) for k, split in training.splits.items()
        },
        "test_groups": sorted(maps.test.groups_list) if maps.test.path.exists() else [],
        "files": sorted(Path(f).relative_to(maps.path).as_posix() for f in seen["files"]),
    }
    for split, models in summary["models"].items():  # ClinicaDL's own name lookup
        for name in models:
            training.get_checkpoint_dir(f"split-{split}_{name}").read()
    json.dump(summary, sys.stdout, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
