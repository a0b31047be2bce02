"""Checkpoints of a run: saved atomically, resumed exactly, best weights and the run's
record files (``metrics.jsonl``, ``results.json``) kept consistent with them.

Ordering guarantees a kill at any moment loses at most the epoch in flight: best weights
and the checkpoint folder are renamed into place only when complete, and ``metrics.jsonl``
is rewritten from the history stored *in* the checkpoint, so a resumed run never repeats
or drops an epoch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from brainmri.data.samples import Sample
from brainmri.errors import CheckpointError
from brainmri.records import BudgetPlan, DatasetInfo, EpochRecord, InferenceSpec, Predictions, RunResults, is_better
from brainmri.reporting.model_card import write_model_card
from brainmri.rundir import RunDir, atomic_replace, atomic_write_json, atomic_write_text, write_jsonl
from brainmri.scoring.calibration import Calibration, stamp_weights, write_calibration
from brainmri.training.distributed import plain_model
from brainmri.training.elastic import STATE_FILE, resume_folder
from brainmri.training.ema import WeightAverage
from brainmri.weights import INFERENCE_KEY, verify_checkpoint_folder, without_compile_prefix

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What the loop itself must remember across a resume (saved inside each checkpoint)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batches: int = 0  # batches of the next epoch already trained (a mid-epoch checkpoint); 0 at epoch ends
    epoch_seconds: float = 0.0  # training time those batches took
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    history: list[EpochRecord] = field(default_factory=list)
    world_size: int = 0  # ranks the global batch is planned for (brainmri.training.elastic); 0: unknown
    ranks: int = 0  # ranks that wrote this checkpoint
    plan: Optional[BudgetPlan] = None  # train.budget's plan (brainmri.training.budget)
    used_seconds: float = 0.0  # wall clock this run has used, over its attempts, at this checkpoint

    # Stored as JSON beside Accelerate's files rather than registered with Accelerate, which
    # unpickles registered objects with weights_only=False: a checkpoint must hold no code.
    FILE = STATE_FILE

    def finish_epoch(self, record: EpochRecord, metric: str) -> bool:
        """Add a finished epoch; True when it is the best so far by ``metric``."""
        self.history.append(record)
        self.epoch = record.epoch
        value = record.value(metric)
        if not is_better(metric, value, self.best_metric):
            return False
        self.best_metric, self.best_epoch = value, record.epoch
        return True

    def best_record(self) -> EpochRecord:
        return next(r for r in self.history if r.epoch == self.best_epoch)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "batches": self.batches,
            "epoch_seconds": self.epoch_seconds,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "history": [r.to_json() for r in self.history],
            "world_size": self.world_size,
            "ranks": self.ranks,
            "plan": self.plan.to_json() if self.plan is not None else None,
            "used_seconds": self.used_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.batches = int(state.get("batches", 0))  # absent before mid-epoch checkpoints
        self.epoch_seconds = float(state.get("epoch_seconds", 0.0))
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        history = state["history"]
        if isinstance(history, str):  # checkpoints written before 0.2 stored the history as a JSON string
            history = json.loads(history)
        self.history = [EpochRecord.from_json(r) for r in history]
        self.world_size = int(state.get("world_size", 0))  # absent before elastic node counts
        self.ranks = int(state.get("ranks", 0))
        plan = state.get("plan")  # absent before train.budget
        self.plan = BudgetPlan.from_json(plan) if plan else None
        self.used_seconds = float(state.get("used_seconds", 0.0))

    def save(self, folder: Path) -> None:
        atomic_write_json(folder / self.FILE, self.state_dict())

    def load(self, folder: Path) -> None:
        path = folder / self.FILE
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder} has no {self.FILE}: it was not written by this brainmri")
        self.load_state_dict(json.loads(path.read_text()))


@dataclass(frozen=True)
class WeightsLabel:
    """What ``best.safetensors`` carries besides tensors: enough to rebuild and evaluate the
    model from that one file."""

    metric: str
    model: str
    config_yaml: str
    info: DatasetInfo
    spec: Optional[InferenceSpec] = None  # what predicting needs (the temperature is added after the test phase)


class Checkpointer:
    """Saves and restores the full training state of a run, and its best weights."""

    def __init__(
        self,
        accelerator: Accelerator,
        run: RunDir,
        label: WeightsLabel,
        keep: int,
        average: Optional[WeightAverage] = None,
    ):
        self.accelerator = accelerator
        self.average = average  # train.ema's weight average: saved beside the model
        self.run = run
        self.label = label
        self.keep = keep
        self.resumed_rows: Optional[torch.Tensor] = None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    ROWS = "epoch_rows.safetensors"  # a mid-epoch checkpoint's training predictions so far

    def save(self, state: TrainState, rows: Optional[torch.Tensor] = None) -> Path:
        """Full state into a temporary folder on every rank, then one atomic rename.

        At an epoch's end ``state.batches`` is 0; mid-epoch it counts the batches trained, and
        ``rows`` (every rank's, gathered) keeps the epoch's training predictions so far."""
        acc = self.accelerator
        started = time.perf_counter()
        state.ranks = acc.num_processes
        tmp = self.run.temp_checkpoint(state.epoch, state.batches)
        final = self.run.checkpoint(state.epoch, state.batches)
        if self.is_main:
            self.run.remove_temp_checkpoints()
            tmp.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if self.is_main:
            state.save(tmp)
            if self.average is not None:
                self.average.save(tmp)
            if rows is not None:
                save_file({"rows": rows.contiguous()}, str(tmp / self.ROWS))
        acc.wait_for_everyone()
        if self.is_main:
            atomic_replace(tmp, final)
            self.run.prune_checkpoints(self.keep, state.best_epoch)
            write_jsonl(self.run.metrics, [r.to_json() for r in state.history])
        acc.wait_for_everyone()
        if self.is_main and state.batches:
            size = sum(f.stat().st_size for f in final.iterdir() if f.is_file()) / 2**20
            where = f"batch {state.batches} of epoch {state.epoch + 1}"
            seconds = time.perf_counter() - started
            log.info("checkpoint at step %d (%s): %.1f MB in %.2f s, %s", state.step, where, size, seconds, final)
        return final

    def write_best(self, model: nn.Module, state: TrainState) -> None:
        """The best epoch's weights, from the live model (main process only)."""
        if self.is_main:
            self._write_weights(plain_model(self.accelerator, model).state_dict(), state.best_epoch, state.best_metric)

    def _write_weights(self, state_dict: dict, epoch: Optional[int], value: Optional[float]) -> None:
        tmp = self.run.best_weights.with_name(".best.safetensors.tmp")
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        metadata = {
            "epoch": str(epoch),
            "metric": self.label.metric,
            "value": str(value),
            "model": self.label.model,
            "dataset": json.dumps(self.label.info.to_json()),
            "config": self.label.config_yaml,
        }
        if self.label.spec is not None:
            metadata[INFERENCE_KEY] = json.dumps(self.label.spec.to_json())
        save_file(tensors, str(tmp), metadata=metadata)
        atomic_replace(tmp, self.run.best_weights)

    def write_results(self, results: RunResults) -> None:
        """``results.json``: written last, it marks the run finished; then ``MODEL_CARD.md``."""
        if self.is_main:
            atomic_write_json(self.run.results, results.to_json())
            if self.run.config.is_file():
                write_model_card(self.run.path)

    def write_validation(
        self, predictions: Predictions, samples: Sequence[Sample], class_names: Sequence[str], calibration: Calibration
    ) -> None:
        """The best weights' validation probabilities, one row per image (with k-fold CV:
        the fold's out-of-fold predictions), and the temperature fitted on them."""
        if not self.is_main:
            return
        probs = predictions.logits.float().softmax(dim=1).cpu()
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["file", "label", *[f"p_{name}" for name in class_names]])
        for sample, row in zip(samples, probs.tolist()):
            writer.writerow([sample.path, class_names[sample.label], *[f"{p:.6f}" for p in row]])
        atomic_write_text(self.run.val_predictions, text.getvalue())
        write_calibration(self.run.calibration, calibration)
        stamp_weights(self.run.best_weights, calibration)

    def load_best(self, model: nn.Module) -> None:
        self.accelerator.wait_for_everyone()
        plain_model(self.accelerator, model).load_state_dict(
            without_compile_prefix(load_file(str(self.run.best_weights), device="cpu"))
        )

    def resume(self, state: TrainState) -> bool:
        """Load the newest complete checkpoint into the prepared objects and ``state``.

        Returns False (and changes nothing) when the run has no complete checkpoint yet, or
        only a mid-epoch one of the first epoch written by another number of ranks.
        """
        path, note = resume_folder(self.run, self.accelerator.num_processes)
        if note:
            log.warning("%s", note)
        if path is None:
            log.info("resume=auto: no usable checkpoint in %s, starting from epoch 1", self.run.path)
            return False
        verify_checkpoint_folder(path)  # refuse planted pickles before Accelerate opens anything
        self.accelerator.load_state(str(path))
        state.load(path)
        if self.average is not None and not self.average.load(path):
            # Its first update copies the resumed weights (timm's warm-up: decay 0 at update 1).
            log.warning("checkpoint %s has no weight average (train.ema was off): it starts from these weights", path)
        rows = path / self.ROWS
        # The epoch's training predictions so far travel on the main process only: the gather
        # at the epoch's end puts every rank's together again, whatever the world size.
        self.resumed_rows = load_file(str(rows))["rows"] if rows.is_file() and self.is_main else None
        if self.is_main:
            self.run.remove_temp_checkpoints()
            # A kill between checkpoint and metrics.jsonl leaves the file a line short or
            # long; the history inside the checkpoint is the truth.
            write_jsonl(self.run.metrics, [r.to_json() for r in state.history])
            self._repair_best_weights(state)
        self.accelerator.wait_for_everyone()
        where = f", batch {state.batches} of epoch {state.epoch + 1}" if state.batches else ""
        log.info("resumed from %s (epoch %d%s)", path, state.epoch, where)
        return True

    def _repair_best_weights(self, state: TrainState) -> None:
        """Make best.safetensors match the checkpoint's idea of the best epoch.

        A kill after writing best weights but before the checkpoint commit leaves weights
        from an epoch the resumed history does not contain; the best epoch's own
        checkpoint (always kept) has the right ones.
        """
        if state.best_epoch is None:
            return
        current = None
        if self.run.best_weights.exists():
            with safe_open(str(self.run.best_weights), "pt") as f:
                current = int((f.metadata() or {}).get("epoch", -1))
        if current == state.best_epoch:
            return
        folder = self.run.checkpoint(state.best_epoch)
        # An epoch trained with train.ema was scored on the average, whatever the config says now.
        source = folder / WeightAverage.FILE
        if not source.exists():
            source = folder / "model.safetensors"
        if not source.exists():
            raise CheckpointError(f"best epoch {state.best_epoch} has no checkpoint at {source}")
        self._write_weights(without_compile_prefix(load_file(str(source))), state.best_epoch, state.best_metric)
