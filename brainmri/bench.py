"""Throughput of the input pipeline, the model step, and both together (images per second).

``model_img_s`` is the bound: training steps on one batch already on the device.
``pipeline_img_s`` is the input alone: read or decode, augment, collate, transfer.
``train_img_s`` is real training steps end to end. A pipeline keeps up when
``train_img_s / model_img_s`` is close to 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from brainmri.config import Config
from brainmri.data.datasets import DatasetSplits, resolve_root, scan_dataset
from brainmri.data.loaders import auto_workers, build_loaders
from brainmri.data.transforms import fixed_normalization, resolve_augment
from brainmri.engine import build_optimizer, resolve_precision
from brainmri.models import build_model

PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Step:
    """One optimizer step of the configured model, precision and memory format."""

    def __init__(self, cfg: Config, device: torch.device):
        self.device = device
        self.model = build_model(cfg.model, cfg.in_chans, cfg.data.image_size).to(device)
        self.channels_last = cfg.train.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        if cfg.train.compile:
            self.model = torch.compile(self.model)
        self.precision = resolve_precision(cfg.train.mixed_precision)
        self.dtype = PRECISIONS[self.precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.loss = nn.CrossEntropyLoss()

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()
        with autocast:
            loss = self.loss(self.model(images).float(), targets)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


def _rate(batches: Iterator[int], warmup: int, steps: int, device: torch.device) -> float:
    """Images per second over ``steps`` batches after ``warmup`` batches."""
    for _ in range(warmup):
        next(batches)
    _sync(device)
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        images += next(batches)
    _sync(device)
    return images / (time.perf_counter() - start)


def _loader_batches(loader: DataLoader, device: torch.device, transform: Optional[nn.Module]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches on the device, augmented when the pipeline augments batches."""
    pin = device.type == "cuda"
    for images, targets, _ in itertools.chain.from_iterable(itertools.repeat(loader)):
        images = images.to(device, non_blocking=pin)
        targets = targets.to(device, non_blocking=pin)
        yield (transform(images) if transform is not None else images), targets


def _loader(cfg: Config, splits: DatasetSplits, pipeline: str, cache_dir: Path, mean, std) -> tuple[DataLoader, Optional[nn.Module], float]:
    """The training loader exactly as the Trainer builds it (same workers, cache, transforms)."""
    data = dataclasses.replace(cfg.data, pipeline=pipeline, cache_dir=str(cache_dir))
    # The cache covers every split, as in training, so its build time is the one training pays.
    loaders = build_loaders(splits, data, cfg.augment, cfg.train.batch_size, mean, std, drop_last_train=True)
    transform = loaders.train_batch_transform
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return loaders.train, transform.to(device) if transform is not None else None, loaders.cache_build_seconds


def run_benchmark(
    cfg: Config,
    pipelines: tuple[str, ...] = ("cached", "pil"),
    warmup: int = 2,
    steps: int = 8,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure every pipeline on ``cfg`` (model, precision, batch size, image size)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = resolve_root(cfg.data.root)
    splits = scan_dataset(root, cfg.data.val_fraction, cfg.seed, "skip", workers=auto_workers(1))
    stats = fixed_normalization(resolve_augment(cfg.augment).normalize, cfg.data.channels)
    mean, std = stats if stats else ((0.5,) * cfg.data.channels, (0.25,) * cfg.data.channels)  # speed only
    step = _Step(cfg, device)
    b, c, s = cfg.train.batch_size, cfg.in_chans, cfg.data.image_size
    x = torch.randn(b, c, s, s, device=device)
    y = torch.randint(0, 4, (b,), device=device)

    def model_only() -> Iterator[int]:
        while True:
            step(x, y)
            yield b

    log(f"model step: {cfg.model.name} {b}x{c}x{s}x{s} {step.precision} on {device}")
    model_img_s = _rate(model_only(), warmup, steps, device)
    out: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": step.precision,
        "model": cfg.model.name,
        "image_size": s,
        "batch_size": b,
        "channels_last": cfg.train.channels_last,
        "train_images": len(splits.train),
        "torch": torch.__version__,
    }
    scratch = Path(tempfile.mkdtemp(prefix="brainmri-bench-", dir=cfg.data.cache_dir))  # a fresh cache: build time counts
    try:
        for pipeline in pipelines:
            loader, transform, build_s = _loader(cfg, splits, pipeline, scratch, mean, std)
            log(f"{pipeline}: input pipeline")
            batches = _loader_batches(loader, device, transform)
            pipeline_img_s = _rate((len(t) for _, t in batches), warmup, steps, device)
            log(f"{pipeline}: training steps")
            batches = _loader_batches(loader, device, transform)

            def train() -> Iterator[int]:
                for images, targets in batches:
                    step(images, targets)
                    yield len(targets)

            train_img_s = _rate(train(), warmup, steps, device)
            out[pipeline] = {
                "pipeline_img_s": round(pipeline_img_s, 2),
                "model_img_s": round(model_img_s, 2),
                "train_img_s": round(train_img_s, 2),
                "ratio": round(train_img_s / model_img_s, 3),
            }
            if pipeline == "cached":
                out["cache_build_s"] = round(build_s, 2)
            del loader, batches
        # Measured again at the end, and the faster of the two kept: a warm model makes the
        # ratio conservative rather than flattering.
        model_img_s = max(model_img_s, _rate(model_only(), 1, steps, device))
        for pipeline in pipelines:
            out[pipeline]["model_img_s"] = round(model_img_s, 2)
            out[pipeline]["ratio"] = round(out[pipeline]["train_img_s"] / model_img_s, 3)
        if "pil" in out:
            out["pil_epoch_s"] = round(len(splits.train) / out["pil"]["train_img_s"], 1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    usage = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    out["peak_rss_mb"] = round(usage / 1024, 1)
    return out
