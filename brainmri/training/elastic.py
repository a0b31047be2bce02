"""Elastic node counts: the gradient accumulation that keeps a run's global batch on however
many ranks this attempt got, and the checkpoint such an attempt may resume from.

A job submitted with ``slurm.nodes=1-2`` may start, or come back after a lost node, on fewer
nodes than it was planned for. The global batch (``train.batch_size`` x planned ranks x
``train.grad_accum``) and so the number of optimizer steps per epoch and the learning-rate
schedule stay those of the plan: only the accumulation changes. A mid-epoch checkpoint
written by a different number of ranks cannot continue its epoch (each rank's share of the
sample order depends on the world size), so such an attempt restarts that epoch from the
newest epoch-end checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from brainmri.errors import ConfigError
from brainmri.rundir import RunDir

STATE_FILE = "train_state.json"  # TrainState.FILE, read here without loading a checkpoint


@dataclass(frozen=True)
class Placement:
    """The ranks a run was planned for, the ranks it has now, and the accumulation between."""

    planned_world: int
    world: int
    grad_accum: int  # per optimizer step, on this attempt's ranks
    base_accum: int  # train.grad_accum: the accumulation on the planned ranks

    @property
    def changed(self) -> bool:
        return self.world != self.planned_world

    def describe(self, nodes: Optional[int]) -> str:
        """``on 1 of 2 nodes, grad_accum 1 -> 2`` (ranks when the node count is unknown)."""
        if nodes and self.world % nodes == 0:
            per_node = self.world // nodes
            where = f"on {nodes} of {max(1, self.planned_world // per_node)} nodes"
        else:
            where = f"on {self.world} of {self.planned_world} ranks"
        return f"{where}, grad_accum {self.base_accum} -> {self.grad_accum}"


def plan_placement(grad_accum: int, planned_world: int, world: int) -> Placement:
    """The accumulation that keeps ``grad_accum`` x ``planned_world`` batches per optimizer step."""
    total = grad_accum * planned_world
    if total % world:
        raise ConfigError(
            f"this attempt has {world} rank(s): no whole train.grad_accum keeps the global batch planned for "
            f"{planned_world} rank(s) x train.grad_accum={grad_accum}; choose slurm.nodes whose counts divide it"
        )
    return Placement(planned_world, world, total // world, grad_accum)


def placement_for(run: RunDir, mode: str, grad_accum: int, world_size: Optional[int], world: int) -> Placement:
    """This attempt's placement. The plan is the checkpoint's when resuming (``mode``), else
    ``train.world_size``, else this first start's ranks."""
    saved = read_saved_placement(run) if mode == "resume" else None
    planned = (saved.planned_world if saved else 0) or world_size or world
    return plan_placement(grad_accum, planned, world)


@dataclass(frozen=True)
class SavedPlacement:
    """What the newest checkpoint says about ranks: the plan, and how many wrote it."""

    planned_world: int
    ranks: int  # ranks that wrote the newest checkpoint


def read_saved_placement(run: RunDir) -> Optional[SavedPlacement]:
    """From the newest complete checkpoint's train state; None for a run without one.
    Checkpoints from before elastic runs know neither number: 0."""
    latest = run.latest_checkpoint()
    if latest is None:
        return None
    state = json.loads((latest[1] / STATE_FILE).read_text())
    return SavedPlacement(int(state.get("world_size", 0)), int(state.get("ranks", 0)))


def resume_folder(run: RunDir, world: int) -> tuple[Optional[Path], Optional[str]]:
    """The checkpoint this attempt resumes from, and a note when it is not the newest: a
    mid-epoch checkpoint written by another number of ranks gives way to the newest epoch end."""
    found = run.all_checkpoints()
    if not found:
        return None, None
    (epoch, batch), newest = found[-1]
    if not batch:
        return newest, None
    ranks = int(json.loads((newest / STATE_FILE).read_text()).get("ranks", 0))
    if ranks in (0, world):
        return newest, None
    ends = run.complete_checkpoints()
    fallback = ends[-1][1] if ends else None
    note = (
        f"the checkpoint at batch {batch} of epoch {epoch + 1} was written by {ranks} rank(s), this attempt has "
        f"{world}: epoch {epoch + 1} restarts from its beginning"
    )
    return fallback, note
