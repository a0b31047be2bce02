"""The training step of a run and everything it is built from: loaders, model, optimizer,
loss, schedule and batch transforms, prepared by Accelerate.

:func:`build_training` is the one place these are made. The Trainer and the benchmark
both call it, so the benchmark times exactly the step users get: the same model,
precision, optimizer, loss, memory format and batch transform.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from brainmri.config import Config, TrainConfig
from brainmri.data.batch_augment import BatchAugment, has_intensity
from brainmri.data.loaders import Loaders, build_loaders
from brainmri.data.samples import CLASS_NAMES, DatasetSplits
from brainmri.models import build_model
from brainmri.records import DatasetInfo
from brainmri.training.distributed import local_process_count, plain_model, resolve_micro_batch
from brainmri.training.ema import WeightAverage
from brainmri.training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


def class_weights(counts: Sequence[int]) -> torch.Tensor:
    """Inverse class frequency, normalized so a balanced split gives all ones."""
    n = torch.tensor(list(counts), dtype=torch.float32)
    return n.sum() / (len(n) * n.clamp_min(1))


@dataclass
class StepOutput:
    """What one step leaves behind; nothing here has been read back from the device."""

    logits: torch.Tensor  # (B, C), fp32, detached
    per_sample: torch.Tensor  # (B,) loss of each sample, detached
    loss: torch.Tensor  # the scalar the gradients came from
    stepped: bool  # the optimizer stepped (False while accumulating gradients)


class TrainStep:
    """One training step: batch transform, forward, loss, backward, optimizer and schedule.

    ``step(images, targets)`` takes a batch as the loader yields it; ``update`` takes one
    already transformed (the benchmark's bound). The schedule advances once per optimizer
    step, by hand: Accelerate's wrapper would step it once per process. With ``micro_batch``
    the forward and backward run in slices of that many images; each slice's loss is divided
    by the whole batch's denominator, so the gradient is the batch's, and DDP synchronizes
    once, on the last slice.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        criterion: nn.CrossEntropyLoss,
        train: TrainConfig,
        transform: Optional[nn.Module],
        micro_batch: int = 0,
        average: Optional[WeightAverage] = None,
    ):
        self.accelerator = accelerator
        self.average = average  # train.ema: updated after each optimizer step
        self.bare = plain_model(accelerator, model)
        self.micro_batch = micro_batch
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.criterion = criterion
        self.grad_clip = train.grad_clip
        self.channels_last = train.channels_last
        self.transform = transform

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def prepare(self, images: torch.Tensor, transform: Optional[nn.Module]) -> torch.Tensor:
        """Batch augmentation (cached pipeline) and the memory format the model expects."""
        if transform is not None:
            images = transform(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, denominator: Union[torch.Tensor, float, None] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample losses, loss); class weights average as CrossEntropyLoss's "mean" does.
        ``denominator``: the whole batch's, when ``targets`` are a slice of it."""
        per_sample = self.criterion(logits, targets)
        if denominator is None:
            denominator = self.denominator(targets)
        return per_sample, per_sample.sum() / denominator

    def denominator(self, targets: torch.Tensor) -> Union[torch.Tensor, float]:
        weight = self.criterion.weight
        return weight[targets].sum() if weight is not None else float(len(targets))

    def slices(self, n: int) -> list[slice]:
        size = self.micro_batch or n
        return [slice(start, min(start + size, n)) for start in range(0, n, size)]

    def update(self, images: torch.Tensor, targets: torch.Tensor) -> StepOutput:
        acc = self.accelerator
        slices = self.slices(len(targets))
        denominator = self.denominator(targets)
        logits, per_sample, losses = [], [], []
        with acc.accumulate(self.model):
            for i, part in enumerate(slices):
                # DDP all-reduces on the last slice's backward only: the others add to the same grads.
                sync = contextlib.nullcontext() if i == len(slices) - 1 else acc.no_sync(self.model)
                with sync:
                    out = self.model(images[part]).float()
                    samples, loss = self.loss(out, targets[part], denominator)
                    acc.backward(loss)
                logits.append(out.detach())
                per_sample.append(samples.detach())
                losses.append(loss.detach())
            if acc.sync_gradients and self.grad_clip > 0:
                acc.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            stepped = acc.sync_gradients
            if stepped:
                self.scheduler.step()
                if self.average is not None and not acc.optimizer_step_was_skipped:  # fp16's scaler skips overflows
                    self.average.update(self.bare)
        return StepOutput(torch.cat(logits), torch.cat(per_sample), torch.stack(losses).sum(), stepped)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> StepOutput:
        return self.update(self.prepare(images, self.transform), targets)


