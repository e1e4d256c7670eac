"""The README, CI, schema and linters agree."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml
from conftest import ROOT, local_snakemake_env
from snakemaps import configdoc

README = (ROOT / "README.md").read_text()


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)]


def test_readme_opens_with_demo_and_test_commands():
    demo, tests = bash_blocks(README)[:2]
    assert demo == "pip install -e . && snakemake --cores all"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == tests, ".ci/run must run the README's test command verbatim"


def test_readme_config_table_matches_schema():
    start, end = "<!-- config-table:start -->\n", "<!-- config-table:end -->"
    section = README[README.index(start) + len(start) : README.index(end)].strip()
    assert section == configdoc.table().strip(), "regenerate with python -m snakemaps.configdoc"


def test_every_schema_key_has_description_and_default():
    schema = yaml.safe_load((ROOT / "config" / "config.schema.yaml").read_text())

    def walk(node, path):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, path
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}" if path else key)
        if path:
            assert node.get("description"), f"{path} has no description"
            assert "default" in node, f"{path} has no default"

    walk(schema, "")


def test_demo_config_validates_and_every_key_is_known():
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    validate(config, str(ROOT / "config" / "config.schema.yaml"))
    assert config["train"]["epochs"] >= 1 and config["data"]["tsv"] is None


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env=local_snakemake_env(), check=False
    )


def test_ruff_is_clean():
    result = run(sys.executable, "-m", "ruff", "check", "scripts", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_is_clean():
    result = run(sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow")
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_lint_is_clean():
    result = run(sys.executable, "-m", "snakemake", "--lint", "--cores", "1")
    assert result.returncode == 0, result.stdout + result.stderr
