"""Throughput of the input pipeline, the model step, and both together (images per second).

``model_img_s`` is the bound: training steps on one batch already on the device.
``pipeline_img_s`` is the input alone: read or decode, augment, collate, transfer.
``train_img_s`` is real training steps end to end. A pipeline keeps up when
``train_img_s / model_img_s`` is close to 1; the two are measured in alternating windows
so that drift in the machine's speed cancels out of the ratio.
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
from brainmri.data.loaders import Loaders, auto_workers, build_loaders
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


def _timed(batches: Iterator[int], skip: int, steps: int, device: torch.device) -> tuple[int, float]:
    """(images, seconds) over ``steps`` batches after skipping ``skip``."""
    for _ in range(skip):
        next(batches)
    _sync(device)
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        images += next(batches)
    _sync(device)
    return images, time.perf_counter() - start


def _rate(batches: Iterator[int], warmup: int, steps: int, device: torch.device) -> float:
    """Images per second over ``steps`` batches after ``warmup`` batches."""
    images, seconds = _timed(batches, warmup, steps, device)
    return images / seconds


def _prefetched(loader: DataLoader) -> int:
    """Batches the loader's workers can have ready before they are asked: free at a window's start."""
    return loader.num_workers * (loader.prefetch_factor or 0) if loader.num_workers > 0 else 0


def _loader_batches(loader: DataLoader, device: torch.device, transform: Optional[nn.Module]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches on the device, augmented when the pipeline augments batches."""
    pin = device.type == "cuda"
    for images, targets, _ in itertools.chain.from_iterable(itertools.repeat(loader)):
        images = images.to(device, non_blocking=pin)
        targets = targets.to(device, non_blocking=pin)
        yield (transform(images) if transform is not None else images), targets


def _loaders(cfg: Config, splits: DatasetSplits, pipeline: str, cache_dir: Path, mean, std, device: torch.device) -> Loaders:
    """The loaders exactly as the Trainer builds them (same workers, cache, placement, transforms)."""
    data = dataclasses.replace(cfg.data, pipeline=pipeline, cache_dir=str(cache_dir))
    # The cache covers every split, as in training, so its build time is the one training pays.
    loaders = build_loaders(splits, data, cfg.augment, cfg.train.batch_size, mean, std, drop_last_train=True, device=device)
    if loaders.train_batch_transform is not None:
        loaders.train_batch_transform.to(device)
    return loaders


def run_benchmark(
    cfg: Config,
    pipelines: tuple[str, ...] = ("cached", "pil"),
    warmup: int = 2,
    steps: int = 8,
    rounds: int = 2,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure every pipeline on ``cfg`` (model, precision, batch size, image size).

    For each pipeline, windows of ``steps`` model-only steps and ``steps`` training steps
    alternate ``rounds`` times and the ratio pools them. A machine's speed drifts by a few
    per cent over minutes (turbo, neighbours on a shared node); measured one after the other,
    that drift would land in the ratio, while alternating windows see the same machine.
    Batches the loader's workers prefetched during a model window are skipped, not counted.
    """
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
    model = model_only()
    for _ in range(warmup):
        next(model)
    out: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": step.precision,
        "model": cfg.model.name,
        "image_size": s,
        "batch_size": b,
        "channels_last": cfg.train.channels_last,
        "train_images": len(splits.train),
        "torch": torch.__version__,
        "steps": steps,
        "rounds": rounds,
    }
    scratch = Path(tempfile.mkdtemp(prefix="brainmri-bench-", dir=cfg.data.cache_dir))  # a fresh cache: build time counts
    try:
        for pipeline in pipelines:
            loaders = _loaders(cfg, splits, pipeline, scratch, mean, std, device)
            transform = loaders.train_batch_transform
            log(f"{pipeline}: input pipeline")
            pipeline_img_s = _rate((len(t) for _, t in _loader_batches(loaders.train, device, transform)), warmup, steps, device)

            def train(batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[int]:
                for images, targets in batches:
                    step(images, targets)
                    yield len(targets)

            trained = train(_loader_batches(loaders.train, device, transform))
            model_n = model_s = train_n = train_s = 0.0
            for r in range(rounds):
                log(f"{pipeline}: round {r + 1}/{rounds}: model steps, then training steps")
                n, t = _timed(model, 0, steps, device)
                model_n, model_s = model_n + n, model_s + t
                n, t = _timed(trained, warmup if r == 0 else _prefetched(loaders.train), steps, device)
                train_n, train_s = train_n + n, train_s + t
            model_img_s, train_img_s = model_n / model_s, train_n / train_s
            out[pipeline] = {
                "pipeline_img_s": round(pipeline_img_s, 2),
                "model_img_s": round(model_img_s, 2),
                "train_img_s": round(train_img_s, 2),
                "ratio": round(train_img_s / model_img_s, 3),
            }
            if pipeline == "cached":
                out["cache_build_s"] = round(loaders.cache_build_seconds, 2)
                out["cache_on_device"] = loaders.cache_on_device
                out["cache_upload_s"] = round(loaders.cache_upload_seconds, 2)
            del loaders, transform, trained  # workers and the device copy of the cache go now
        if "pil" in out:
            out["pil_epoch_s"] = round(len(splits.train) / out["pil"]["train_img_s"], 1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    usage = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    out["peak_rss_mb"] = round(usage / 1024, 1)
    return out
