"""brainmri/cluster/binding.py: each task's rank, node, GPU, threads and port, from the environment
SLURM gives it in the binding styles users' clusters use (no GPU needed: the environments
are built here)."""

from __future__ import annotations

import pytest

from brainmri.cluster import binding
from brainmri.config import SlurmConfig
from brainmri.errors import BrainMRIError


def task_env(rank: int, local: int, node: int, tasks: int = 8, nodes: int = 2, job: str = "4242", **extra: str) -> dict:
    return {
        "SLURM_JOB_ID": job,
        "SLURM_NTASKS": str(tasks),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(local),
        "SLURM_NODEID": str(node),
        "SLURMD_NODENAME": f"gpu{node + 1:02d}",
        **extra,
    }


HOSTS = ["gpu01", "gpu02"]


def test_one_gpu_bound_per_task_is_device_zero_whatever_the_local_rank():
    """--gpus-per-task=1 / --gpu-bind: CUDA_VISIBLE_DEVICES holds one id; SLURM's local id 3 must not
    reach Accelerate as LOCAL_RANK=3 (it would hand DDP device_ids=[3] in a task with one GPU)."""
    b = binding.bind_task(task_env(3, 3, 0, CUDA_VISIBLE_DEVICES="5"), HOSTS, gpus_per_node=4)
    assert (b.gpu, b.device, b.local_rank) == ("5", "cuda:0", 3)
    env = b.environment()
    assert (env["CUDA_VISIBLE_DEVICES"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("5", "0", "1")


def test_every_gpu_visible_takes_the_local_ranks_gpu_and_narrows_to_it():
    b = binding.bind_task(task_env(6, 2, 1, CUDA_VISIBLE_DEVICES="4,5,6,7"), HOSTS, gpus_per_node=4)
    assert (b.gpu, b.device, b.node, b.node_rank) == ("6", "cuda:0", "gpu02", 1)
    uuids = "GPU-aa,GPU-bb"
    assert binding.bind_task(task_env(1, 1, 0, tasks=2, nodes=1, CUDA_VISIBLE_DEVICES=uuids), HOSTS, 2).gpu == "GPU-bb"


def test_no_cuda_visible_devices_falls_back_to_the_local_rank():
    assert binding.bind_task(task_env(1, 1, 0), HOSTS, gpus_per_node=4).gpu == "1"


def test_fewer_gpus_than_tasks_is_an_error_naming_the_keys():
    with pytest.raises(
        BrainMRIError,
        match=r"node gpu01: 4 task\(s\) would share 4 GPU\(s\) \(task with local rank 3 sees "
        r"CUDA_VISIBLE_DEVICES=0,1\); ask one GPU per task \(slurm.gpus_per_node=4\) "
        r"or fewer tasks \(slurm.tasks_per_node=2\)",
    ):
        binding.bind_task(task_env(3, 3, 0, CUDA_VISIBLE_DEVICES="0,1"), HOSTS, gpus_per_node=4)


def test_two_tasks_on_a_node_with_one_gpu_are_refused_not_given_the_same_gpu():
    """tasks_per_node=2 gpus_per_node=1: both tasks see the one id; NCCL would stop with
    "Duplicate GPU detected", so the binding refuses, on the node's count and on the request's."""
    for local in (0, 1):
        env = task_env(local, local, 0, tasks=2, nodes=1, CUDA_VISIBLE_DEVICES="0", SLURM_GPUS_ON_NODE="1")
        with pytest.raises(BrainMRIError, match=r"2 task\(s\) would share 1 GPU\(s\).*slurm.tasks_per_node=1"):
            binding.bind_task(env, HOSTS, gpus_per_node=4)
        with pytest.raises(BrainMRIError, match=r"would share 1 GPU"):
            binding.bind_task(
                task_env(local, local, 0, tasks=2, nodes=1, CUDA_VISIBLE_DEVICES="0"), HOSTS, gpus_per_node=1
            )


def test_a_request_that_shares_gpus_is_refused_before_submission():
    from brainmri.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"slurm.tasks_per_node=2 with slurm.gpus_per_node=1 puts several ranks on one GPU"
    ):
        SlurmConfig(gpus_per_node=1, tasks_per_node=2)
    assert SlurmConfig(gpus_per_node=4, tasks_per_node=2).tasks == 2  # fewer tasks than GPUs is allowed


def test_cpu_job_has_no_gpu_and_one_thread_per_cpu():
    b = binding.bind_task(
        task_env(1, 0, 1, tasks=2, CUDA_VISIBLE_DEVICES="NoDevFiles", SLURM_CPUS_PER_TASK="3"), HOSTS, 0
    )
    assert (b.gpu, b.device, b.threads) == (None, "cpu", 3)
    assert "CUDA_VISIBLE_DEVICES" not in b.environment() and b.environment()["OMP_NUM_THREADS"] == "3"
    mine = binding.bind_task(task_env(1, 0, 1, tasks=2, SLURM_CPUS_PER_TASK="3", OMP_NUM_THREADS="1"), HOSTS, 0)
    assert mine.threads is None and "OMP_NUM_THREADS" not in mine.environment()


def test_rendezvous_is_rank_zeros_node_with_a_port_from_the_job_id():
    b = binding.bind_task(task_env(5, 1, 1, MASTER_PORT="29500"), HOSTS, 0)
    env = b.environment()
    assert (
        env["MASTER_ADDR"] == "gpu01"
        and env["WORLD_SIZE"] == "8"
        and env["RANK"] == "5"
        and env["LOCAL_WORLD_SIZE"] == "4"
    )
    assert env["MASTER_PORT"] == str(20000 + 4242 % 12000)  # an inherited MASTER_PORT is not used


def test_jobs_sharing_a_node_never_share_a_port():
    """Neighbouring job ids (an array's tasks have their own SLURM_JOB_ID) and an inherited
    MASTER_PORT that sbatch exported to every job: each job still gets its own port."""
    ports = [
        binding.bind_task(task_env(0, 0, 0, job=str(j), MASTER_PORT="29500"), HOSTS, 0).master_port
        for j in range(100_000, 112_000)
    ]
    assert len(set(ports)) == len(ports)
    assert all(20000 <= p < 32000 for p in ports)  # below Linux's ephemeral range (32768-60999)
    assert binding.master_port("4242_3") == binding.master_port("4242_3") != binding.master_port("4242_4")


@pytest.mark.parametrize("one_gpu_per_task", [False, True], ids=["all-visible", "gpus-per-task"])
def test_a_multi_node_gpu_job_gives_every_task_its_own_node_and_gpu(one_gpu_per_task):
    envs = binding.planned_environments(
        nodes=3, tasks_per_node=4, cpus_per_task=8, gpus_per_node=4, one_gpu_per_task=one_gpu_per_task
    )
    tasks = [binding.bind_task(env, hosts, gpus_per_node=4) for env, hosts in envs]
    assert sorted(t.rank for t in tasks) == list(range(12))
    assert len({(t.node, t.gpu) for t in tasks}) == 12
    assert {t.device for t in tasks} == {"cuda:0"} and {t.master_addr for t in tasks} == {"<node0>"}


def test_rank_plan_follows_the_slurm_request():
    plan = binding.rank_plan(SlurmConfig(nodes=2, gpus_per_node=2, cpus_per_task=4, additional={"gpus_per_task": 1}))
    assert [(b.rank, b.node, b.local_rank, b.gpu) for b in plan] == [
        (0, "<node0>", 0, "0"),
        (1, "<node0>", 1, "1"),
        (2, "<node1>", 0, "0"),
        (3, "<node1>", 1, "1"),
    ]
    cpu = binding.rank_plan(SlurmConfig(nodes=2, gpus_per_node=0, tasks_per_node=1, cpus_per_task=1))
    assert [(b.node, b.device, b.threads) for b in cpu] == [("<node0>", "cpu", 1), ("<node1>", "cpu", 1)]


def test_not_a_slurm_task_is_a_clear_error():
    with pytest.raises(BrainMRIError, match="SLURM_NTASKS is not set: this is not a task of a SLURM job"):
        binding.bind_task({}, HOSTS, 0)


def test_train_job_binds_from_slurms_variables(monkeypatch):
    """The submitit side: a task of a 2-node SLURM job exports the binding's environment."""
    import submitit

    from brainmri.cluster import jobs as cluster

    for key, value in task_env(1, 0, 1, tasks=2, SLURM_JOB_NODELIST="node[1-2]", SLURM_CPUS_PER_TASK="1").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    b = cluster.task_binding(submitit.JobEnvironment(), gpus_per_node=0)
    assert (b.rank, b.world_size, b.node, b.master_addr, b.threads) == (1, 2, "gpu02", "node1", 1)


def test_gpu_tasks_make_nccl_errors_abort_rather_than_hang():
    """TORCH_NCCL_ASYNC_ERROR_HANDLING=1: a failed or timed-out collective raises on the
    survivors (who then name the lost rank) instead of hanging; a user's own value is kept."""
    env = binding.bind_task(task_env(1, 1, 0, CUDA_VISIBLE_DEVICES="0,1,2,3"), HOSTS, gpus_per_node=4).environment()
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    mine = task_env(1, 1, 0, CUDA_VISIBLE_DEVICES="0,1,2,3", TORCH_NCCL_ASYNC_ERROR_HANDLING="3")
    assert binding.bind_task(mine, HOSTS, gpus_per_node=4).environment()["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in binding.bind_task(task_env(1, 0, 1), HOSTS, 0).environment()
