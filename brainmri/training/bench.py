"""Throughput of the input pipeline, the Trainer's step, and both together (images per second).

Everything is built by :func:`brainmri.training.step.build_training`, as the Trainer builds it: the
same loaders, model, precision, optimizer, loss and batch transform. ``model_img_s`` is
the bound: the Trainer's step on one batch already transformed on the device.
``pipeline_img_s`` is the input alone: read or decode, augment, collate, transfer.
``train_img_s`` is the Trainer's step on the loader's batches. A pipeline keeps up when
``train_img_s / model_img_s`` is close to 1; the two are measured in alternating windows
so that drift in the machine's speed cancels out of the ratio.
"""

from __future__ import annotations

import dataclasses
import itertools
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from brainmri.config import AugmentConfig, Config
from brainmri.data.loaders import auto_workers
from brainmri.data.samples import DatasetSplits, resolve_root
from brainmri.data.scan import scan_dataset
from brainmri.data.splits import split_rule
from brainmri.data.transforms import fixed_normalization, resolve_augment
from brainmri.models import check_pretrained_source
from brainmri.records import DatasetInfo
from brainmri.training.distributed import cpu_has_native_bf16, make_accelerator, plain_model
from brainmri.training.flops import cpu_peak, gpu_peak, train_flops_per_image
from brainmri.training.preparation import dataset_info
from brainmri.training.step import Training, build_training


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _prefetched(loader: DataLoader) -> int:
    """Batches the loader's workers can have ready before they are asked: free at a window's start."""
    workers = getattr(loader, "num_workers", 0)
    return workers * (getattr(loader, "prefetch_factor", 0) or 0) if workers > 0 else 0


def _forever(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, targets, _ in itertools.chain.from_iterable(itertools.repeat(loader)):
        yield images, targets


def _speed_only_info(cfg: Config, splits: DatasetSplits) -> DatasetInfo:
    """The run's normalization where it is fixed; otherwise a stand-in (speed does not
    depend on the values, and measuring them would decode the whole dataset)."""
    stats = fixed_normalization(resolve_augment(cfg.augment).normalize, cfg.data.channels)
    mean, std = stats if stats else ((0.5,) * cfg.data.channels, (0.25,) * cfg.data.channels)
    return dataset_info(cfg, splits, list(mean), list(std))


NOTEBOOK = "fp32, PIL in 2 workers, NCHW, Adam without weight decay, batch 16"


def notebook_recipe(cfg: Config) -> Config:
    """The original notebooks' training at ``cfg``'s model, image size and augmentation preset:
    fp32, PIL decoding in 2 workers, NCHW, Adam without weight decay, batch 16. The baseline the
    toolkit's step must not fall behind on any CPU (docs/performance.md)."""
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, pipeline="pil", num_workers=2),
        augment=AugmentConfig(preset=cfg.augment.preset, normalize=cfg.augment.normalize),
        train=dataclasses.replace(
            cfg.train, mixed_precision="no", channels_last=False, batch_size=16, grad_accum=1, micro_batch=0
        ),
        optim=dataclasses.replace(cfg.optim, name="adam", weight_decay=0.0),
    )


def _trained(training: Training) -> Iterator[int]:
    for x, y in _forever(training.train_loader):
        training.step(x, y)
        yield len(y)


def measure_pipeline(
    training: Training,
    device: torch.device,
    warmup: int,
    steps: int,
    rounds: int,
    notebook: Optional[Training] = None,
) -> dict:
    """Input alone, then alternating windows of the step on one ready batch, on real batches,
    and (with ``notebook``) of the notebooks' recipe on its own batches."""
    step = training.step
    step.model.train()
    inputs = ((step.prepare(x, step.transform), y) for x, y in _forever(training.train_loader))
    images, seconds = _timed((len(y) for _, y in inputs), warmup, steps, device)
    pipeline_img_s = images / seconds
    ready, targets = next(inputs)

    def bound() -> Iterator[int]:
        while True:
            step.update(ready, targets)
            yield len(targets)

    windows = [("model", bound(), None), ("train", _trained(training), training.train_loader)]
    if notebook is not None:
        notebook.step.model.train()
        windows.append(("notebook", _trained(notebook), notebook.train_loader))
    totals = {name: [0, 0.0] for name, _, _ in windows}
    for r in range(rounds):
        for name, batches, loader in windows:
            skip = warmup if r == 0 else (_prefetched(loader) if loader is not None else 0)
            n, t = _timed(batches, skip, steps, device)
            totals[name][0] += n
            totals[name][1] += t
    rate = {name: images / seconds for name, (images, seconds) in totals.items()}
    out = {
        "pipeline_img_s": round(pipeline_img_s, 2),
        "model_img_s": round(rate["model"], 2),
        "train_img_s": round(rate["train"], 2),
        "ratio": round(rate["train"] / rate["model"], 3),
    }
    if notebook is not None:
        out["notebook_img_s"] = round(rate["notebook"], 2)
        out["vs_notebook"] = round(rate["train"] / rate["notebook"], 3)
    return out


