"""Where each task of a SLURM job runs: its ranks, node, GPU, CPU threads and rendezvous port.

A submitit job starts one task per GPU (or per CPU process) on every node. Each task must
agree with the others on the rendezvous (rank 0's node and one port) and pick its own GPU.
The GPU is NOT simply ``LOCAL_RANK``: when SLURM binds one GPU per task (``--gpus-per-task``,
``--gpu-bind``), ``CUDA_VISIBLE_DEVICES`` holds a single id and only device 0 exists in the
task (Lightning #16828, ignite #3259). :func:`bind_task` works out the physical GPU from
what the task can see and narrows ``CUDA_VISIBLE_DEVICES`` to it, so every task drives
exactly one GPU as ``cuda:0`` whatever the binding style.

A GPU task therefore exports ``LOCAL_RANK=0`` and ``LOCAL_WORLD_SIZE=1``, whatever SLURM's
local id: Accelerate uses ``LOCAL_RANK`` as a device index three times (``set_device``,
DDP's ``device_ids`` and the NCCL barrier's ``device_ids``), and in a task that sees one
GPU the only valid index is 0. SLURM's local id stays in :class:`TaskBinding` for the log.
CPU tasks keep SLURM's local rank: gloo uses it for nothing but thread counts.

The port comes from the job id, in 20000-31999 (below Linux's ephemeral range): jobs
sharing a node have different ids and so different ports. An inherited ``MASTER_PORT``
(sbatch exports the submitting shell's environment) is ignored for that reason.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from brainmri.config import SlurmConfig
from brainmri.errors import BrainMRIError

PORT_BASE, PORT_SPAN = 20000, 12000


@dataclass(frozen=True)
class TaskBinding:
    """One task's place in the job and what it exports before training starts."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    node: str  # the SLURM node name (SLURMD_NODENAME), not the host's name
    master_addr: str
    master_port: int
    gpu: Optional[str]  # the physical GPU id (as CUDA_VISIBLE_DEVICES names it); None: CPU
    threads: Optional[int]  # CPU threads for this task (its cpus_per_task); None: leave as is
    nccl_async_error_handling: str = "1"  # TORCH_NCCL_ASYNC_ERROR_HANDLING (the user's, if set)

    @property
    def device(self) -> str:
        return "cpu" if self.gpu is None else "cuda:0"

    def environment(self) -> dict[str, str]:
        """The variables torch.distributed and Accelerate read, for this task."""
        one_gpu = self.gpu is not None  # the task's one visible GPU is device 0 (see the module docstring)
        env = {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": "0" if one_gpu else str(self.local_rank),
            "LOCAL_WORLD_SIZE": "1" if one_gpu else str(self.local_world_size),
            "GROUP_RANK": str(self.node_rank),
        }
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
            # A failed or timed-out NCCL collective aborts the communicator and raises, instead
            # of leaving the surviving ranks hanging; the survivors then name the lost rank.
            env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = self.nccl_async_error_handling
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return env

    def describe(self) -> str:
        gpu = f"GPU {self.gpu} as cuda:0" if self.gpu is not None else "cpu"
        threads = f", {self.threads} thread(s)" if self.threads else ""
        return (
            f"rank {self.rank}/{self.world_size} on node {self.node} (node rank {self.node_rank}/{self.num_nodes}, "
            f"local rank {self.local_rank}/{self.local_world_size}), {gpu}{threads}, "
            f"master {self.master_addr}:{self.master_port}"
        )


def master_port(job_id: str) -> int:
    """The rendezvous port of a job: distinct for jobs whose ids differ by less than 12000."""
    number = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
    return PORT_BASE + number % PORT_SPAN


def visible_gpus(value: Optional[str], unset: int = 0) -> list[str]:
    """The ids in ``CUDA_VISIBLE_DEVICES`` (SLURM writes ``NoDevFiles`` when none were given);
    when it names none, ``0 .. unset-1``: every GPU of a node that does not restrict them."""
    named = [] if not value or value.strip() in ("NoDevFiles", "-1") else value.split(",")
    return [v.strip() for v in named if v.strip()] or [str(i) for i in range(unset)]


