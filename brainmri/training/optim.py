"""Optimizer and learning-rate schedule of a run, both from ``optim.*``.

The learning rate is a pure function of (config, optimizer step): the scheduler is stepped
by hand once per optimizer step and, on resume, rebuilt and fast-forwarded rather than
restored, so a finished run can be extended with a larger ``train.epochs``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from brainmri.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """timm's factory: no weight decay on biases and norm parameters."""
    kwargs: dict[str, Any] = {"momentum": cfg.momentum} if cfg.name == "sgd" else {"fused": True}
    try:  # fused Adam(W) kernels exist for CPU and CUDA in recent torch; else torch's foreach default
        return create_optimizer_v2(model, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        kwargs.pop("fused", None)
        return create_optimizer_v2(model, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: OptimConfig,
    steps_per_epoch: int,
    epochs: int,
    total_steps: Optional[int] = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per optimizer step over ``steps_per_epoch * epochs`` steps, or ``total_steps``
    where a budget's plan cuts the last epoch short."""
    total = max(1, steps_per_epoch * epochs if total_steps is None else total_steps)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    if cfg.schedule == "onecycle":
        pct = warmup / total if warmup > 0 else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=pct)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fast_forward(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int, total: int) -> None:
    """Advance a freshly built schedule to optimizer step ``steps`` (never past its end)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
        for _ in range(min(steps, total - 1)):
            scheduler.step()