@dataclass
class Training:
    """A run's prepared step and loaders."""

    step: TrainStep
    train_loader: DataLoader
    val_loader: Optional[DataLoader]  # None: a refit on all of Training
    test_loader: Optional[DataLoader]
    eval_transform: Optional[nn.Module]
    steps_per_epoch: int  # optimizer steps
    loaders: Loaders  # what the pipeline reported (cache build time, placement)
    intensity_until: float = 1.0  # augment.intensity_until

    @property
    def model(self) -> nn.Module:
        return self.step.model

    @property
    def eval_model(self) -> nn.Module:
        """What validation scores and the best weights hold: the weight average with
        ``train.ema``, else the trained model."""
        return self.step.average.module if self.step.average is not None else self.model

    def eval_precision(self) -> contextlib.AbstractContextManager:
        """The run's precision for :attr:`eval_model` (the trained model carries its own)."""
        return self.step.average.autocast() if self.step.average is not None else contextlib.nullcontext()

    def augment_epoch(self, epoch: int, epochs: int) -> None:
        """Intensity and resolution augmentation on for the first ``intensity_until`` of the
        planned ``epochs``, off after (the geometric steps stay): a short run's last epochs fit
        clean images at a low learning rate. Decided from the current plan at each epoch start,
        so a resume decides the same."""
        on = epoch < intensity_epochs(self.intensity_until, epochs)
        for module in self.step.transform.modules() if self.step.transform is not None else ():
            if isinstance(module, BatchAugment) and has_intensity(module.params) and module.intensity != on:
                module.intensity = on
                log.info("epoch %d: intensity and resolution augmentation %s", epoch + 1, "on" if on else "off")


def intensity_epochs(until: float, epochs: int) -> int:
    """How many of ``epochs`` train with intensity and resolution augmentation."""
    return epochs if until >= 1.0 else round(until * epochs)


def build_training(
    cfg: Config,
    accelerator: Accelerator,
    splits: DatasetSplits,
    info: DatasetInfo,
    group: Optional[dist.ProcessGroup] = None,
) -> Training:
    """Loaders, model, optimizer, loss and schedule of ``cfg``, prepared for ``accelerator``.

    Every node builds its image cache first; with ``group`` (the preparation group), ranks then
    wait for each other there, with its long timeout, before Accelerate's first collective."""
    device = accelerator.device
    loaders = build_loaders(
        splits,
        cfg.data,
        cfg.augment,
        cfg.train.batch_size,
        info.mean,
        info.std,
        num_local_processes=local_process_count(accelerator),
        device=device,
    )
    if group is not None:
        dist.barrier(group=group)
    model = build_model(cfg.model, cfg.in_chans, cfg.data.image_size, len(CLASS_NAMES))
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    average = None
    if cfg.train.ema > 0:  # from the bare model: see WeightAverage
        average = WeightAverage(model, cfg.train.ema, device, accelerator.autocast)
        log.info(
            "weight average: decay up to %g (timm ModelEmaV3, warm-up); it is what validation scores", cfg.train.ema
        )
    if cfg.train.compile:
        model = torch.compile(model)
    weight = class_weights(info.counts["train"] or []) if cfg.train.class_weights else None
    if weight is not None:
        log.info("class weights: %s", [round(float(w), 3) for w in weight])
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.train.label_smoothing, reduction="none").to(
        device
    )
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, loaders.train)
    val_loader = accelerator.prepare(loaders.val) if loaders.val is not None else None
    test_loader = accelerator.prepare(loaders.test) if loaders.test is not None else None
    train_transform = loaders.train_batch_transform.to(device) if loaders.train_batch_transform is not None else None
    eval_transform = loaders.eval_batch_transform.to(device) if loaders.eval_batch_transform is not None else None
    # The accelerator's accumulation, not train.grad_accum: an elastic attempt scales it.
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.gradient_accumulation_steps)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch, cfg.train.epochs)
    micro = resolve_micro_batch(cfg.train.micro_batch, cfg.train.batch_size, accelerator.mixed_precision, device)
    step = TrainStep(accelerator, model, optimizer, scheduler, criterion, cfg.train, train_transform, micro, average)
    until = cfg.augment.intensity_until
    return Training(step, train_loader, val_loader, test_loader, eval_transform, steps_per_epoch, loaders, until)
