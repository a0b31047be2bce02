"""brainmri/cluster/partition.py: sinfo's rows read, and a request no node can run refused in one line."""

from __future__ import annotations

import pytest

from brainmri.cluster import partition
from brainmri.config import SlurmConfig
from brainmri.errors import BrainMRIError

SINFO = """node1|debug*|1|12052|(null)|idle|infinite|1-infinite
node2|debug*|1|12052|(null)|alloc|infinite|1-infinite
g1|gpu|64|512000|gpu:a100:4(S:0-1)|mix|2-00:00:00|1-4
g2|gpu|64|512000|gpu:a100:2,gpu:v100:2|idle|2-00:00:00|1-4
"""


def test_default_and_named_partitions():
    debug = partition.parse_sinfo(SINFO, None)
    assert debug.name == "debug" and [n.name for n in debug.nodes] == ["node1", "node2"]
    assert debug.max_minutes is None and debug.max_nodes is None
    gpu = partition.parse_sinfo(SINFO, "gpu")
    assert [n.gpus for n in gpu.nodes] == [4, 4] and gpu.max_minutes == 2880 and gpu.max_nodes == 4
    assert debug.describe() == "partition debug: 2 node(s), 1 CPU(s), up to 0 GPU(s) and 12052 MB each"


@pytest.mark.parametrize(
    "text, minutes", [("infinite", None), ("1-00:00:00", 1440), ("2:00:00", 120), ("30:00", 30), ("1-12:30:01", 2191)]
)
def test_time_limits(text, minutes):
    assert partition.slurm_minutes(text) == minutes


def test_gres_gpus():
    assert [
        partition.gres_gpus(g)
        for g in ("(null)", "gpu:4", "gpu:a100:4(S:0-1)", "gpu:a100:2,gpu:v100:2", "gpu:tesla:8(S:0),mps:400")
    ] == [0, 4, 4, 4, 8]


@pytest.mark.parametrize(
    "request_, wanted, message",
    [
        (
            dict(gpus_per_node=0, tasks_per_node=2),
            None,
            "slurm.cpus_per_task=8 x slurm.tasks_per_node=2 = 16 CPUs per node; the largest node in partition debug has 1",
        ),
        (
            dict(gpus_per_node=2, cpus_per_task=1),
            None,
            "slurm.cpus_per_task=1 x 2 task(s) per node (one per GPU) = 2 CPUs per node; the largest node in partition debug has 1",
        ),
        (
            dict(gpus_per_node=1, cpus_per_task=1),
            None,
            "slurm.gpus_per_node=1: the largest node in partition debug has 0 GPU(s); slurm.gpus_per_node=0 runs on CPUs",
        ),
        (
            dict(gpus_per_node=8, cpus_per_task=8),
            "gpu",
            "slurm.gpus_per_node=8: the largest node in partition gpu has 4 GPU(s)",
        ),
        (
            dict(gpus_per_node=0, cpus_per_task=1, nodes=3),
            None,
            "slurm.nodes=3: partition debug has 2 node(s) with 1 CPU(s) per node",
        ),
        (
            dict(gpus_per_node=0, cpus_per_task=1, mem_gb=64),
            None,
            "slurm.mem_gb=64: the largest node in partition debug has 11.8 GB",
        ),
        (
            dict(gpus_per_node=4, cpus_per_task=16, timeout_min=3000),
            "gpu",
            "slurm.timeout_min=3000: partition gpu allows at most 2880 minutes",
        ),
    ],
)
def test_requests_no_node_can_run(request_, wanted, message):
    with pytest.raises(BrainMRIError) as e:
        partition.check_request(SlurmConfig(partition=wanted, **request_), partition.parse_sinfo(SINFO, wanted))
    assert str(e.value) == message


def test_requests_that_fit():
    partition.check_request(SlurmConfig(nodes=2, gpus_per_node=0, cpus_per_task=1), partition.parse_sinfo(SINFO, None))
    partition.check_request(
        SlurmConfig(nodes=2, gpus_per_node=4, cpus_per_task=16, partition="gpu"), partition.parse_sinfo(SINFO, "gpu")
    )


def test_unknown_partition_names_the_known_ones():
    with pytest.raises(BrainMRIError, match=r"^slurm.partition=gpus: no such partition \(partitions: debug, gpu\)$"):
        partition.parse_sinfo(SINFO, "gpus")


def test_max_array_size_comes_from_the_cluster_config():
    config = "ClusterName = x\nMaxArraySize            = 4\nMaxJobCount = 10000\n"
    assert partition.parse_max_array_size(config) == 4
    assert partition.parse_max_array_size("ClusterName = x\n") == 1001  # SLURM's default when unsaid
