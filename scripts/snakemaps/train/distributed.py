"""Data-parallel training of one split: torch.distributed, DistributedDataParallel.

``train.distributed.processes`` ranks per node on ``train.distributed.nodes``
nodes train one split together; each rank gets ``train.batch_size`` images
per step (the global batch is that times the world size), its share of every
epoch from a ``DistributedSampler`` (seeded with the split's seed, reshuffled
with ``set_epoch``), and gradients are averaged by DDP: NCCL on CUDA, gloo on
the CPU.

How the ranks start (``launch``), all with PyTorch's or SLURM's own tools:

- one node: the torchrun machinery (``torch.distributed.launcher``, the
  elastic agent torchrun runs) starts ``python -m snakemaps.train.distributed``
  once per rank in this job; it watches them, tears the others down when one
  dies, and passes SIGTERM on to them;
- a SLURM job with several tasks (``SLURM_NTASKS > 1``, the only way to span
  nodes): ``srun --kill-on-bad-exit=1`` starts one rank per task.

Rank 0 alone writes the MAPS (models, logs, checkpoints, provenance); the other
ranks only read it. Validation is sharded without padding: rank ``r`` predicts
a contiguous ``1/world`` of the validation set, the predictions are gathered on
every rank in data order and every rank computes the same metrics from them, so
each image counts once and early stopping and ReduceLROnPlateau decide alike
everywhere. A resume checkpoint holds every rank's random state and its epoch
order; the sampler's epoch and position are the trainer's epoch and batch.

A rank that dies ends the job: the launcher (or ``srun``) stops the others at
once; a rank that hangs makes the others' next collective fail after
``train.distributed.timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError

logger = logging.getLogger("snakemaps.train")

ENTRY = "snakemaps.train.distributed"


def world_size(distributed: Mapping[str, Any]) -> int:
    return int(distributed["processes"]) * int(distributed["nodes"])


class Group:
    """This process's place among the ranks of one training (world size 1: no torch.distributed)."""

    def __init__(self, rank: int = 0, world_size: int = 1, device: Any = None) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device

    @property
    def writer(self) -> bool:
        """Only rank 0 writes into the MAPS."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # Data -------------------------------------------------------------------
    def num_samples(self, n: int) -> int:
        """Training images this rank sees per epoch (the sampler pads to equal shares)."""
        return -(-n // self.world_size)

    def order(self, n: int, epoch: int, seed: int, generator: Any) -> list[int]:
        """This rank's training images of ``epoch``, in order."""
        import torch

        if not self.distributed:
            return torch.randperm(n, generator=generator).tolist()
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(
            range(n), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed
        )
        sampler.set_epoch(epoch)
        return list(sampler)

    def shard(self, n: int) -> list[int] | None:
        """This rank's contiguous share of ``n`` validation images (None: all of them)."""
        if not self.distributed:
            return None
        bounds = [n * r // self.world_size for r in range(self.world_size + 1)]
        return list(range(bounds[self.rank], bounds[self.rank + 1]))

    def gather_predictions(self, arrays: Sequence[Any]) -> tuple[Any, ...]:
        """Concatenate every rank's (indices, labels, outputs, losses) in rank order."""
        if not self.distributed:
            return tuple(arrays)
        import numpy as np

        gathered = self.all_gather(tuple(arrays))
        shares = [share for share in gathered if len(share[0])]  # fewer images than ranks
        return tuple(np.concatenate(parts) for parts in zip(*shares, strict=True))

    # Collectives ------------------------------------------------------------
    def all_gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_batch(self, loss: float, interrupt: int | None) -> tuple[float, int | None]:
        """The mean loss of the step over ranks, and the largest signal any rank caught.

        One collective per batch: every rank then checks divergence and stops
        for a signal at the same batch.
        """
        if not self.distributed:
            return loss, interrupt
        import torch
        import torch.distributed as dist

        mine = torch.tensor([loss, float(interrupt or 0)], dtype=torch.float64, device=self.device)
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(parts, mine)
        values = torch.stack(parts).cpu()
        caught = int(values[:, 1].max())
        return float(values[:, 0].sum()) / self.world_size, caught or None

    def no_sync(self, network: Any, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """DDP's no_sync for the micro-batches of gradient accumulation before the last."""
        if self.distributed and not last_micro_batch and hasattr(network, "no_sync"):
            return network.no_sync()
        return contextlib.nullcontext()

    def wrap(self, network: Any) -> Any:
        if not self.distributed:
            return network
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(network, device_ids=ids)


SINGLE = Group()


def bare(network: Any) -> Any:
    """The network inside DDP and torch.compile wrappers."""
    while True:
        inner = getattr(network, "_orig_mod", None)
        if inner is None and type(network).__name__ == "DistributedDataParallel":
            inner = network.module
        if inner is None:
            return network
        network = inner


def evaluation_network(network: Any) -> Any:
    """What validation runs: the DDP-wrapped module itself (each rank on its own share)."""
    return network.module if type(network).__name__ == "DistributedDataParallel" else network


# Devices ------------------------------------------------------------------------
def check_gpus(device_type: str, processes: int, visible: int) -> None:
    """Refuse, before any rank starts, more CUDA processes per node than visible GPUs."""
    if device_type == "cuda" and processes > visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise UserError(
            f"train.distributed.processes is {processes} but this job sees {visible} GPU(s)"
            + (f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else "")
            + ": one process per GPU. Lower train.distributed.processes, or ask for as many "
            "GPUs (the train rule's `gpu` resource: --resources gpu=N locally, set-resources "
            "train: gpu in profiles/slurm), or set train.device: cpu."
        )


def rank_device(setting: str, local_rank: int) -> Any:
    """This rank's device: its own GPU on CUDA, else the CPU."""
    import torch

    from .runtime import resolve_device

    device = resolve_device(setting)
    if device.type != "cuda":
        return torch.device("cpu")
    visible = torch.cuda.device_count()
    if visible == 1:  # SLURM bound one GPU to this task
        return torch.device("cuda", 0)
    if local_rank >= visible:
        raise UserError(
            f"rank with local rank {local_rank} on {socket.gethostname()} sees {visible} GPU(s); "
            "give every task of the job its own GPU (set-resources train: gpu and tasks_per_gpu: 1 "
            "in profiles/slurm) or lower train.distributed.processes"
        )
    return torch.device("cuda", local_rank)


# Launching ------------------------------------------------------------------------
def launch(
    kwargs: dict[str, Any],
    train: Mapping[str, Any],
    threads: int,
    env: Mapping[str, str],
    log_file: str | None = None,
    target: str = "snakemaps.train:train_rank",
) -> None:
    """Start the ranks of one training and wait for them; raise if any fails.

    Every rank calls ``target(**kwargs, threads=..., group=...)`` (``kwargs``
    must be JSON); ``train`` is the train section (device, distributed);
    ``threads`` are the job's CPU threads. Rank 0 logs to ``log_file`` too.
    """
    distributed = train["distributed"]
    spec = {
        "target": target,
        "kwargs": kwargs,
        "device": train["device"],
        "timeout": int(distributed["timeout"]),
        "log_file": log_file,
    }
    processes, nodes = int(distributed["processes"]), int(distributed["nodes"])
    world = processes * nodes
    # The ranks import this very package (not another installed copy).
    package_root = str(Path(__file__).resolve().parents[2])
    env = {
        **env,
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p),
    }
    job = slurm_job(env)
    tasks = int(job.get("NumTasks", 1))
    if tasks > 1:
        if tasks != world:
            raise UserError(
                f"train.distributed asks for {processes} process(es) on {nodes} node(s) = {world} "
                f"ranks, but this SLURM job has {tasks} tasks. Set the train rule's "
                f"`tasks: {world}` (and `nodes: {nodes}`) in profiles/slurm set-resources."
            )
        spec["kwargs"]["threads"] = int(job.get("CPUs/Task") or threads)
        return _launch_srun(spec, world, nodes, job["NodeList"], env)
    if nodes > 1:
        raise UserError(
            f"train.distributed.nodes is {nodes}: several nodes need a SLURM job with one task "
            f"per rank ({world} tasks). In profiles/slurm set-resources, give the train rule "
            f"`nodes: {nodes}`, `tasks: {world}` and `mpi: \"'srun'\"` (see the README, "
            "Running on a cluster)."
        )
    import torch

    from .runtime import resolve_device

    device = resolve_device(train["device"]).type
    check_gpus(device, processes, torch.cuda.device_count())
    spec["kwargs"]["threads"] = max(1, threads // processes)
    return _launch_local(spec, processes, env)


def _launch_local(spec: dict[str, Any], processes: int, env: Mapping[str, str]) -> None:
    """``processes`` ranks on this node through torchrun's elastic agent, no restarts."""
    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from .runtime import resolve_device

    timeout = spec["timeout"]
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # torchrun --standalone: a free port
        rdzv_configs={"timeout": timeout},
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    cuda = resolve_device(spec["device"]).type == "cuda" and torch.cuda.is_available()
    logger.info(
        "starting %d ranks on this node (torch.distributed, %s)",
        processes,
        "nccl" if cuda else "gloo",
    )
    saved = dict(os.environ)
    os.environ.update(env)  # the agent gives its workers this process's environment
    try:
        elastic_launch(config, sys.executable)("-u", "-m", ENTRY, json.dumps(spec))
    except ChildFailedError as error:
        raise _rank_failure(error) from None
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _rank_failure(error: Any) -> Exception:
    """One clear error from the ranks' failures (a UserError stays one)."""
    lines, user = [], None
    first = error.get_first_failure()[0]
    for rank, failure in sorted(error.failures.items(), key=lambda item: item[0] != first):
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", "")
        if str(message).startswith("To enable traceback"):  # no error file: killed
            message = ""
        cause = message or (
            f"killed by {signal.Signals(-failure.exitcode).name}"
            if failure.exitcode < 0
            else f"exit code {failure.exitcode}"
        )
        lines.append(f"rank {rank}: {cause}")
        if str(message).startswith("UserError: ") and user is None:
            user = str(message).removeprefix("UserError: ")
    if user is not None:
        return UserError(user)
    return RuntimeError("distributed training failed: " + "; ".join(lines))


def slurm_job(env: Mapping[str, str]) -> dict[str, str]:
    """The tasks, CPUs per task and nodes of the SLURM job this process runs in ({} outside).

    SLURM_NTASKS where it is set (a batch script, salloc, a one-task srun step);
    otherwise, in the job of a SLURM executor that hides the allocation's
    variables from the rule (snakemake-executor-plugin-slurm-jobstep),
    ``scontrol show job``.
    """
    if "SLURM_NTASKS" in env:
        return {
            "NumTasks": env["SLURM_NTASKS"],
            "CPUs/Task": env.get("SLURM_CPUS_PER_TASK", ""),
            "NodeList": env.get("SLURM_JOB_NODELIST", ""),
        }
    if "SLURM_JOB_ID" not in env:
        return {}
    shown = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", env["SLURM_JOB_ID"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", shown))


