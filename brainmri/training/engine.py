"""The training engine: one class, plain phases, one loop (Hugging Face Accelerate).

``Trainer(cfg).fit()`` runs :meth:`~Trainer.setup`, then for each epoch
:meth:`~Trainer.train_epoch`, :meth:`~Trainer.evaluate` and a checkpoint, then
:meth:`~Trainer.test` with the best weights, then :meth:`~Trainer.close`. The rooms around
the loop are their own modules: run preparation (:mod:`brainmri.training.preparation`), the step
(:mod:`brainmri.training.step`), checkpoints (:mod:`brainmri.training.checkpoint`), what people see
(:mod:`brainmri.reporting.reporter`) and what all ranks share (:mod:`brainmri.training.distributed`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader

from brainmri import config as config_lib
from brainmri.config import Config
from brainmri.models import check_pretrained_source, count_parameters
from brainmri.records import EpochRecord, Predictions, RunResults, TrainEpoch
from brainmri.reporting.reporter import Reporter
from brainmri.scoring.calibration import calibrated_metrics, fit_temperature
from brainmri.scoring.metrics import classification_metrics
from brainmri.scoring.tta import tta_logits
from brainmri.training.checkpoint import Checkpointer, TrainState, WeightsLabel
from brainmri.training.distributed import (
    PredictionBuffer,
    StopSignal,
    TrainingInterrupted,
    make_accelerator,
    on_main,
    plain_model,
)
from brainmri.training.optim import fast_forward
from brainmri.training.preparation import PreparedRun, prepare_run
from brainmri.training.step import Training, build_training

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainingInterrupted"]


class Trainer:
    """Trains one run described by a :class:`Config` into its run directory."""

    def __init__(
        self,
        cfg: Config,
        show_progress: bool = True,
        wandb_mode: Optional[str] = None,
        stop_event: Optional[threading.Event] = None,
    ):
        """``wandb_mode`` is ``tracking.wandb`` with ``auto`` already resolved by the caller
        (see :func:`brainmri.reporting.tracking.resolve_mode`); an unresolved ``auto`` means offline.
        ``stop_event``, set from any rank (a signal handler, say), makes all ranks stop together
        at the next step with :class:`TrainingInterrupted`."""
        self.cfg = cfg
        self.show_progress = show_progress
        mode = wandb_mode or cfg.tracking.wandb
        self.wandb_mode = "offline" if mode == "auto" else mode
        self.stop_event = stop_event
        self.state = TrainState()
        # Made by setup(); close() releases whatever setup got as far as making.
        self.accelerator: Optional[Accelerator] = None
        self.reporter: Optional[Reporter] = None

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """The accelerator, the prepared run folder and data, the step, and the saved state."""
        cfg = self.cfg
        self.accelerator = acc = make_accelerator(cfg.train)
        set_seed(cfg.seed, device_specific=True)
        source = on_main(acc, lambda: check_pretrained_source(cfg.model))  # one line, before any data is read
        if source:
            log.info("pretrained %s weights from %s", cfg.model.name, source)
        self.prepared: PreparedRun = prepare_run(cfg, acc)
        self.training: Training = build_training(cfg, acc, self.prepared.splits, self.prepared.info)
        self.stop = StopSignal(acc, self.stop_event, cfg.train.collective_timeout)
        label = WeightsLabel(cfg.train.select_metric, cfg.model.name, config_lib.to_yaml(cfg), self.prepared.info)
        self.checkpointer = Checkpointer(acc, self.prepared.run, label, cfg.train.keep_checkpoints)
        if self.prepared.mode == "resume" and self.checkpointer.resume(self.state):
            total = self.training.steps_per_epoch * cfg.train.epochs
            fast_forward(self.training.step.scheduler, self.state.step, total)
        self.reporter = Reporter(
            acc,
            self.prepared.run,
            cfg.tracking,
            cfg.figures,
            self.wandb_mode,
            self.show_progress,
            cfg.train.select_metric,
        )
        self.reporter.open(config_lib.to_dict(cfg))
        parameters = count_parameters(plain_model(acc, self.model))
        self.reporter.describe(cfg.model.name, parameters, self.prepared.splits)
        if self.state.epoch == 0:
            self.reporter.start(self.prepared.splits, self.prepared.info, cfg.data, cfg.augment, cfg.seed)

    @property
    def model(self) -> nn.Module:
        return self.training.model

    # ------------------------------------------------------------------ phases

    def train_epoch(self, epoch: int) -> TrainEpoch:
        """One pass over the training split; metrics over every sample, across ranks."""
        acc, step = self.accelerator, self.training.step
        loader = self.training.train_loader
        self.model.train()
        loader.set_epoch(epoch)
        buffer = PredictionBuffer(len(self.prepared.info.class_names))
        with self.reporter.epoch_progress(epoch, self.cfg.train.epochs, len(loader)) as meter:
            for images, targets, index in loader:
                self._check_stop()
                out = step(images, targets)
                self.state.step += int(out.stepped)
                buffer.add(index, out.logits, targets, out.per_sample)
                meter.add(len(targets))
                self.reporter.step(meter, self.state.step, out.stepped, out.loss, step.lr)
        seconds = time.perf_counter() - meter.start
        predictions = buffer.gather(acc)
        metrics = classification_metrics(
            predictions.logits, predictions.targets, self.prepared.info.class_names, "train"
        )
        return TrainEpoch(
            loss=float(predictions.losses.mean()),
            acc=metrics["train/acc"],
            macro_f1=metrics["train/macro_f1"],
            throughput=len(predictions.targets) / seconds,
            seconds=seconds,
        )

    def evaluate(self, loader: DataLoader, split: str) -> dict:
        """Loss and every metric over the whole split (:func:`classification_metrics`), each
        sample counted once across ranks; ``size`` is the number of samples."""
        return self.score(self.predict(loader), split)

    @torch.no_grad()  # also keeps DDP from expecting a backward that only rank 0's Grad-CAM would run
    def predict(self, loader: DataLoader, tta: str = "none") -> Predictions:
        """The model's logits for a whole split, each sample once across ranks, in split order;
        ``tta=hflip`` averages the logits of each image and its mirror."""
        self.model.eval()
        step = self.training.step
        buffer = PredictionBuffer(len(self.prepared.info.class_names))
        plain_ce = nn.CrossEntropyLoss(reduction="none")  # unweighted, unsmoothed: comparable across recipes
        for images, targets, index in loader:
            logits = tta_logits(self.model, step.prepare(images, self.training.eval_transform), tta)
            buffer.add(index, logits, targets, plain_ce(logits, targets))
        return buffer.gather(self.accelerator)

    def score(self, predictions: Predictions, split: str) -> dict:
        metrics = classification_metrics(predictions.logits, predictions.targets, self.prepared.info.class_names, split)
        metrics[f"{split}/loss"] = float(predictions.losses.mean())
        metrics["size"] = len(predictions.targets)
        return metrics

    def finish_epoch(
        self, epoch: int, train: TrainEpoch, val: Optional[dict], lr: float, started: float
    ) -> EpochRecord:
        """The epoch's record: kept in the state, its weights kept if best, all checkpointed.
        ``val`` is None for a run without validation."""
        gpu_peak = None
        if self.accelerator.device.type == "cuda":
            gpu_peak = torch.cuda.max_memory_allocated(self.accelerator.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.accelerator.device)
        val = val or {}
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=train.loss,
            train_acc=train.acc,
            train_macro_f1=train.macro_f1,
            throughput=train.throughput,
            train_time=train.seconds,
            val_loss=val.get("val/loss"),
            val_acc=val.get("val/acc"),
            val_macro_f1=val.get("val/macro_f1"),
            lr=lr,
            epoch_time=time.perf_counter() - started,
            gpu_mem_peak_gb=gpu_peak,
        )
        if self.state.finish_epoch(record, self.cfg.train.select_metric):
            self.checkpointer.write_best(self.model, self.state)
        self.checkpointer.save(self.state)
        return record

    def test(self) -> RunResults:
        """With the best weights (and ``train.tta``): fit the temperature on validation
        (written with the validation probabilities), then score the test split, raw and
        calibrated, and write results.json. A run without validation has no temperature."""
        self.checkpointer.load_best(self.model)
        tta = self.cfg.train.tta
        calibration = None
        if self.training.val_loader is not None:
            val = self.predict(self.training.val_loader, tta)
            calibration = fit_temperature(val.logits, val.targets)
            self.checkpointer.write_validation(
                val, self.prepared.splits.val, self.prepared.info.class_names, calibration
            )
        best = self.state.best_record()
        results = RunResults(
            best_epoch=best.epoch,
            select_metric=self.cfg.train.select_metric,
            best_value=best.value(self.cfg.train.select_metric),
            world_size=self.accelerator.num_processes,
            mixed_precision=self.accelerator.mixed_precision,
            best_val=best.val_metrics(),
            tta=tta,
        )
        if self.training.test_loader is not None:
            predictions = self.predict(self.training.test_loader, tta)
            metrics = self.score(predictions, "test")
            results.test_size = metrics.pop("size")
            if calibration is not None:
                metrics.update(calibrated_metrics(predictions, calibration, "test"))
            results.test = metrics
        self.checkpointer.write_results(results)
        return results

    def close(self) -> None:
        """End W&B and the process group, whatever setup got as far as making."""
        if self.reporter is not None:
            self.reporter.close()
        if self.accelerator is not None:
            self.accelerator.end_training()

    # ------------------------------------------------------------------ the loop

    def fit(self) -> RunResults:
        """Train every remaining epoch, then test the best model."""
        try:
            self.setup()
            for epoch in range(self.state.epoch, self.cfg.train.epochs):
                started, lr = time.perf_counter(), self.training.step.lr
                train = self.train_epoch(epoch)
                self._check_stop()
                val = self.evaluate(self.training.val_loader, "val") if self.training.val_loader is not None else None
                record = self.finish_epoch(epoch, train, val, lr, started)
                self.reporter.epoch(record, self.state.history, self.state.best_epoch, self.cfg.train.epochs)
            results = self.test()
            self.reporter.end(results, self.state.history)
            self.reporter.gradcam(self._plain_model(), self.prepared.splits, self.prepared.info)
            return results
        except TrainingInterrupted as e:
            log.warning("training stopped at epoch %d: %s", self.state.epoch + 1, e)
            raise
        finally:
            self.close()

    def _check_stop(self) -> None:
        """Every rank raises together when any rank was asked to stop (see StopSignal)."""
        if self.stop.requested():
            raise TrainingInterrupted(
                f"stop requested at step {self.state.step}; resume continues after epoch {self.state.epoch}"
            )

    def _plain_model(self) -> nn.Module:
        # Without Accelerate's autocast wrapper or the compile wrapper: Grad-CAM reads
        # activations as fp32 numpy arrays through hooks on the model's own layers.
        return plain_model(self.accelerator, self.model)
