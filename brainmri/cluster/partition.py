"""What a SLURM partition's nodes offer, and whether a job's request can ever run there.

sbatch accepts requests no node can satisfy (16 CPUs per node on 2-CPU nodes): the job then
sits in the queue with reason ``PartitionConfig`` forever. Checking the ``slurm.*`` request
against ``sinfo`` first turns that into a one-line error that names the key to change, and
nothing is submitted.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Optional

from brainmri.config import SlurmConfig
from brainmri.errors import BrainMRIError

SINFO_FORMAT = "%N|%P|%c|%m|%G|%t|%l|%s"


@dataclass(frozen=True)
class NodeOffer:
    """One node as sinfo describes it in one partition."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int
    state: str


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: tuple[NodeOffer, ...]
    max_minutes: Optional[int]  # None: no time limit
    max_nodes: Optional[int]  # None: no limit on a job's node count

    def describe(self) -> str:
        cpus = sorted({n.cpus for n in self.nodes})
        gpus = max((n.gpus for n in self.nodes), default=0)
        mem = max((n.memory_mb for n in self.nodes), default=0)
        return (
            f"partition {self.name}: {len(self.nodes)} node(s), {'/'.join(map(str, cpus))} CPU(s), "
            f"up to {gpus} GPU(s) and {mem} MB each"
        )


def gres_gpus(gres: str) -> int:
    """GPUs in a Gres string: ``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:a100:2,gpu:v100:2``, ``(null)``."""
    total = 0
    for item in re.split(r",(?![^()]*\))", gres):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def slurm_minutes(limit: str) -> Optional[int]:
    """Minutes in a SLURM time limit (``1-00:00:00``, ``2:00:00``, ``30:00``); None when infinite."""
    if limit.strip().lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = limit.rpartition("-")
    fields = [int(f) for f in clock.split(":")]
    while len(fields) < 3:
        fields.insert(0, 0)  # mm:ss, or m
    hours, minutes, seconds = fields[-3:]
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


def parse_sinfo(text: str, wanted: Optional[str]) -> Partition:
    """The partition ``wanted`` (None: the default one, starred by sinfo) from sinfo's rows."""
    rows = [line.split("|") for line in text.splitlines() if line.count("|") == SINFO_FORMAT.count("|")]
    names = list(dict.fromkeys(r[1].rstrip("*") for r in rows))
    name = wanted or next((r[1].rstrip("*") for r in rows if r[1].endswith("*")), None)
    if name is None:
        raise BrainMRIError(f"the cluster has no default partition; set slurm.partition (one of: {', '.join(names)})")
    mine = [r for r in rows if r[1].rstrip("*") == name]
    if not mine:
        raise BrainMRIError(f"slurm.partition={name}: no such partition (partitions: {', '.join(names) or 'none'})")
    nodes = {r[0]: NodeOffer(r[0], int(r[2]), int(re.sub(r"\D", "", r[3]) or 0), gres_gpus(r[4]), r[5]) for r in mine}
    sizes = mine[0][7].split("-")
    max_nodes = int(sizes[-1]) if sizes[-1].isdigit() else None
    return Partition(name, tuple(nodes.values()), slurm_minutes(mine[0][6]), max_nodes)


def read_partition(name: Optional[str]) -> Partition:
    """Ask sinfo what the partition ``name`` (None: the default) offers."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BrainMRIError(
            f"cannot ask SLURM what the partition offers (sinfo: {e}); "
            "set slurm.check_resources=false to submit unchecked"
        ) from None
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BrainMRIError(
            f"cannot ask SLURM what the partition offers (sinfo: {reason}); "
            "set slurm.check_resources=false to submit unchecked"
        )
    return parse_sinfo(proc.stdout, name)


def check_request(slurm: SlurmConfig, partition: Partition) -> None:
    """Raise a one-line error naming the ``slurm.*`` key to change when no node (or too few
    nodes) of ``partition`` can run the job."""
    tasks = slurm.tasks
    per_node_cpus = slurm.cpus_per_task * tasks
    where = f"partition {partition.name}"
    largest_cpus = max(n.cpus for n in partition.nodes)
    if per_node_cpus > largest_cpus:
        tasks_key = (
            f"slurm.tasks_per_node={tasks}" if slurm.tasks_per_node else f"{tasks} task(s) per node (one per GPU)"
        )
        raise BrainMRIError(
            f"slurm.cpus_per_task={slurm.cpus_per_task} x {tasks_key} = {per_node_cpus} CPUs per node; "
            f"the largest node in {where} has {largest_cpus}"
        )
    largest_gpus = max(n.gpus for n in partition.nodes)
    if slurm.gpus_per_node > largest_gpus:
        hint = "; slurm.gpus_per_node=0 runs on CPUs" if largest_gpus == 0 else ""
        raise BrainMRIError(
            f"slurm.gpus_per_node={slurm.gpus_per_node}: the largest node in {where} has {largest_gpus} GPU(s){hint}"
        )
    largest_mem = max(n.memory_mb for n in partition.nodes)
    if slurm.mem_gb is not None and slurm.mem_gb * 1024 > largest_mem:
        raise BrainMRIError(
            f"slurm.mem_gb={slurm.mem_gb:g}: the largest node in {where} has {largest_mem / 1024:.1f} GB"
        )
    fitting = [n for n in partition.nodes if fits(n, slurm)]
    if slurm.max_nodes > len(fitting):
        gpus = f" and {slurm.gpus_per_node} GPU(s)" if slurm.gpus_per_node else ""
        raise BrainMRIError(
            f"slurm.nodes={slurm.nodes}: {where} has {len(fitting)} node(s) with {per_node_cpus} CPU(s){gpus} per node"
        )
    if partition.max_nodes is not None and slurm.max_nodes > partition.max_nodes:
        raise BrainMRIError(f"slurm.nodes={slurm.nodes}: {where} allows at most {partition.max_nodes} node(s) per job")
    if partition.max_minutes is not None and slurm.timeout_min > partition.max_minutes:
        raise BrainMRIError(
            f"slurm.timeout_min={slurm.timeout_min}: {where} allows at most {partition.max_minutes} minutes"
        )


def fits(node: NodeOffer, slurm: SlurmConfig) -> bool:
    mem_ok = slurm.mem_gb is None or slurm.mem_gb * 1024 <= node.memory_mb
    return node.cpus >= slurm.cpus_per_task * slurm.tasks and node.gpus >= slurm.gpus_per_node and mem_ok


def check_partition(slurm: SlurmConfig) -> Optional[Partition]:
    """The partition the job goes to, after :func:`check_request`; None when not checked
    (a local executor, or ``slurm.check_resources=false``)."""
    if slurm.cluster != "slurm" or not slurm.check_resources:
        return None
    partition = read_partition(slurm.partition)
    check_request(slurm, partition)
    return partition


DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's own default


def parse_max_array_size(config: str) -> int:
    """``MaxArraySize`` from ``scontrol show config``: an array's indices must stay below it."""
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", config, re.M)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def max_array_size() -> int:
    """How many tasks one job array may hold on this cluster (SLURM's default when it does not say)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    return parse_max_array_size(out.stdout) if out.returncode == 0 else DEFAULT_MAX_ARRAY_SIZE