def _launch_srun(
    spec: dict[str, Any], world: int, nodes: int, nodelist: str, env: Mapping[str, str]
) -> None:
    """One rank per task of this SLURM job; srun kills all tasks when one fails."""
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    master = hosts[0] if hosts else socket.gethostname()
    with socket.socket() as probe:  # a free port on this node, where task 0 runs
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    command = [
        "srun",
        "--kill-on-bad-exit=1",
        f"--ntasks={world}",
        f"--nodes={nodes}",
        f"--cpus-per-task={spec['kwargs']['threads']}",
        sys.executable,
        "-u",
        "-m",
        ENTRY,
        json.dumps(spec),
    ]
    logger.info("starting %d ranks on %d node(s) with srun (master %s)", world, nodes, master)
    child = subprocess.Popen(command, env={**env, "MASTER_ADDR": master, "MASTER_PORT": str(port)})
    with _forwarding(child):
        code = child.wait()
    if code != 0:
        raise RuntimeError(
            f"distributed training failed: srun exited with {code} (a rank failed or was killed; "
            "each rank's error is above in this job's output)"
        )


@contextlib.contextmanager
def _forwarding(child: subprocess.Popen) -> Iterator[None]:
    """Pass SIGTERM/SIGUSR1/SIGINT on to ``child`` while waiting for it."""
    handled = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    previous = {s: signal.signal(s, lambda signum, _: child.send_signal(signum)) for s in handled}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# One rank -----------------------------------------------------------------------
