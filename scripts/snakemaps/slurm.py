"""Requests that SLURM can never start, found before anything is submitted.

A job that asks for more CPUs, memory or GPUs than any node of its partition
has, or for a partition or GPU type the cluster does not have, would sit
``PENDING`` for ever (reason ``PartitionConfig``, ``Resources`` or
``BadConstraints``) while Snakemake waits in silence. Before the first
submission, the workflow asks SLURM itself (``sinfo``) what each partition's
nodes offer and compares every job's request with it; a request that no node
can serve stops the run with a message naming the rule, what it asked for,
what the partition's largest node offers, and the profile key to change.

Torch-free; the workflow calls it from its ``onstart`` handler.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PROFILE = "profiles/slurm/config.yaml"
SINFO = ["sinfo", "--noheader", "--Node", "--format=%P|%N|%c|%m|%G"]


@dataclass(frozen=True)
class Node:
    """One node of one partition, as ``sinfo`` reports it."""

    name: str
    cpus: int
    mem_mb: int
    gpus: Mapping[str, int] = field(default_factory=dict)  # GPU type ("" if untyped) -> count

    @property
    def gpu_count(self) -> int:
        return sum(self.gpus.values())


@dataclass(frozen=True)
class Request:
    """What one job asks SLURM for (as the executor plugin turns resources into sbatch)."""

    rule: str
    wildcards: str
    cpus: int
    mem_mb: int | None
    gpus: int
    gpu_model: str | None
    partition: str | None


def parse_gres(gres: str) -> dict[str, int]:
    """``gpu:a100:4(S:0-1),gpu:2`` -> ``{"a100": 4, "": 2}``; other GRES are ignored."""
    found: dict[str, int] = {}
    for item in gres.split(","):
        item = re.sub(r"\(.*?\)", "", item.strip())
        parts = item.split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        kind, count = (parts[1], parts[2]) if len(parts) >= 3 else ("", parts[1])
        if count.isdigit():
            found[kind] = found.get(kind, 0) + int(count)
    return found


def parse_sinfo(text: str) -> tuple[dict[str, list[Node]], str | None]:
    """Partition -> its nodes, and the default partition, from ``SINFO``'s output."""
    partitions: dict[str, list[Node]] = {}
    default = None
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        partition, name, cpus, mem, gres = fields
        if partition.endswith("*"):
            partition = partition[:-1]
            default = partition
        memory = int(re.sub(r"\D.*", "", mem) or 0)
        node = Node(name, int(re.sub(r"\D.*", "", cpus) or 0), memory, parse_gres(gres))
        partitions.setdefault(partition, []).append(node)
    return partitions, default


def query_partitions() -> tuple[dict[str, list[Node]], str | None]:
    """``parse_sinfo`` of the live cluster (raises OSError when sinfo cannot run)."""
    out = subprocess.run(SINFO, capture_output=True, text=True, timeout=60, check=True)
    return parse_sinfo(out.stdout)


def fits(request: Request, node: Node) -> bool:
    if request.cpus > node.cpus or (request.mem_mb or 0) > node.mem_mb:
        return False
    if request.gpus:
        have = node.gpus.get(request.gpu_model, 0) if request.gpu_model else node.gpu_count
        return have >= request.gpus
    return True


def _asked(request: Request) -> str:
    asked = [f"{request.cpus} CPU{'s' * (request.cpus != 1)}"]
    if request.mem_mb:
        asked.append(f"{request.mem_mb} MB of memory")
    if request.gpus:
        model = f" {request.gpu_model}" if request.gpu_model else ""
        asked.append(f"{request.gpus}{model} GPU{'s' * (request.gpus != 1)}")
    return ", ".join(asked)


def _offers(nodes: list[Node]) -> str:
    largest = max(nodes, key=lambda n: (n.cpus, n.mem_mb, n.gpu_count))
    gpus = ", ".join(f"{count} {kind or 'untyped'}" for kind, count in largest.gpus.items())
    return f"its largest node ({largest.name}) has {largest.cpus} CPUs, {largest.mem_mb} MB" + (
        f" and GPUs: {gpus}" if gpus else " and no GPU"
    )


