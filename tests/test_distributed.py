"""torch.distributed pieces with real gloo ranks: every validation image once, dead ranks fail.

The ranks are started by ``snakemaps.train.distributed.launch`` (torchrun's
elastic agent), as a train job starts them; their targets are the functions
below (the workers find this module through PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from snakemaps.errors import UserError
from snakemaps.train import distributed
from snakemaps.train.distributed import Group, check_gpus, launch

TESTS = str(Path(__file__).resolve().parent)
N_VAL = 7  # not a multiple of the world size: a padding sampler would count 8


def train_section(processes=2, nodes=1, timeout=60) -> dict:
    return {
        "device": "cpu",
        "distributed": {"processes": processes, "nodes": nodes, "timeout": timeout},
    }


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, str(ROOT / "scripts")])}


class Images:
    """A validation set of ``n`` random images, as CachedImages holds them."""

    def __init__(self, n: int) -> None:
        import pandas as pd

        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 1, 6, 6, 6, generator=generator)
        self.labels = torch.arange(n) % 2
        self.classes = ["AD", "CN"]
        self.frame = pd.DataFrame(
            {"participant_id": [f"sub-{i}" for i in range(n)], "session_id": "ses-M000"}
        )

    def __len__(self) -> int:
        return len(self.labels)


def validation_metrics(group: Group) -> tuple[list[int], dict[str, float]]:
    from snakemaps.train import metrics as M
    from snakemaps.train.evaluation import Batches, predict

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(216, 2))
    data = Images(N_VAL)
    batches = Batches(data, 2, torch.device("cpu"))
    indices, labels, outputs, losses = group.gather_predictions(
        predict(network, batches, None, share=group.shard(len(data)))
    )
    names = ["loss", "Accuracy", "BalancedAccuracy", "RocAuc"]
    return indices.tolist(), M.compute(names, labels, outputs, losses)


def validate_share(out: str, threads: int, group: Group) -> None:
    """A rank: its share of the validation set, gathered; written to out/rank-<r>.json."""
    indices, values = validation_metrics(group)
    share = group.shard(N_VAL)
    Path(out, f"rank-{group.rank}.json").write_text(
        json.dumps({"share": share, "gathered": indices, "metrics": values})
    )


def die(how: str, threads: int, group: Group) -> None:
    """Rank 1 is killed (or hangs); rank 0 goes on with collectives as training does."""
    import torch.distributed as dist

    if group.rank == 1:
        if how == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)
    for _ in range(10_000):
        dist.all_reduce(torch.ones(1))
        time.sleep(0.01)


def test_validation_counts_every_image_once(tmp_path):
    launch(
        {"out": str(tmp_path)}, train_section(), 2, env(), target="test_distributed:validate_share"
    )
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["share"] + ranks[1]["share"] == list(range(N_VAL))  # no image twice
    alone_indices, alone = validation_metrics(Group())
    for rank in ranks:
        assert rank["gathered"] == alone_indices == list(range(N_VAL))
        assert rank["metrics"] == pytest.approx(alone, rel=1e-6)
    # what a DistributedSampler would have done: pad to 8 with a repeated image
    from torch.utils.data.distributed import DistributedSampler

    padded = [list(DistributedSampler(range(N_VAL), 2, r, shuffle=False)) for r in (0, 1)]
    assert sum(map(len, padded)) == N_VAL + 1


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_dead_or_hung_rank_fails_the_job_in_time(tmp_path, how):
    timeout = 4
    start = time.monotonic()
    with pytest.raises(RuntimeError) as failed:
        launch(
            {"how": how}, train_section(timeout=timeout), 2, env(), target="test_distributed:die"
        )
    seconds = time.monotonic() - start
    message = str(failed.value)
    if how == "killed":
        assert message.startswith("distributed training failed: rank 1: Signal 9 (SIGKILL)"), (
            message
        )
    else:  # rank 0's all_reduce timed out
        assert message.startswith("distributed training failed: rank 0:"), message
        assert "imed out" in message, message
    # start-up (two interpreters importing torch on a busy machine) plus the timeout
    assert seconds < 60 + (timeout if how == "hung" else 0), seconds


def test_more_processes_than_gpus_is_refused_before_training():
    with pytest.raises(UserError, match=r"train.distributed.processes is 4 but this job sees 2"):
        check_gpus("cuda", 4, 2)
    check_gpus("cuda", 2, 2)
    check_gpus("cpu", 4, 0)  # gloo processes on the CPU need no GPU


def test_several_nodes_need_a_slurm_job_with_one_task_per_rank():
    train = train_section(processes=2, nodes=2)
    with pytest.raises(UserError, match=r"nodes is 2: several nodes need a SLURM job"):
        launch({}, train, 2, {})
    with pytest.raises(UserError, match=r"= 4 ranks, but this SLURM job has 3 tasks"):
        launch({}, train, 2, {"SLURM_NTASKS": "3"})


def test_sampler_shares_cover_the_epoch_and_change_with_it():
    groups = [Group(r, 2) for r in (0, 1)]
    epoch0 = [g.order(13, 0, 5, None) for g in groups]
    assert [len(o) for o in epoch0] == [7, 7] == [g.num_samples(13) for g in groups]
    assert set(epoch0[0]) | set(epoch0[1]) == set(range(13))
    assert [g.order(13, 0, 5, None) for g in groups] == epoch0  # epoch and seed decide
    assert [g.order(13, 1, 5, None) for g in groups] != epoch0
    assert distributed.world_size({"processes": 2, "nodes": 3}) == 6
    assert np.array_equal(sorted(Group(1, 3).shard(10) + Group(0, 3).shard(10)), range(6))