def rank_from_env(env: Mapping[str, str]) -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them, else as srun does."""
    if "RANK" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))


def init_group(device_setting: str, timeout_s: int, env: Mapping[str, str]) -> Group:
    """Join the process group of this training (MASTER_ADDR/MASTER_PORT from the launcher)."""
    import torch
    import torch.distributed as dist

    rank, world, local_rank = rank_from_env(env)
    device = rank_device(device_setting, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=timeout,
    )
    return Group(rank, world, device)


def _die_with_parent() -> None:
    """SIGKILL this rank when its launcher dies (Linux), so no orphan writes after a kill -9."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(argv: Sequence[str] | None = None) -> None:
    """A rank: ``python -m snakemaps.train.distributed '<spec as JSON>'`` (see ``launch``)."""
    import importlib

    from torch.distributed.elastic.multiprocessing.errors import record

    @record
    def run() -> None:
        _die_with_parent()
        spec = json.loads((argv or sys.argv[1:])[0])
        rank = rank_from_env(os.environ)[0]
        from ..steps import configure_logging

        if rank == 0:
            configure_logging(spec["log_file"])
        else:
            logging.basicConfig(
                level=logging.WARNING, format=f"%(asctime)s rank {rank} %(levelname)s %(message)s"
            )
        import torch.distributed as dist

        module, name = spec["target"].split(":")
        target = getattr(importlib.import_module(module), name)
        group = init_group(spec["device"], spec["timeout"], os.environ)
        try:
            target(**spec["kwargs"], group=group)
        finally:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()

    run()


if __name__ == "__main__":
    main()
