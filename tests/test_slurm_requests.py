"""Requests SLURM could never start are named before anything is submitted (no cluster needed)."""

from __future__ import annotations

from snakemaps.slurm import Node, Request, impossible, parse_gres, parse_sinfo

SINFO = """\
debug*|vm|2|24105|gpu:fake:1
gpu|g1|32|256000|gpu:a100:4(S:0-1)
gpu|g2|16|128000|gpu:2,tmpdisk:100
cpu|c1|64|512000|(null)
"""


def request(**kwargs) -> Request:
    base = {
        "rule": "train",
        "wildcards": "maps=results/maps, split=0",
        "cpus": 1,
        "mem_mb": 2000,
        "gpus": 0,
        "gpu_model": None,
        "partition": None,
    }
    return Request(**{**base, **kwargs})


def test_sinfo_is_parsed_with_the_default_partition_and_gpu_types():
    partitions, default = parse_sinfo(SINFO)
    assert default == "debug"
    assert partitions["debug"] == [Node("vm", 2, 24105, {"fake": 1})]
    assert [n.gpus for n in partitions["gpu"]] == [{"a100": 4}, {"": 2}]
    assert partitions["cpu"][0].gpu_count == 0
    assert parse_gres("gpu:a100:4(S:0-1),gpu:v100:2") == {"a100": 4, "v100": 2}


def test_what_fits_is_not_reported():
    partitions, default = parse_sinfo(SINFO)
    fine = [
        request(),
        request(cpus=2, mem_mb=24105),
        request(partition="gpu", gpus=4, gpu_model="a100"),
        request(partition="gpu", cpus=16, gpus=2),
    ]
    assert impossible(fine, partitions, default) == []


def test_too_many_cpus_names_rule_request_node_and_profile_key():
    partitions, default = parse_sinfo(SINFO)
    [message] = impossible([request(cpus=4, mem_mb=16000)] * 3, partitions, default)
    assert message.startswith("rule train (maps=results/maps, split=0) asks SLURM for 4 CPUs")
    assert "16000 MB of memory" in message and "partition 'debug'" in message
    assert "its largest node (vm) has 2 CPUs, 24105 MB and GPUs: 1 fake" in message
    assert "`set-threads: train (CPUs per job)`" in message
    assert "profiles/slurm/config.yaml" in message and "mem_mb" not in message.split("Lower")[1]


def test_too_much_memory_or_too_many_gpus():
    partitions, default = parse_sinfo(SINFO)
    [memory] = impossible([request(mem_mb=30000)], partitions, default)
    assert "`set-resources: train: mem_mb`" in memory
    [gpus] = impossible([request(gpus=2)], partitions, default)
    assert "2 GPUs" in gpus and "`set-resources: train: gpu / gpu_model`" in gpus
    # 8 GPUs on one node: the gpu partition's nodes have 4 and 2
    [many] = impossible([request(partition="gpu", gpus=8)], partitions, default)
    assert "partition 'gpu'" in many and "(g1) has 32 CPUs" in many


def test_unknown_partition_and_gpu_type():
    partitions, default = parse_sinfo(SINFO)
    [partition] = impossible([request(partition="gpus")], partitions, default)
    assert "partition 'gpus', which this cluster does not have" in partition
    assert "sinfo lists: cpu, debug, gpu" in partition and "SNAKEMAPS_SLURM_PARTITION" in partition
    [model] = impossible([request(partition="gpu", gpus=1, gpu_model="h100")], partitions, default)
    assert "GPU type 'h100'" in model and "(GPU types there: a100)" in model
    assert "`set-resources: train: gpu_model`" in model


def test_the_profiles_partition_is_read_from_its_default_resources():
    from snakemaps.slurm import profile_partition

    assert profile_partition(["mem_mb=2000", "slurm_partition='gpu'"]) == "gpu"
    assert profile_partition(["slurm_partition=os.environ['P']"]) is None  # not a literal
    assert profile_partition(["mem_mb=2000"]) is None


def test_an_unknown_rule_in_snakemaps_submit_is_refused_naming_it(tmp_path, monkeypatch):
    """SNAKEMAPS_SUBMIT names local rules to submit anyway; a typo must not be ignored."""
    from conftest import TINY, run_snakemake

    monkeypatch.setenv("SNAKEMAPS_SUBMIT", "environment,enviroment")
    result = run_snakemake(tmp_path, "-n", config=TINY)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "SNAKEMAPS_SUBMIT names ['enviroment'], which are not rules that run locally" in output
    assert not (tmp_path / "results").exists()