def auto_choices(cfg: Config, accelerator: Accelerator, training: Training, isa_cap: Optional[str]) -> list[str]:
    """What each ``auto`` setting became on this machine, and why, one line each."""
    device = accelerator.device
    precision = "fp32" if accelerator.mixed_precision == "no" else accelerator.mixed_precision
    lines = []
    if cfg.train.mixed_precision == "auto":
        if device.type == "cuda":
            why = "bf16 tensor cores" if precision == "bf16" else "no bf16 tensor cores (before Ampere): fp16, scaled"
        elif cpu_has_native_bf16():
            why = "the CPU computes bf16 itself (AVX512-BF16 or AMX)"
        else:
            capped = f"oneDNN capped at {isa_cap}" if isa_cap else "no AVX512-BF16 or AMX units"
            why = f"{capped}: bf16 would be emulated, several times slower than fp32"
        lines.append(f"train.mixed_precision=auto -> {precision}: {why}")
    if cfg.data.num_workers < 0:
        workers = getattr(training.train_loader, "num_workers", 0)
        why = (
            "a cached pipeline on a CPU reads its rows in the training process; workers would take cores from the step"
            if cfg.data.pipeline == "cached" and device.type != "cuda"
            else "this process's share of the CPUs"
        )
        lines.append(f"data.num_workers=-1 -> {workers}: {why}")
    if cfg.data.pipeline == "cached" and cfg.data.cache_location == "auto":
        where = "device" if training.loaders.cache_on_device else "host"
        lines.append(f"data.cache_location=auto -> {where}: resident where it takes at most a quarter of free memory")
    if cfg.train.micro_batch == "auto":
        micro = training.step.micro_batch
        why = (
            "a CPU training in fp32: oneDNN's fp32 kernels are faster per image on 16-image slices"
            if micro
            else "whole batches are fastest with bf16 units or on a GPU"
            if precision != "fp32" or device.type == "cuda"
            else "the batch is a slice already"
        )
        lines.append(f"train.micro_batch=auto -> {micro or 'the whole batch'}: {why}")
    layout = "channels_last (NHWC)" if cfg.train.channels_last else "NCHW"
    lines.append(f"train.channels_last={str(cfg.train.channels_last).lower()} -> {layout}")
    return lines


def build_notebook(cfg: Config, accelerator: Accelerator, splits: DatasetSplits, info: DatasetInfo) -> Training:
    """The notebooks' recipe (:func:`notebook_recipe`) built by the same code as the Trainer's
    step, then taken out of the accelerator's autocast: the notebooks trained in fp32."""
    training = build_training(notebook_recipe(cfg), accelerator, splits, info)
    accelerator.unwrap_model(training.step.model, keep_fp32_wrapper=False)  # in place: fp32 from here on
    return training


def describe(cfg: Config, accelerator: Accelerator, splits: DatasetSplits) -> dict:
    device = accelerator.device
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "cpu": cpu_name(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "precision": accelerator.mixed_precision,
        "model": cfg.model.name,
        "image_size": cfg.data.image_size,
        "batch_size": cfg.train.batch_size,
        "channels_last": cfg.train.channels_last,
        "compile": cfg.train.compile,
        "optimizer": cfg.optim.name,
        "train_images": len(splits.train),
        "torch": torch.__version__,
    }


def machine_limit(training: Training, cfg: Config, accelerator: Accelerator, isa_cap: Optional[str]) -> dict:
    """A training image's FLOPs and the device's peak for this precision (None where unknown)."""
    model = plain_model(accelerator, training.step.model)
    flops = train_flops_per_image(model, cfg.in_chans, cfg.data.image_size, cfg.train.channels_last)
    half = accelerator.mixed_precision in ("bf16", "fp16")
    device = accelerator.device
    if device.type == "cuda":
        peak = gpu_peak(torch.cuda.get_device_name(device), half)
    else:
        peak = cpu_peak(torch.get_num_threads(), half, isa_cap)
    return {
        "train_gflop_per_image": round(flops / 1e9, 3),
        "peak_tflops": round(peak.flops / 1e12, 3) if peak else None,
        "peak_basis": peak.basis if peak else "unknown for this device",
    }


