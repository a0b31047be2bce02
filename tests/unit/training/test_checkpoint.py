"""brainmri/training/checkpoint.py: the train state, atomic checkpoints, resume, and best weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file

from brainmri.errors import CheckpointError
from brainmri.records import DatasetInfo, EpochRecord, RunResults
from brainmri.rundir import RunDir, read_jsonl
from brainmri.training.checkpoint import Checkpointer, TrainState, WeightsLabel
from brainmri.training.distributed import plain_model
from brainmri.training.ema import WeightAverage

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "run_v1"


def record(epoch: int, val_acc: float = 0.5, val_loss: float = 1.0) -> EpochRecord:
    return EpochRecord(epoch, 1.0, 0.5, 0.4, 100.0, 2.0, val_loss, val_acc, val_acc - 0.1, 1e-3, 2.5)


def test_train_state_round_trip_keeps_typed_history():
    state = TrainState(epoch=2, step=20, best_metric=0.8, best_epoch=2, history=[record(1), record(2, 0.8)])
    again = TrainState()
    again.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert again == state and isinstance(again.history[0], EpochRecord)


def test_train_state_reads_the_history_of_checkpoints_written_before_the_split():
    """0.1 stored the history as a JSON string inside train_state.json."""
    state = TrainState()
    state.load(FIXTURE / "checkpoints" / "epoch_0001")
    assert (state.epoch, state.step, state.best_epoch) == (1, 8, 1)
    assert state.history[0].epoch == 1 and state.history[0].train_loss == pytest.approx(1.3950119)


@pytest.mark.parametrize(
    "metric, values, best",
    [("val/acc", [0.5, 0.7, 0.6], 2), ("val/loss", [0.9, 0.7, 0.8], 2), ("val/macro_f1", [0.3, 0.3, 0.2], 1)],
)
def test_finish_epoch_keeps_the_best_by_the_metric_direction(metric, values, best):
    state = TrainState()
    flags = [
        state.finish_epoch(record(i + 1, val_acc=v + 0.1 if metric == "val/macro_f1" else v, val_loss=v), metric)
        for i, v in enumerate(values)
    ]
    assert state.best_epoch == best and flags[0] is True and state.epoch == 3
    assert state.best_record().epoch == best


def make_checkpointer(tmp_path: Path, keep: int = 2) -> tuple[Checkpointer, torch.nn.Module, Accelerator]:
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    info = DatasetInfo(
        ["a", "b", "c", "d"], {"train": [1, 1, 1, 1], "val": [1, 1, 1, 1], "test": None}, 8, 3, [0.5] * 3, [0.5] * 3
    )
    label = WeightsLabel("val/acc", "linear", "seed: 1\n", info)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()  # run preparation made it
    return Checkpointer(accelerator, run, label, keep), model, accelerator


def test_checkpoints_are_complete_pruned_and_mirrored_in_metrics(tmp_path):
    checkpointer, model, _ = make_checkpointer(tmp_path, keep=2)
    state = TrainState()
    for epoch, acc in enumerate([0.9, 0.5, 0.6, 0.7], start=1):
        if state.finish_epoch(record(epoch, acc), "val/acc"):
            checkpointer.write_best(model, state)
        state.step += 5
        checkpointer.save(state)
    run = checkpointer.run
    assert [e for e, _ in run.complete_checkpoints()] == [1, 3, 4]  # the newest two and the best
    assert not list(run.checkpoints.glob(".tmp-*"))
    assert [r["epoch"] for r in read_jsonl(run.metrics)] == [1, 2, 3, 4]
    with safe_open(str(run.best_weights), "pt") as f:
        meta = f.metadata()
    assert meta["epoch"] == "1" and meta["metric"] == "val/acc" and json.loads(meta["dataset"])["image_size"] == 8
    checkpointer.write_results(RunResults(1, "val/acc", 0.9, 1, "no", {"val/acc": 0.9}))
    assert json.loads(run.results.read_text())["test"] is None


def test_resume_restores_state_and_repairs_best_weights_from_another_epoch(tmp_path):
    checkpointer, model, _ = make_checkpointer(tmp_path)
    state = TrainState()
    for epoch, acc in enumerate([0.9, 0.5], start=1):
        if state.finish_epoch(record(epoch, acc), "val/acc"):
            checkpointer.write_best(model, state)
        checkpointer.save(state)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)  # the weights move on after each epoch
    # A kill after writing epoch 3's best weights, before its checkpoint: best.safetensors is ahead.
    state.finish_epoch(record(3, 0.95), "val/acc")
    checkpointer.write_best(model, state)
    (checkpointer.run.metrics).write_text("")
    resumed = TrainState()
    assert checkpointer.resume(resumed)
    assert (resumed.epoch, resumed.best_epoch) == (2, 1)
    with safe_open(str(checkpointer.run.best_weights), "pt") as f:
        assert f.metadata()["epoch"] == "1"
    assert [r["epoch"] for r in read_jsonl(checkpointer.run.metrics)] == [1, 2]


def test_best_weights_are_repaired_from_the_average_an_epoch_was_scored_on(tmp_path):
    """With train.ema the best epoch's weights are its average (ema.safetensors), even when the
    run is resumed without train.ema."""
    checkpointer, model, _ = make_checkpointer(tmp_path)
    checkpointer.average = WeightAverage(plain_model(checkpointer.accelerator, model), 0.9, torch.device("cpu"))
    state = TrainState()
    state.finish_epoch(record(1, 0.9), "val/acc")
    with torch.no_grad():
        checkpointer.average.module.weight.fill_(7.0)  # the average differs from the trained weights
    checkpointer.write_best(checkpointer.average.module, state)
    checkpointer.save(state)
    checkpointer.run.best_weights.unlink()  # lost: resume must write it again
    checkpointer.average = None
    assert checkpointer.resume(TrainState())
    repaired = load_file(str(checkpointer.run.best_weights))
    assert torch.equal(repaired["weight"], torch.full((4, 3), 7.0))


def test_resume_without_a_checkpoint_changes_nothing(tmp_path):
    checkpointer, _, _ = make_checkpointer(tmp_path)
    state = TrainState()
    assert not checkpointer.resume(state) and state == TrainState()


def test_a_checkpoint_without_train_state_is_refused(tmp_path):
    folder = tmp_path / "epoch_0001"
    shutil.copytree(FIXTURE / "checkpoints" / "epoch_0001", folder)
    (folder / TrainState.FILE).unlink()
    with pytest.raises(CheckpointError, match="train_state.json"):
        TrainState().load(folder)


def test_a_train_state_without_a_mid_epoch_position_loads_at_an_epoch_end():
    """train_state.json written before mid-epoch checkpoints has no batches/epoch_seconds."""
    state = TrainState()
    state.load_state_dict({"epoch": 3, "step": 30, "best_metric": 0.5, "best_epoch": 2, "history": []})
    assert (state.epoch, state.step, state.batches, state.epoch_seconds) == (3, 30, 0, 0.0)
    state.batches, state.epoch_seconds = 5, 1.5
    again = TrainState()
    again.load_state_dict(state.state_dict())
    assert (again.batches, again.epoch_seconds) == (5, 1.5)
