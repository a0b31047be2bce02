"""What a run shows people: log lines, the progress bar, figures and W&B, from the main process.

A :class:`Reporter` is built on every rank, but only the main process's does anything: the
training loop calls it unconditionally and never asks which rank it is on. It reports at
four moments: the start (class balance, the augmentation the run trains with), each step
(progress bar, step-level W&B logs), each epoch (W&B, curves, one log line) and the end
(confusion matrix, Grad-CAM, the W&B summary).
"""

from __future__ import annotations

import functools
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

import torch
from accelerate import Accelerator
from torch import nn

from brainmri.config import DataConfig, FiguresConfig, TrackingConfig
from brainmri.data.intensity import PER_IMAGE
from brainmri.data.loaders import preview_augmentation
from brainmri.data.samples import DatasetSplits, first_per_class
from brainmri.data.transforms import resolve_augment
from brainmri.records import DatasetInfo, EpochRecord, RunResults
from brainmri.reporting import cam, figures
from brainmri.reporting.tracking import Tracker
from brainmri.rundir import RunDir

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def main_only(method: F) -> F:
    """The method runs on the main process; elsewhere it returns None at once."""

    @functools.wraps(method)
    def wrapper(self: "Reporter", *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs) if self.active else None

    return wrapper  # type: ignore[return-value]


class StepMeter:
    """Images per second within one epoch, and when to read the loss back from the device.

    Reading the loss waits for the device, so it happens only every ``log_every``
    optimizer steps and at the first batch (so the bar never shows "nan"): a read per
    step would stall a GPU's queue once per step.
    """

    def __init__(self, log_every: int, world_size: int):
        self.log_every = log_every
        self.world_size = world_size
        self.start = time.perf_counter()
        self.seen = 0
        self.batches = 0

    def add(self, batch_size: int) -> None:
        self.seen += batch_size * self.world_size
        self.batches += 1

    def rate(self) -> float:
        return self.seen / max(1e-9, time.perf_counter() - self.start)

    def log_now(self, optimizer_step: int, stepped: bool) -> bool:
        return stepped and optimizer_step % self.log_every == 0