def pick_gpu(local_rank: int, local_world_size: int, visible: Sequence[str], node_gpus: int, node: str) -> str:
    """The physical GPU of a task from what it sees and how many GPUs its node was given.

    The node must have a GPU for every task (``node_gpus``: ``SLURM_GPUS_ON_NODE``, else the
    request): two ranks on one GPU stop NCCL with "Duplicate GPU detected". Then one visible
    id means SLURM bound one GPU to this task (use it whatever the local rank); as many ids
    as tasks, or more, means every task sees the node's GPUs (take the local rank's).
    """
    if node_gpus >= local_world_size:
        if len(visible) == 1:
            return visible[0]
        if local_rank < len(visible) and len(visible) >= local_world_size:
            return visible[local_rank]
    raise BrainMRIError(
        f"node {node}: {local_world_size} task(s) would share {node_gpus} GPU(s) (task with local rank {local_rank} "
        f"sees CUDA_VISIBLE_DEVICES={','.join(visible) or '(none)'}); ask one GPU per task "
        f"(slurm.gpus_per_node={local_world_size}) or fewer tasks "
        f"(slurm.tasks_per_node={max(1, min(node_gpus, len(visible)))})"
    )


def bind_task(environ: Mapping[str, str], hostnames: Sequence[str], gpus_per_node: int) -> TaskBinding:
    """This task's binding, from the environment SLURM gives it and the job's node names."""

    def number(name: str, default: Optional[int] = None) -> int:
        value = environ.get(name)
        if value is None or not value.isdigit():
            if default is None:
                raise BrainMRIError(f"{name} is not set: this is not a task of a SLURM job")
            return default
        return int(value)

    world_size = number("SLURM_NTASKS")
    num_nodes = number("SLURM_JOB_NUM_NODES", number("SLURM_NNODES", 1))
    local_rank, node_rank = number("SLURM_LOCALID"), number("SLURM_NODEID")
    node = environ.get("SLURMD_NODENAME") or hostnames[node_rank]
    local_world_size = world_size // num_nodes
    gpu = None
    if gpus_per_node > 0:
        visible = visible_gpus(environ.get("CUDA_VISIBLE_DEVICES"), gpus_per_node)
        gpu = pick_gpu(local_rank, local_world_size, visible, number("SLURM_GPUS_ON_NODE", gpus_per_node), node)
    threads = number("SLURM_CPUS_PER_TASK", 0) or None
    if "OMP_NUM_THREADS" in environ:
        threads = None  # the user chose; keep it
    return TaskBinding(
        rank=number("SLURM_PROCID"),
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        node_rank=node_rank,
        num_nodes=num_nodes,
        node=node,
        master_addr=hostnames[0],
        master_port=master_port(environ.get("SLURM_JOB_ID", "0")),
        gpu=gpu,
        threads=threads,
        nccl_async_error_handling=environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
    )


def rank_plan(slurm: SlurmConfig) -> list[TaskBinding]:
    """Every task's binding for a job of this ``slurm.*`` request, before it is submitted."""
    bound = {k.replace("_", "-") for k in slurm.additional} & {"gpus-per-task", "gpu-bind"}
    environments = planned_environments(
        slurm.max_nodes, slurm.tasks, slurm.cpus_per_task, slurm.gpus_per_node, bool(bound)
    )
    return [bind_task(env, hostnames, slurm.gpus_per_node) for env, hostnames in environments]


def planned_environments(
    nodes: int,
    tasks_per_node: int,
    cpus_per_task: int,
    gpus_per_node: int,
    one_gpu_per_task: bool,
    job_id: str = "1234",
) -> list[tuple[dict[str, str], list[str]]]:
    """The environment SLURM would give each task of a job of this shape (for --dry-run and tests).

    ``one_gpu_per_task``: SLURM binds GPUs to tasks (``--gpus-per-task``/``--gpu-bind``),
    so each task sees one id; otherwise every task sees all of its node's GPUs.
    """
    hostnames = [f"<node{n}>" for n in range(nodes)]
    out = []
    for node in range(nodes):
        for local in range(tasks_per_node):
            env = {
                "SLURM_JOB_ID": job_id,
                "SLURM_NTASKS": str(nodes * tasks_per_node),
                "SLURM_JOB_NUM_NODES": str(nodes),
                "SLURM_PROCID": str(node * tasks_per_node + local),
                "SLURM_LOCALID": str(local),
                "SLURM_NODEID": str(node),
                "SLURMD_NODENAME": hostnames[node],
                "SLURM_CPUS_PER_TASK": str(cpus_per_task),
            }
            if gpus_per_node:
                ids = [str(local % gpus_per_node)] if one_gpu_per_task else [str(i) for i in range(gpus_per_node)]
                env["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
                env["SLURM_GPUS_ON_NODE"] = str(gpus_per_node)
            out.append((env, hostnames))
    return out
