"""A snakemake run without SLURM does not wait for a stopped SLURM controller.

The SLURM executor plugin runs ``scontrol show config`` when snakemake starts;
with a slurm.conf whose controller is down, scontrol retries for about 9 s.
``local_snakemake_env`` (tests and benchmarks) points such runs at a copy of
the configuration with ``MessageTimeout=1``, and leaves everything else alone.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import local_snakemake_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_slurm_conf_leaves_the_environment_alone(tmp_path):
    env = local_snakemake_env({"PATH": "/usr/bin:/bin", "SLURM_CONF": str(tmp_path / "none")})
    assert env == {"PATH": "/usr/bin:/bin", "SLURM_CONF": str(tmp_path / "none")}


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol is not installed")
def test_a_stopped_controller_fails_at_once_instead_of_after_retries(tmp_path):
    # a controller nobody listens for: what a configured, stopped cluster looks like
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=down\nSlurmctldHost=localhost(127.0.0.1)\n"
        f"SlurmctldPort={free_port()}\nMessageTimeout=10\n"
        "NodeName=localhost CPUs=1 State=UNKNOWN\nPartitionName=p Nodes=localhost Default=YES\n"
    )
    env = local_snakemake_env({"PATH": "/usr/bin:/bin", "SLURM_CONF": str(conf)})
    fast = Path(env["SLURM_CONF"])
    assert fast != conf
    text = fast.read_text()
    assert "MessageTimeout=1\n" in text and "MessageTimeout=10" not in text
    start = time.monotonic()
    done = subprocess.run(
        ["scontrol", "show", "config"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert time.monotonic() - start < 3, "scontrol still retried"