class Reporter:
    """Log lines, progress, figures and W&B of one run; silent off the main process."""

    def __init__(
        self,
        accelerator: Accelerator,
        run: RunDir,
        tracking: TrackingConfig,
        figures_cfg: FiguresConfig,
        wandb_mode: str,
        show_progress: bool,
        select_metric: str,
    ):
        self.active = accelerator.is_main_process
        self.accelerator = accelerator
        self.run = run
        self.figures_cfg = figures_cfg
        self.show_progress = show_progress and self.active
        self.select_metric = select_metric
        self.tracker = Tracker(accelerator, tracking, run, wandb_mode)
        self.log_every = tracking.log_every
        self._progress: Any = None
        self._task: Any = None

    @property
    def figures_dir(self) -> Path:
        return self.run.path / "figures"

    # ------------------------------------------------------------------ start

    @main_only
    def open(self, config: dict) -> None:
        """Start the W&B run (resumed ones continue the same W&B run)."""
        self.tracker.start(config)

    @main_only
    def describe(self, model_name: str, parameters: int, splits: DatasetSplits) -> None:
        log.info(
            "%s: %s (%s parameters), %d train / %d val / %s test images, %d process(es) on %s",
            self.run.path,
            model_name,
            f"{parameters:,}",
            len(splits.train),
            len(splits.val),
            len(splits.test) if splits.test is not None else "no",
            self.accelerator.num_processes,
            self.accelerator.device,
        )

    @main_only
    def start(self, splits: DatasetSplits, info: DatasetInfo, data: DataConfig, augment, seed: int) -> None:
        """Class balance and the augmentation the run trains with, once at a run's start."""
        path = self.figures_dir / "class_distribution.png"
        figures.save_figure(figures.class_distribution(info.counts, info.class_names), path)
        self.tracker.log_figure("data/class_distribution", path)
        self.tracker.log_class_distribution(info.counts, info.class_names)
        chosen = first_per_class(splits.train, self.figures_cfg.samples_per_class)
        pairs = preview_augmentation(splits.root, chosen, data, augment, info.mean, info.std, seed)
        path = self.figures_dir / "augmentations.png"
        stretch = resolve_augment(augment).normalize in PER_IMAGE
        figures.save_figure(figures.augmentation_grid(pairs, info.class_names, info.mean, info.std, stretch), path)
        self.tracker.log_figure("data/augmentations", path)

    # ------------------------------------------------------------------ steps

    @contextmanager
    def epoch_progress(self, epoch: int, epochs: int, batches: int) -> Iterator[StepMeter]:
        """A meter for the epoch's steps, and the progress bar around them on a terminal."""
        meter = StepMeter(self.log_every, self.accelerator.num_processes)
        if not self.show_progress:
            yield meter
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn(f"[bold]epoch {epoch + 1}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[ips]:.1f} img/s"),
            TimeRemainingColumn(),
            transient=True,
        )
        with self._progress:
            self._task = self._progress.add_task("train", total=batches, loss=float("nan"), ips=0.0)
            try:
                yield meter
            finally:
                self._progress = self._task = None

    @main_only
    def step(self, meter: StepMeter, optimizer_step: int, stepped: bool, loss: torch.Tensor, lr: float) -> None:
        due = meter.log_now(optimizer_step, stepped)
        log_now = due and self.tracker.enabled
        show = self._progress is not None and (due or meter.batches == 1)
        value = loss.item() if (log_now or show) else None
        if self._progress is not None:
            fields = {"ips": meter.rate(), **({"loss": value} if value is not None else {})}
            self._progress.update(self._task, advance=1, **fields)
        if log_now:
            self.tracker.log(
                {"step": optimizer_step, "step/train_loss": value, "step/lr": lr, "step/throughput": meter.rate()}
            )

    # ------------------------------------------------------------------ epochs

    @main_only
    def epoch(
        self, record: EpochRecord, history: Sequence[EpochRecord], best_epoch: Optional[int], epochs: int
    ) -> None:
        self.tracker.log(record.to_json())
        figures.save_figure(figures.training_curves(history, best_epoch), self.figures_dir / "curves.png")
        val = (
            f"val loss {record.val_loss:.4f} acc {record.val_acc:.3f} f1 {record.val_macro_f1:.3f}"
            if record.has_val
            else "no validation"
        )
        log.info(
            "epoch %d/%d  train loss %.4f acc %.3f | %s | %.1f img/s, %.1f s%s",
            record.epoch,
            epochs,
            record.train_loss,
            record.train_acc,
            val,
            record.throughput,
            record.epoch_time,
            "  *best*" if best_epoch == record.epoch and record.has_val else "",
        )

    # ------------------------------------------------------------------ end

    @main_only
    def end(self, results: RunResults, history: Sequence[EpochRecord]) -> None:
        """Curves with the best epoch, the test confusion matrix, W&B's summary and model."""
        curves = self.figures_dir / "curves.png"
        figures.save_figure(figures.training_curves(history, results.best_epoch), curves)
        self.tracker.log_figure("results/curves", curves)
        as_json = results.to_json()
        if results.test is not None:
            path = self.figures_dir / "confusion_matrix.png"
            title = f"Test confusion matrix (best epoch {results.best_epoch})"
            figures.save_figure(
                figures.confusion_matrix(results.test["confusion_matrix"], results.test["class_names"], title), path
            )
            self.tracker.log_figure("results/confusion_matrix_png", path)
        self.tracker.log_results(as_json)
        self.tracker.log_model(
            self.run.best_weights, {"best_epoch": results.best_epoch, self.select_metric: results.best_value}
        )

    @main_only
    def gradcam(
        self, model: nn.Module, splits: DatasetSplits, info: DatasetInfo, normalize: Optional[str] = None
    ) -> None:
        """Grad-CAM overlays of a fixed set of validation images (the first of each class;
        test images for a run without validation).

        A model that is right for the wrong reason (skull edges, text burnt into the
        slice) shows it here; the same images every run make runs comparable.
        """
        chosen = first_per_class(splits.val or splits.test or [], self.figures_cfg.samples_per_class)
        if not chosen or cam.target_layer(model) is None:
            log.info(
                "no Grad-CAM figure: %s",
                "no validation or test images" if not chosen else "the model has no conv layer",
            )
            return
        path = self.figures_dir / "gradcam.png"
        tiles = cam.explain_samples(
            model,
            splits.root,
            chosen,
            info.channels,
            info.image_size,
            info.mean,
            info.std,
            self.accelerator.device,
            normalize,
        )
        figures.save_figure(figures.cam_grid(tiles, info.class_names), path)
        self.tracker.log_figure("results/gradcam", path)

    def close(self) -> None:
        """End the W&B run; an offline one says how to upload it."""
        command = self.tracker.finish()
        if command:
            log.info("W&B run saved offline; upload it with: %s", command)
