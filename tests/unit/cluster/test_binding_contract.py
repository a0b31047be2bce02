"""The SLURM task binding against Accelerate itself: for every binding style of a 2-node x 4-GPU
job, the device Accelerate selects, the ``device_ids`` it hands DDP and the NCCL barrier, and
the physical GPU the task drives are one and the same, and distinct across the job's tasks.

No GPU is needed: each task's environment is built as SLURM (or submitit's local executor)
gives it, ``torch.cuda`` is stubbed to the number of devices the task can see, and the process
group is stubbed so that Accelerate's own code paths (``PartialState``, ``prepare_model``,
``wait_for_everyone``) run unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional
from unittest import mock

import pytest
import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState

from brainmri.cluster import binding

NODES, GPUS = 2, 4


@dataclass
class Seen:
    """What Accelerate did in one task."""

    device: torch.device
    set_device: Optional[torch.device]
    ddp_device_ids: Optional[list]
    barrier_device_ids: Optional[list]
    physical: str  # the GPU the task really drives: its CUDA_VISIBLE_DEVICES entry at the device index


def accelerate_in(task_env: dict[str, str]) -> Seen:
    """Create Accelerate's state in ``task_env`` with CUDA and the process group stubbed."""
    visible = binding.visible_gpus(task_env.get("CUDA_VISIBLE_DEVICES"))
    calls: dict = {}

    def ddp(module, **kwargs):
        calls["ddp"] = kwargs
        return module

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_", "ACCELERATE_"))}
    env.update(task_env)
    with (
        mock.patch.dict(os.environ, env, clear=True),
        mock.patch("torch.cuda.is_available", return_value=True),
        mock.patch("torch.cuda.device_count", return_value=len(visible)),
        mock.patch("torch.cuda.set_device", side_effect=lambda d: calls.setdefault("set_device", d)),
        mock.patch("torch.distributed.init_process_group", side_effect=lambda **k: calls.setdefault("init", k)),
        mock.patch("torch.distributed.is_initialized", return_value=True),
        mock.patch("torch.distributed.get_world_size", return_value=int(task_env["WORLD_SIZE"])),
        mock.patch("torch.distributed.get_rank", return_value=int(task_env["RANK"])),
        mock.patch("torch.distributed.barrier", side_effect=lambda **k: calls.setdefault("barrier", k)),
        mock.patch("torch.nn.parallel.DistributedDataParallel", side_effect=ddp),
        mock.patch.object(torch.nn.Module, "to", lambda self, *a, **k: self),
    ):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        try:
            state = PartialState(cpu=False)
            device = state.device
            state.wait_for_everyone()
            Accelerator(mixed_precision="no").prepare_model(torch.nn.Linear(2, 2))
        finally:
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
    index = device.index
    physical = visible[index] if index is not None and index < len(visible) else f"<no device {index}>"
    return Seen(
        device,
        calls.get("set_device"),
        calls.get("ddp", {}).get("device_ids"),
        calls.get("barrier", {}).get("device_ids"),
        physical,
    )


def slurm_env(node: int, local: int, visible: str, job: str = "777") -> dict[str, str]:
    return {
        "SLURM_JOB_ID": job,
        "SLURM_NTASKS": str(NODES * GPUS),
        "SLURM_JOB_NUM_NODES": str(NODES),
        "SLURM_PROCID": str(node * GPUS + local),
        "SLURM_LOCALID": str(local),
        "SLURM_NODEID": str(node),
        "SLURMD_NODENAME": f"gpu{node + 1:02d}",
        "SLURM_GPUS_ON_NODE": str(GPUS),
        "CUDA_VISIBLE_DEVICES": visible,
    }


# What CUDA_VISIBLE_DEVICES holds in each task (node, local id), per binding style.
STYLES = {
    "gpus-per-task": lambda node, local: str(local),
    "gpu-bind-offset": lambda node, local: str(4 + local),  # the node's GPUs 4-7 went to this job
    "all-visible": lambda node, local: "0,1,2,3",
    "all-visible-offset": lambda node, local: "4,5,6,7",
    "uuids": lambda node, local: ",".join(f"GPU-{node}{i}aa-bb" for i in range(GPUS)),
    "uuid-per-task": lambda node, local: f"GPU-{node}{local}aa-bb",
    "mig": lambda node, local: ",".join(f"MIG-{node}{i}c0-1234" for i in range(GPUS)),
    "mig-per-task": lambda node, local: f"MIG-{node}{local}c0-1234",
}


def check_job(tasks: list[tuple[str, object]]) -> None:
    """Every task: the device Accelerate selects, DDP's and the barrier's ids and the physical
    GPU agree with the binding; no two tasks drive the same (node, GPU)."""
    driven = set()
    for node, task in tasks:
        seen = accelerate_in(task.environment())
        assert seen.device == torch.device("cuda", 0) == seen.set_device, (task.describe(), seen)
        assert seen.ddp_device_ids == [seen.device.index], (task.describe(), seen)
        assert seen.barrier_device_ids == [seen.device.index], (task.describe(), seen)
        assert seen.physical == task.gpu, (task.describe(), seen)
        driven.add((node, seen.physical))
    assert len(driven) == len(tasks)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_slurm_task_drives_its_own_gpu_as_accelerate_sees_it(style):
    hosts = [f"gpu{n + 1:02d}" for n in range(NODES)]
    tasks = []
    for node in range(NODES):
        for local in range(GPUS):
            task = binding.bind_task(slurm_env(node, local, STYLES[style](node, local)), hosts, gpus_per_node=GPUS)
            tasks.append((hosts[node], task))
    check_job(tasks)


def test_submitit_local_executor_tasks_each_drive_their_own_gpu(monkeypatch):
    """``slurm.cluster=local``: submitit shows every task the job's GPUs (here 4-7 of the machine)."""
    import submitit

    from brainmri.cluster import jobs as cluster

    tasks = []
    for local in range(GPUS):
        for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))]:
            monkeypatch.delenv(key)
        for key, value in {
            "SUBMITIT_EXECUTOR": "local",
            "SUBMITIT_LOCAL_JOB_ID": "99",
            "SUBMITIT_LOCAL_NTASKS": str(GPUS),
            "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
            "SUBMITIT_LOCAL_NODEID": "0",
            "SUBMITIT_LOCAL_GLOBALID": str(local),
            "SUBMITIT_LOCAL_LOCALID": str(local),
            "CUDA_VISIBLE_DEVICES": "4,5,6,7",
            "MASTER_ADDR": "localhost",
            "MASTER_PORT": "29555",
        }.items():
            monkeypatch.setenv(key, value)
        task = cluster.task_binding(submitit.JobEnvironment(), gpus_per_node=GPUS)
        assert task.gpu == str(4 + local)
        tasks.append(("localhost", task))
    check_job(tasks)


def test_planned_environments_pass_the_contract():
    """The ``--dry-run`` rank plan is built by the same rules, so it passes too."""
    for one_gpu_per_task in (False, True):
        envs = binding.planned_environments(NODES, GPUS, 8, GPUS, one_gpu_per_task)
        check_job([(env["SLURMD_NODENAME"], binding.bind_task(env, hosts, GPUS)) for env, hosts in envs])