def add_flop_rates(result: dict, flops_per_image: float, peak_tflops: Optional[float]) -> None:
    """Achieved TFLOP/s of the training step and its fraction of the peak, for a pipeline's result."""
    achieved = flops_per_image * 1e9 * result["train_img_s"] / 1e12
    result["train_tflops"] = round(achieved, 4)
    result["fraction_of_peak"] = round(achieved / peak_tflops, 4) if peak_tflops else None


def run_benchmark(
    cfg: Config,
    pipelines: tuple[str, ...] = ("cached",),
    warmup: int = 1,
    steps: int = 2,
    rounds: int = 2,
    log: Callable[[str], None] = print,
    isa_cap: Optional[str] = None,
    against_notebook: bool = False,
) -> dict:
    """Measure every pipeline on ``cfg`` (model, precision, batch size, image size).

    For each pipeline, windows of ``steps`` model-only steps and ``steps`` training steps
    alternate ``rounds`` times and the ratio pools them. A machine's speed drifts by a few
    per cent over minutes (turbo, neighbours on a shared node); measured one after the other,
    that drift would land in the ratio, while alternating windows see the same machine.
    Batches the loader's workers prefetched during a model window are skipped, not counted.
    ``isa_cap``: oneDNN's ``ONEDNN_MAX_CPU_ISA`` where set, for the CPU's peak.
    ``against_notebook``: the notebooks' recipe (:func:`notebook_recipe`) trains in windows
    alternating with the first pipeline's, and ``vs_notebook`` is the toolkit's speed over it.
    """
    check_pretrained_source(cfg.model)  # one line, as train.py says it, before any data is read
    accelerator = make_accelerator(cfg.train, cfg.seed)
    device = accelerator.device
    splits = _scan_for_speed(cfg)
    info = _speed_only_info(cfg, splits)
    out = {**describe(cfg, accelerator, splits), "steps": steps, "rounds": rounds}
    log(
        f"the Trainer's step: {cfg.model.name} {cfg.train.batch_size}x{cfg.in_chans}x{cfg.data.image_size}² "
        f"{out['precision']} on {out['device']}"
    )
    # A fresh cache: its build time counts.
    scratch = Path(tempfile.mkdtemp(prefix="brainmri-bench-", dir=cfg.data.cache_dir))
    try:
        for pipeline in pipelines:
            log(f"{pipeline}: building the loaders, model and step as the Trainer does")
            data = dataclasses.replace(cfg.data, pipeline=pipeline, cache_dir=str(scratch))
            training = build_training(dataclasses.replace(cfg, data=data), accelerator, splits, info)
            notebook = None
            if against_notebook and pipeline == pipelines[0]:
                notebook = build_notebook(dataclasses.replace(cfg, data=data), accelerator, splits, info)
                out["notebook"] = NOTEBOOK
            if "auto_choices" not in out:
                out["auto_choices"] = auto_choices(cfg, accelerator, training, isa_cap)
            log(
                f"{pipeline}: input alone, then {rounds} round(s) of {steps} model-only and {steps} training steps"
                + (f" and {steps} steps of the notebooks' recipe" if notebook is not None else "")
            )
            out[pipeline] = measure_pipeline(training, device, warmup, steps, rounds, notebook)
            del notebook
            if "train_gflop_per_image" not in out:
                out.update(machine_limit(training, cfg, accelerator, isa_cap))
            add_flop_rates(out[pipeline], out["train_gflop_per_image"], out["peak_tflops"])
            if pipeline == "cached":
                out.update(_cache_figures(training))
            del training  # workers and the device copy of the cache go now
            accelerator.free_memory()
        if "pil" in out:
            out["pil_epoch_s"] = round(len(splits.train) / out["pil"]["train_img_s"], 1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _scan_for_speed(cfg: Config) -> DatasetSplits:
    """The splits as training makes them, less the perceptual hashes of a grouped split: speed
    does not depend on which images validate."""
    rule = dataclasses.replace(split_rule(cfg.data, cfg.seed), groups="none")
    return scan_dataset(resolve_root(cfg.data.root), rule, "skip", workers=auto_workers(1))


def _cache_figures(training: Training) -> dict:
    loaders = training.loaders
    return {
        "cache_build_s": round(loaders.cache_build_seconds, 2),
        "cache_on_device": loaders.cache_on_device,
        "cache_upload_s": round(loaders.cache_upload_seconds, 2),
    }


def _peak_rss_mb() -> float:
    """This process's and its loader workers' peak resident memory (Linux reports KiB)."""
    usage = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    return round(usage / 1024, 1)
