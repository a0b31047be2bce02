"""brainmri/training/elastic.py: the accumulation that keeps the global batch on fewer or more
ranks, and which checkpoint an attempt with another world size may resume from."""

from __future__ import annotations

import json

import pytest

from brainmri.errors import ConfigError
from brainmri.rundir import RunDir
from brainmri.training.elastic import plan_placement, read_saved_placement, resume_folder


def checkpoint(run: RunDir, epoch: int, batch: int = 0, **state) -> None:
    folder = run.checkpoint(epoch, batch)
    folder.mkdir(parents=True)
    (folder / "train_state.json").write_text(json.dumps({"epoch": epoch, "batches": batch, **state}))


@pytest.mark.parametrize(
    ("accum", "planned", "world", "expected"), [(1, 2, 1, 2), (1, 2, 2, 1), (2, 4, 2, 4), (3, 8, 4, 6), (2, 1, 2, 1)]
)
def test_the_global_batch_stays_what_the_plan_made_it(accum, planned, world, expected):
    placement = plan_placement(accum, planned, world)
    assert placement.grad_accum == expected
    assert placement.grad_accum * world == accum * planned  # batches per optimizer step, across ranks
    assert placement.changed == (world != planned)


def test_a_world_that_cannot_keep_the_global_batch_is_one_line():
    with pytest.raises(ConfigError, match=r"this attempt has 3 rank\(s\): no whole train.grad_accum keeps"):
        plan_placement(1, 4, 3)


def test_the_resume_line_names_nodes_when_they_are_known():
    assert plan_placement(1, 2, 1).describe(nodes=1) == "on 1 of 2 nodes, grad_accum 1 -> 2"
    assert plan_placement(1, 8, 4).describe(nodes=1) == "on 1 of 2 nodes, grad_accum 1 -> 2"  # 4 GPUs a node
    assert plan_placement(2, 4, 2).describe(nodes=None) == "on 2 of 4 ranks, grad_accum 2 -> 4"


def test_the_saved_plan_is_read_from_the_newest_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    assert read_saved_placement(run) is None
    checkpoint(run, 1)  # written before elastic node counts: neither number
    assert read_saved_placement(run).planned_world == 0
    checkpoint(run, 2, 3, world_size=2, ranks=1)
    saved = read_saved_placement(run)
    assert (saved.planned_world, saved.ranks) == (2, 1)


def test_a_mid_epoch_checkpoint_of_another_world_gives_way_to_the_newest_epoch_end(tmp_path):
    run = RunDir(tmp_path)
    checkpoint(run, 1, world_size=2, ranks=2)
    checkpoint(run, 2, world_size=2, ranks=2)
    checkpoint(run, 2, 7, world_size=2, ranks=2)
    assert resume_folder(run, world=2) == (run.checkpoint(2, 7), None)  # same ranks: continue mid-epoch
    folder, note = resume_folder(run, world=1)
    assert folder == run.checkpoint(2)
    assert note == (
        "the checkpoint at batch 7 of epoch 3 was written by 2 rank(s), this attempt has 1: "
        "epoch 3 restarts from its beginning"
    )


def test_without_an_epoch_end_a_foreign_mid_epoch_checkpoint_means_a_fresh_start(tmp_path):
    run = RunDir(tmp_path)
    checkpoint(run, 0, 5, world_size=2, ranks=2)
    folder, note = resume_folder(run, world=1)
    assert folder is None and "epoch 1 restarts from its beginning" in note
    assert resume_folder(RunDir(tmp_path / "empty"), world=1) == (None, None)
