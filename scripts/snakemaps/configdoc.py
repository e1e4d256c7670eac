"""The README's configuration table, generated from ``config/config.schema.yaml``.

``python -m snakemaps.configdoc`` prints it; a test checks the README holds it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "config.schema.yaml"


def rows(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, str, str]]:
    found = []
    for key, spec in schema.get("properties", {}).items():
        name = f"{prefix}{key}"
        if spec.get("type") == "object" and "properties" in spec:
            found += rows(spec, name + ".")
        else:
            default = json.dumps(spec.get("default"))
            found.append((name, default, " ".join(spec.get("description", "").split())))
    return found


def table(schema_path: Path = SCHEMA) -> str:
    schema = yaml.safe_load(schema_path.read_text())
    lines = ["| key | default | description |", "|---|---|---|"]
    lines += [f"| `{k}` | `{d}` | {text} |" for k, d, text in rows(schema)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
