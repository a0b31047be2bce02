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
from brainmri.data.transforms import resolve_augment
from brainmri.models import check_pretrained_source, count_parameters
from brainmri.records import EpochRecord, Predictions, RunResults, TrainEpoch
from brainmri.reporting.reporter import Reporter
from brainmri.scoring.calibration import calibrated_metrics, fit_temperature
from brainmri.scoring.intervals import bootstrap_intervals, intervals_json
from brainmri.scoring.metrics import classification_metrics
from brainmri.scoring.tta import tta_logits
from brainmri.training.checkpoint import Checkpointer, TrainState, WeightsLabel
from brainmri.training.distributed import (
    PredictionBuffer,
    RankLost,
    StopSignal,
    TrainingInterrupted,
    collective_failure,
    full_precision_forward,
    make_accelerator,
    on_main,
    plain_model,
    preparation_group,
)
from brainmri.training.elastic import placement_for
from brainmri.training.heartbeat import Heartbeat, describe_loss, find_quiet_rank
from brainmri.training.preparation import PreparedRun, prepare_run
from brainmri.training.schedule import Schedule
from brainmri.training.step import Training, build_training
from brainmri.weights import inference_spec

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
        node: Optional[str] = None,
        nodes: Optional[int] = None,
        started: Optional[float] = None,
        slurm_seconds_left: Optional[float] = None,
    ):
        """``wandb_mode`` is ``tracking.wandb`` with ``auto`` already resolved by the caller
        (see :func:`brainmri.reporting.tracking.resolve_mode`); an unresolved ``auto`` means offline.
        ``stop_event``, set from any rank (a signal handler, say), makes all ranks stop together
        at the next step with :class:`TrainingInterrupted`. ``node``: this process's node name
        (SLURM's), for the heartbeat that names a lost rank; default the host name. ``nodes``:
        how many nodes this attempt runs on, for the elastic resume line. ``started``: when the
        command started (``time.time()``), the zero of ``train.budget``; ``slurm_seconds_left``:
        the job's time left then, for ``train.budget=slurm``."""
        self.cfg = cfg
        self.show_progress = show_progress
        mode = wandb_mode or cfg.tracking.wandb
        self.wandb_mode = "offline" if mode == "auto" else mode
        self.stop_event = stop_event
        self.node = node
        self.nodes = nodes
        self.started = time.time() if started is None else started
        self.slurm_seconds_left = slurm_seconds_left
        self.state = TrainState()
        self.heartbeat: Optional[Heartbeat] = None
        # Made by setup(); close() releases whatever setup got as far as making.
        self.accelerator: Optional[Accelerator] = None
        self.reporter: Optional[Reporter] = None

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """The accelerator, the prepared run folder and data, the step, and the saved state."""
        cfg = self.cfg
        self.accelerator = acc = make_accelerator(cfg.train, cfg.seed)
        set_seed(cfg.seed, device_specific=True)
        prep = preparation_group(acc)
        source = on_main(acc, lambda: check_pretrained_source(cfg.model), prep)  # one line, before any data is read
        if source:
            log.info("pretrained %s weights from %s", cfg.model.name, source)
        self.prepared: PreparedRun = prepare_run(cfg, acc, prep)
        placement = placement_for(
            self.prepared.run, self.prepared.mode, cfg.train.grad_accum, cfg.train.world_size, acc.num_processes
        )
        acc.gradient_accumulation_steps = placement.grad_accum
        self.training: Training = build_training(cfg, acc, self.prepared.splits, self.prepared.info, prep)
        rolling = cfg.train.checkpoint_minutes > 0
        self.stop = StopSignal(acc, self.stop_event, cfg.train.collective_timeout, rolling=rolling)
        info = self.prepared.info
        spec = inference_spec(cfg, info, resolve_augment(cfg.augment).normalize)
        label = WeightsLabel(cfg.train.select_metric, cfg.model.name, config_lib.to_yaml(cfg), info, spec)
        self.checkpointer = Checkpointer(
            acc, self.prepared.run, label, cfg.train.keep_checkpoints, self.training.step.average
        )
        resumed = self.prepared.mode == "resume" and self.checkpointer.resume(self.state)
        self.state.world_size = placement.planned_world
        if placement.changed and acc.is_main_process:
            log.warning("%s %s", "resumed" if resumed else "started", placement.describe(self.nodes))
        self.schedule = Schedule(
            acc, cfg.train, cfg.optim, self.training, self.state, self.started, self.slurm_seconds_left
        )
        run, metric = self.prepared.run, cfg.train.select_metric
        self.reporter = Reporter(acc, run, cfg.tracking, cfg.figures, self.wandb_mode, self.show_progress, metric)
        self.reporter.open(config_lib.to_dict(cfg))
        parameters = count_parameters(plain_model(acc, self.model))
        self.reporter.describe(cfg.model.name, parameters, self.prepared.splits)
        if acc.num_processes > 1:
            self.heartbeat = Heartbeat(self.prepared.run.path, acc.process_index, node=self.node).start()
        if not resumed:  # its augmentation preview draws random numbers: never after a resume restored them
            self.reporter.start(self.prepared.splits, self.prepared.info, cfg.data, cfg.augment, cfg.seed)
        self._checkpointed_at = time.perf_counter()
        self._checkpointed = (self.state.epoch, self.state.batches)  # the position on disk already

    @property
    def model(self) -> nn.Module:
        return self.training.model

    # ------------------------------------------------------------------ phases

    def train_epoch(self, epoch: int) -> TrainEpoch:
        """One pass over the training split (after a mid-epoch resume, the rest of it: the
        same sample order, Accelerate skipping the batches already trained); metrics over every
        sample of the epoch, across ranks."""
        acc, step = self.accelerator, self.training.step
        loader = self.training.train_loader
        self.model.train()
        loader.set_epoch(epoch)
        buffer = PredictionBuffer(len(self.prepared.info.class_names))
        done, seconds_before = self.state.batches, self.state.epoch_seconds
        if done and self.checkpointer.resumed_rows is not None:
            buffer.add_rows(self.checkpointer.resumed_rows)
        batches = acc.skip_first_batches(loader, done) if done else loader
        self.schedule.new_epoch()
        self.training.augment_epoch(epoch, self.schedule.epochs)
        with self.reporter.epoch_progress(
            epoch, self.schedule.epochs, self.schedule.epoch_batches(epoch) - done
        ) as meter:
            for images, targets, index in batches:
                self._between_steps(buffer, seconds_before + time.perf_counter() - meter.start)
                out = step(images, targets)
                self.state.step += int(out.stepped)
                self.state.batches += 1
                if self.heartbeat is not None:
                    self.heartbeat.step(self.state.step)
                buffer.add(index, out.logits, targets, out.per_sample)
                self.schedule.after_step()
                meter.add(len(targets))
                self.reporter.step(meter, self.state.step, out.stepped, out.loss, step.lr)
                cut = self.schedule.epoch_batches(epoch)
                if out.stepped and cut < len(loader) and self.state.batches >= cut:
                    # The budget's plan ends this last epoch here, every rank at the same step.
                    # Accelerate's loader leaves the gradient state only when run to its end.
                    batches.end()
                    break
        seconds = seconds_before + time.perf_counter() - meter.start
        self.state.batches, self.state.epoch_seconds = 0, 0.0
        self.checkpointer.resumed_rows = None
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
            samples=len(predictions.targets),
        )

    def evaluate(self, loader: DataLoader, split: str) -> dict:
        """Loss and every metric over the whole split (:func:`classification_metrics`), each
        sample counted once across ranks; ``size`` is the number of samples."""
        return self.score(self.predict(loader), split)

    @torch.no_grad()  # also keeps DDP from expecting a backward that only rank 0's Grad-CAM would run
    def predict(self, loader: DataLoader, tta: str = "none") -> Predictions:
        """The logits of the model validation scores (the weight average with ``train.ema``) for a
        whole split, each sample once across ranks, in split order; ``tta=hflip`` averages the
        logits of each image and its mirror."""
        model, step = self.training.eval_model, self.training.step
        if step.average is not None:
            step.average.share()
        model.eval()
        buffer = PredictionBuffer(len(self.prepared.info.class_names))
        plain_ce = nn.CrossEntropyLoss(reduction="none")  # unweighted, unsmoothed: comparable across recipes
        for images, targets, index in loader:
            images = step.prepare(images, self.training.eval_transform)  # in fp32, as without train.ema
            with self.training.eval_precision():
                logits = tta_logits(model, images, tta)
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
            train_samples=train.samples,
            ranks=self.accelerator.num_processes,
            grad_accum=self.accelerator.gradient_accumulation_steps,
        )
        if self.state.finish_epoch(record, self.cfg.train.select_metric):
            self.checkpointer.write_best(self.training.eval_model, self.state)
        self.state.used_seconds = self.schedule.used_seconds()
        self.checkpointer.save(self.state)
        self._checkpointed_at, self._checkpointed = time.perf_counter(), (self.state.epoch, 0)
        return record

    def test(self) -> RunResults:
        """With the best weights (and ``train.tta``): fit the temperature on validation
        (written with the validation probabilities), then score the test split, raw and
        calibrated, and write results.json. A run without validation has no temperature."""
        self.checkpointer.load_best(self.training.eval_model)
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
            budget=self.state.plan,
        )
        if self.training.test_loader is not None:
            predictions = self.predict(self.training.test_loader, tta)
            metrics = self.score(predictions, "test")
            results.test_size = metrics.pop("size")
            preds = predictions.logits.argmax(dim=1).cpu().numpy()
            found = bootstrap_intervals(predictions.targets.cpu().numpy(), preds, len(self.prepared.info.class_names))
            metrics["intervals"] = intervals_json(found, "test")
            if calibration is not None:
                metrics.update(calibrated_metrics(predictions, calibration, "test"))
            results.test = metrics
        results.wall_seconds = self.schedule.used_seconds()
        self.checkpointer.write_results(results)
        return results

    def close(self) -> None:
        """End W&B, the heartbeat and the process group, whatever setup got as far as making."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.reporter is not None:
            self.reporter.close()
        if self.accelerator is not None:
            self.accelerator.end_training()

    # ------------------------------------------------------------------ the loop

    def fit(self) -> RunResults:
        """Train every remaining epoch, then test the best model."""
        try:
            self.setup()
            while self.state.epoch < self.schedule.epochs:
                epoch, started, lr = self.state.epoch, time.perf_counter(), self.training.step.lr
                train = self.train_epoch(epoch)
                val = self.evaluate(self.training.val_loader, "val") if self.training.val_loader is not None else None
                record = self.finish_epoch(epoch, train, val, lr, started)
                self.reporter.epoch(record, self.state.history, self.state.best_epoch, self.schedule.epochs)
                self.schedule.after_epoch(time.perf_counter() - started)
            results = self.test()
            self.reporter.end(results, self.state.history)
            normalize = resolve_augment(self.cfg.augment).normalize
            with full_precision_forward(plain_model(self.accelerator, self.training.eval_model)) as model:
                self.reporter.gradcam(model, self.prepared.splits, self.prepared.info, normalize)
            return results
        except TrainingInterrupted as e:
            log.warning("training stopped at epoch %d: %s", self.state.epoch + 1, e)
            raise
        except RuntimeError as e:
            lost = self._lost_rank(e)
            if lost is None:
                raise
            raise RankLost(lost) from None
        finally:
            self.close()

    def _lost_rank(self, error: RuntimeError) -> Optional[str]:
        """Who a failed collective lost, from the heartbeats; None when it was no collective
        failure or every rank still beats (then the error is a bug and keeps its traceback)."""
        if self.heartbeat is None or not collective_failure(error):
            return None
        beat = find_quiet_rank(self.prepared.run.path, self.accelerator.process_index)
        if beat is None:
            return None
        return f"{describe_loss(beat, time.time(), self.state.step)}; noticed by rank {self.accelerator.process_index}"

    def _between_steps(self, buffer: PredictionBuffer, seconds: float) -> None:
        """Before each optimizer step: stop, every rank together, after a checkpoint at this very
        step; or write the rolling checkpoint when ``train.checkpoint_minutes`` have passed.

        Only where an optimizer step begins: a checkpoint never splits an accumulation. Before
        an epoch's first batch the previous epoch's checkpoint is this state already.
        """
        state = self.state
        if state.batches % self.accelerator.gradient_accumulation_steps:
            return
        minutes = self.cfg.train.checkpoint_minutes
        due = minutes > 0 and time.perf_counter() - self._checkpointed_at >= 60 * minutes
        stop, save = self.stop.poll(due)
        if (stop or save) and state.batches and self._checkpointed != (state.epoch, state.batches):
            state.epoch_seconds, state.used_seconds = seconds, self.schedule.used_seconds()
            self.checkpointer.save(state, buffer.gather_rows(self.accelerator))
            self._checkpointed_at, self._checkpointed = time.perf_counter(), (state.epoch, state.batches)
        if stop:
            where = (
                f"batch {state.batches} of epoch {state.epoch + 1}"
                if state.batches
                else f"the end of epoch {state.epoch}"
            )
            raise TrainingInterrupted(f"stop requested at step {state.step}; resume=auto continues from {where}")