def _keys(request: Request, node_max: Node) -> str:
    keys = []
    if request.cpus > node_max.cpus:
        keys.append(f"set-threads: {request.rule} (CPUs per job)")
    if (request.mem_mb or 0) > node_max.mem_mb:
        keys.append(f"set-resources: {request.rule}: mem_mb")
    if request.gpus:
        keys.append(f"set-resources: {request.rule}: gpu / gpu_model")
    keys = keys or [f"set-resources: {request.rule}"]
    return " and ".join(f"`{key}`" for key in keys)


def impossible(
    requests: Iterable[Request], partitions: Mapping[str, list[Node]], default: str | None
) -> list[str]:
    """One message per distinct request that no node of its partition can ever serve."""
    messages, seen = [], set()
    for request in requests:
        partition = request.partition or default
        key = (
            request.rule,
            request.cpus,
            request.mem_mb,
            request.gpus,
            request.gpu_model,
            partition,
        )
        if key in seen:
            continue
        seen.add(key)
        where = (
            f"rule {request.rule} ({request.wildcards})"
            if request.wildcards
            else (f"rule {request.rule}")
        )
        if partition not in partitions:
            known = ", ".join(sorted(partitions)) or "none"
            messages.append(
                f"{where} asks for SLURM partition {partition!r}, which this cluster does not "
                f"have (sinfo lists: {known}). Set SNAKEMAPS_SLURM_PARTITION or "
                f"`default-resources: slurm_partition` in {PROFILE} to one of them."
            )
            continue
        nodes = partitions[partition]
        if any(fits(request, node) for node in nodes):
            continue
        if request.gpu_model and not any(request.gpu_model in n.gpus for n in nodes):
            kinds = sorted({k for n in nodes for k in n.gpus if k}) or ["none"]
            messages.append(
                f"{where} asks for GPU type {request.gpu_model!r}, which no node of partition "
                f"{partition!r} has (GPU types there: {', '.join(kinds)}). Change "
                f"`set-resources: {request.rule}: gpu_model` in {PROFILE}, or choose a "
                "partition that has it."
            )
            continue
        node_max = Node(
            "max",
            max(n.cpus for n in nodes),
            max(n.mem_mb for n in nodes),
            {"": max(n.gpu_count for n in nodes)},
        )
        messages.append(
            f"{where} asks SLURM for {_asked(request)} on one node of partition "
            f"{partition!r}, but {_offers(nodes)}: SLURM would leave it pending for ever. "
            f"Lower {_keys(request, node_max)} in {PROFILE} (or on the command line), or "
            "choose a partition with bigger nodes."
        )
    return messages


def profile_partition(default_resources: Iterable[str]) -> str | None:
    """The partition in ``--default-resources`` (``slurm_partition='gpu'``), if a literal."""
    for arg in default_resources:
        name, _, value = arg.partition("=")
        if name == "slurm_partition":
            try:
                partition = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return None
            return partition if isinstance(partition, str) and partition else None
    return None


def _known(value: Any) -> Any:
    """``value``, or None when Snakemake has not evaluated it yet (its ``<TBD>``)."""
    return None if type(value).__name__ == "TBDString" or value == "<TBD>" else value


def request_of(job: Any, default_partition: str | None = None) -> Request:
    """The request of a Snakemake job, read as the SLURM executor plugin reads it.

    ``default_partition``: the partition of ``--default-resources``, for a job
    whose default resources Snakemake has not evaluated yet.
    """
    resources = {key: _known(value) for key, value in job.resources.items()}
    cpus = resources.get("cpus_per_task") or job.threads
    mem_mb = resources.get("mem_mb")
    per_cpu = resources.get("mem_mb_per_cpu")
    if not mem_mb and per_cpu:
        mem_mb = per_cpu * cpus
    gpus = resources.get("gpu") or resources.get("gpus") or 0
    wildcards = ", ".join(f"{k}={v}" for k, v in job.wildcards_dict.items())
    return Request(
        rule=job.rule.name,
        wildcards=wildcards,
        cpus=int(cpus),
        mem_mb=int(mem_mb) if isinstance(mem_mb, (int, float)) and mem_mb else None,
        gpus=int(gpus) if isinstance(gpus, (int, float)) else 0,
        gpu_model=resources.get("gpu_model") or None,
        partition=resources.get("slurm_partition") or default_partition,
    )
