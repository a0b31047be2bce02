"""The training engine: one class, plain phases, one loop (Hugging Face Accelerate).

``Trainer(cfg).fit()`` runs setup, then for each epoch ``train_epoch``, ``evaluate`` and
``save_checkpoint``, then ``test`` with the best weights, then ``close``. The same code
runs on one CPU, one GPU, or many processes across nodes: Accelerate reads the
distributed environment that ``accelerate launch`` (or the SLURM launcher) exported.

Ordering guarantees a kill at any moment loses at most the epoch in flight:
best weights and the checkpoint folder are renamed into place only when complete, and
``metrics.jsonl`` is rewritten from the history stored *in* the checkpoint, so a resumed
run never repeats or drops an epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from safetensors.torch import load_file, save_file
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.data import DataLoader

from brainmri import config as config_lib
from brainmri.config import Config, OptimConfig
from brainmri.data.datasets import (
    CLASS_NAMES,
    DatasetSplits,
    ImageDataset,
    Sample,
    class_counts,
    find_split_dir,
    load_image,
    read_split,
    resolve_root,
    scan_dataset,
    write_split,
)
from brainmri.data.loaders import auto_workers, build_loaders
from brainmri.data.transforms import (
    build_train_transform,
    compute_mean_std,
    fixed_normalization,
    resolve_augment,
    unnormalized_transform,
)
from brainmri import cam, figures
from brainmri.errors import BrainMRIError, CheckpointError
from brainmri.metrics import classification_metrics
from brainmri.models import build_model, count_parameters
from brainmri.tracking import Tracker
from brainmri.rundir import RunDir, atomic_write_json, atomic_write_text, check_output_dir, clear_run, write_jsonl
from brainmri.weights import verify_checkpoint_folder

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What the loop itself must remember across a resume (saved inside each checkpoint)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    history: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "history": json.dumps(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        self.history = json.loads(state["history"])

    # Stored as JSON beside Accelerate's files rather than registered with Accelerate, which
    # unpickles registered objects with weights_only=False: a checkpoint must hold no code.
    FILE = "train_state.json"

    def save(self, folder: Path) -> None:
        atomic_write_json(folder / self.FILE, self.state_dict())

    def load(self, folder: Path) -> None:
        path = folder / self.FILE
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder} has no {self.FILE}: it was not written by this brainmri")
        self.load_state_dict(json.loads(path.read_text()))


class TrainingInterrupted(Exception):
    """Every rank stopped at the same step because a stop was requested (preemption, time limit).

    The epoch in flight is dropped; the newest complete checkpoint is where ``resume=auto``
    continues, so the history still holds each epoch exactly once.
    """


def no_accelerator() -> bool:
    """True on CPU-only machines: Accelerate then runs several processes over gloo."""
    return not torch.cuda.is_available() and not torch.backends.mps.is_available()


def resolve_precision(requested: str) -> str:
    """``auto``: bf16 on GPUs and CPUs with bf16 units, fp16 (scaled) on older GPUs, else fp32.

    CPUs without native bf16 (AVX2-only, for instance) emulate it at a fraction of fp32 speed,
    so ``auto`` never picks it there.
    """
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native_bf16 = False
    return "bf16" if native_bf16 else "no"


def distributed_state():
    """Accelerate's process state, created the same way the Trainer's Accelerator will be."""
    from accelerate import PartialState

    return PartialState(cpu=no_accelerator())


def default_output_dir(recipe: Optional[str]) -> Path:
    return Path("runs") / f"{recipe or 'run'}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def first_per_class(samples: list[Sample], k: int) -> list[Sample]:
    """The first ``k`` samples of each class, in class order: a fixed set for figures."""
    return [s for label in range(len(CLASS_NAMES)) for s in [x for x in samples if x.label == label][:k]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """timm's factory: no weight decay on biases and norm parameters."""
    kwargs: dict[str, Any] = {"momentum": cfg.momentum} if cfg.name == "sgd" else {"fused": True}
    try:  # fused Adam(W) kernels exist for CPU and CUDA in recent torch; else torch's foreach default
        return create_optimizer_v2(model, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        kwargs.pop("fused", None)
        return create_optimizer_v2(model, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per optimizer step over ``steps_per_epoch * epochs`` steps."""
    total = max(1, steps_per_epoch * epochs)
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
        (see :func:`brainmri.tracking.resolve_mode`); an unresolved ``auto`` means offline.
        ``stop_event``, set from any rank (a signal handler, say), makes all ranks stop together
        at the next step with :class:`TrainingInterrupted`."""
        self.cfg = cfg
        self.stop_event = stop_event
        self.show_progress = show_progress
        mode = wandb_mode or cfg.tracking.wandb
        self.wandb_mode = "offline" if mode == "auto" else mode
        self.offline_sync_command: Optional[str] = None
        self.state = TrainState()
        self.class_names = list(CLASS_NAMES)

    # ------------------------------------------------------------------ helpers

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the main process and hand its result (or its error) to every rank.

        Scanning data or checking the run dir once, and failing on every rank with the
        same message, avoids both duplicated work and ranks hanging at a barrier.
        """
        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload[0] = ("ok", fn())
            except BrainMRIError as e:
                payload[0] = ("error", e)
            except Exception as e:  # a bug: still release the other ranks before raising
                payload[0] = ("crash", f"{type(e).__name__}: {e}")
                if self.accelerator.num_processes > 1:
                    broadcast_object_list(payload, from_process=0)
                raise
        if self.accelerator.num_processes > 1:
            broadcast_object_list(payload, from_process=0)
        status, value = payload[0]
        if status == "error":
            raise value
        if status == "crash":
            raise RuntimeError(f"main process failed: {value}")
        return value

    def check_stop(self) -> None:
        """Raise :class:`TrainingInterrupted` on every rank if a stop was requested on any.

        Only one rank may have seen the signal, so the flag is shared with a collective;
        every rank calls this at the same points, so none is left waiting in another one.
        """
        if self.stop_event is None:
            return
        if self.accelerator.num_processes == 1:
            stop = self.stop_event.is_set()  # no device tensor: reading one back would stall a GPU every step
        else:
            flag = torch.tensor([1.0 if self.stop_event.is_set() else 0.0], device=self.accelerator.device)
            stop = float(self.accelerator.reduce(flag, reduction="sum")) > 0
        if stop:
            raise TrainingInterrupted(f"stop requested; resume continues after epoch {self.state.epoch}")

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        cfg = self.cfg
        self.accelerator = Accelerator(
            cpu=no_accelerator(),
            mixed_precision=resolve_precision(cfg.train.mixed_precision),
            gradient_accumulation_steps=cfg.train.grad_accum,
            # Pinned host memory (the loaders pin on CUDA) lets the copy overlap the step.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=torch.cuda.is_available()),
        )
        set_seed(cfg.seed, device_specific=True)

        # Cheap checks first; nothing is written until the data scan has passed.
        output_dir = self.on_main(lambda: str(Path(cfg.output_dir or default_output_dir(cfg.recipe)).resolve()))
        self.run = RunDir(Path(output_dir))
        mode = self.on_main(lambda: check_output_dir(self.run.path, cfg.resume, cfg.overwrite))
        root = resolve_root(cfg.data.root)
        self.has_test = find_split_dir(root, "test") is not None
        resuming = mode == "resume" and self.run.dataset.exists()  # written last by prepare_data

        def prepare_data() -> dict:
            if resuming:
                return json.loads(self.run.dataset.read_text())
            splits = scan_dataset(
                root, cfg.data.val_fraction, cfg.seed, cfg.data.on_bad_image, workers=auto_workers(1), dedup=cfg.data.dedup
            )
            if mode == "overwrite":
                clear_run(self.run.path)
            self.run.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run.config, config_lib.to_yaml(cfg))
            write_split(self.run.split, splits)
            if splits.bad:
                atomic_write_text(self.run.bad_images, "".join(f"{p}\t{r}\n" for p, r in sorted(splits.bad.items())))
            if splits.leaks:
                rows = "".join(f"{t}\t{tr}\n" for t, tr in sorted(splits.leaks.items()))
                atomic_write_text(self.run.leaks, "test\tsame pixels as\n" + rows)
            info = self._dataset_info(splits)
            atomic_write_json(self.run.dataset, info)
            return info

        self.dataset_info = self.on_main(prepare_data)
        if self.is_main and mode == "resume":
            self._warn_config_changes()
        self.splits = read_split(self.run.split, root, self.has_test)
        if self.splits.test is None:
            log.warning("no Testing/ folder in %s: there will be no test phase", root)
        self._build_loaders()

        self.model = build_model(cfg.model, cfg.in_chans, cfg.data.image_size, len(self.class_names))
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        if cfg.train.compile:
            self.model = torch.compile(self.model)
        weight = None
        if cfg.train.class_weights:
            counts = torch.tensor(self.dataset_info["counts"]["train"], dtype=torch.float32)
            weight = counts.sum() / (len(counts) * counts.clamp_min(1))
            log.info("class weights: %s", [round(float(w), 3) for w in weight])
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.train.label_smoothing, reduction="none")
        self.model, self.optimizer, self.train_loader, self.val_loader = self.accelerator.prepare(
            self.model, self.optimizer, self.train_loader, self.val_loader
        )
        if self.test_loader is not None:
            self.test_loader = self.accelerator.prepare(self.test_loader)
        for name in ("train_batch_transform", "eval_batch_transform"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(self.accelerator.device))
        self.criterion.to(self.accelerator.device)
        # The learning rate is a pure function of (config, step): the scheduler is stepped by
        # hand once per optimizer step (Accelerate's wrapper would step it once per process)
        # and rebuilt on resume rather than restored, so a run can be extended.
        self.steps_per_epoch = math.ceil(len(self.train_loader) / cfg.train.grad_accum)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch, cfg.train.epochs)

        if mode == "resume":
            self._resume()

        self.tracker = Tracker(self.accelerator, cfg.tracking, self.run, self.wandb_mode)
        self.tracker.start(config_lib.to_dict(cfg))
        if self.is_main and self.state.epoch == 0:
            self._start_figures()

    def _start_figures(self) -> None:
        """Class balance and augmentation samples, written once at the start of a run."""
        counts = self.dataset_info["counts"]
        path = self.figures_dir / "class_distribution.png"
        figures.save_figure(figures.class_distribution(counts, self.class_names), path)
        self.tracker.log_figure("data/class_distribution", path)
        self.tracker.log_class_distribution(counts, self.class_names)
        k = self.cfg.tracking.samples_per_class
        chosen = first_per_class(self.splits.train, k)
        plain = unnormalized_transform(self.cfg.data.image_size)
        mean, std = self.dataset_info["mean"], self.dataset_info["std"]
        augment = build_train_transform(resolve_augment(self.cfg.augment), self.cfg.data.image_size, mean, std)
        pairs = []
        with torch.random.fork_rng():  # the grid must not shift the training RNG streams
            torch.manual_seed(self.cfg.seed)
            for sample in chosen:
                image = load_image(self.splits.root / sample.path, self.cfg.data.channels)
                pairs.append((plain(image), augment(image), sample.label))
        path = self.figures_dir / "augmentations.png"
        figures.save_figure(figures.augmentation_grid(pairs, self.class_names, mean, std), path)
        self.tracker.log_figure("data/augmentations", path)

    @property
    def figures_dir(self) -> Path:
        return self.run.path / "figures"

    def _dataset_info(self, splits: DatasetSplits) -> dict:
        """Class counts and normalization, measured once and stored so evaluation reuses them."""
        params = resolve_augment(self.cfg.augment)
        stats = fixed_normalization(params.normalize, self.cfg.data.channels)
        if stats is None:
            log.info("measuring mean/std of %d training images", len(splits.train))
            plain = ImageDataset(splits.root, splits.train, self.cfg.data.channels, unnormalized_transform(self.cfg.data.image_size))
            stats = compute_mean_std(plain, workers=min(4, auto_workers(1)))
        return {
            "class_names": self.class_names,
            "counts": {
                "train": class_counts(splits.train),
                "val": class_counts(splits.val),
                "test": class_counts(splits.test) if splits.test is not None else None,
            },
            "bad_images": len(splits.bad),
            "dedup": self.cfg.data.dedup,
            "train_test_leaks": len(splits.leaks),  # dropped from test when dedup=train_test
            "image_size": self.cfg.data.image_size,
            "channels": self.cfg.data.channels,
            "mean": list(stats[0]),
            "std": list(stats[1]),
        }

    def _build_loaders(self) -> None:
        cfg = self.cfg
        local = torch.cuda.device_count() if torch.cuda.is_available() else self.accelerator.num_processes
        loaders = build_loaders(
            self.splits, cfg.data, cfg.augment, cfg.train.batch_size,
            self.dataset_info["mean"], self.dataset_info["std"], num_local_processes=local,
            device=self.accelerator.device,
        )
        self.train_loader, self.val_loader, self.test_loader = loaders.train, loaders.val, loaders.test
        self.train_batch_transform = loaders.train_batch_transform
        self.eval_batch_transform = loaders.eval_batch_transform
        self.cache_build_seconds = loaders.cache_build_seconds

    def _warn_config_changes(self) -> None:
        try:
            old = config_lib.flat_dict(config_lib.to_dict(config_lib.config_from_yaml(self.run.config)))
        except BrainMRIError:
            return
        new = config_lib.flat_dict(config_lib.to_dict(self.cfg))
        ignored = ("resume", "overwrite", "output_dir", "data.cache_dir")
        changed = sorted(k for k in old.keys() | new.keys() if k not in ignored and old.get(k) != new.get(k))
        if changed:
            log.warning("resuming with a config that differs from %s in: %s", self.run.config, ", ".join(changed))

    def _resume(self) -> None:
        latest = self.run.latest_checkpoint()
        if latest is None:
            log.info("resume=auto: no complete checkpoint in %s, starting from epoch 1", self.run.path)
            return
        epoch, path = latest
        verify_checkpoint_folder(path)  # refuse planted pickles before Accelerate opens anything
        self.accelerator.load_state(str(path))
        self.state.load(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            total = self.steps_per_epoch * self.cfg.train.epochs
            for _ in range(min(self.state.step, total - 1)):
                self.scheduler.step()
        log.info("resumed from %s (epoch %d of %d)", path, self.state.epoch, self.cfg.train.epochs)
        if self.is_main:
            self.run.remove_temp_checkpoints()
            # A kill between checkpoint and metrics.jsonl leaves the file a line short or
            # long; the history inside the checkpoint is the truth.
            write_jsonl(self.run.metrics, self.state.history)
            self._repair_best_weights()
        self.accelerator.wait_for_everyone()

    def _repair_best_weights(self) -> None:
        """Make best.safetensors match the checkpoint's idea of the best epoch.

        A kill after writing best weights but before the checkpoint commit leaves weights
        from an epoch the resumed history does not contain; the best epoch's own
        checkpoint (always kept) has the right ones.
        """
        if self.state.best_epoch is None:
            return
        current = None
        if self.run.best_weights.exists():
            from safetensors import safe_open

            with safe_open(str(self.run.best_weights), "pt") as f:
                current = int((f.metadata() or {}).get("epoch", -1))
        if current == self.state.best_epoch:
            return
        source = self.run.checkpoint(self.state.best_epoch) / "model.safetensors"
        if not source.exists():
            raise CheckpointError(f"best epoch {self.state.best_epoch} has no checkpoint at {source}")
        self._write_best(load_file(str(source)), self.state.best_epoch, self.state.best_metric)

    # ------------------------------------------------------------------ phases

    def _gather_predictions(self, indices: list, logits: list, targets: list, losses: list):
        """All ranks' predictions for one split, each sample exactly once, in index order."""
        acc = self.accelerator
        local = torch.cat(
            [torch.cat(indices).float().unsqueeze(1), torch.cat(targets).float().unsqueeze(1), torch.cat(losses).unsqueeze(1), torch.cat(logits)],
            dim=1,
        ) if indices else torch.zeros(0, 3 + len(self.class_names), device=acc.device)
        padded = acc.pad_across_processes(local, dim=0, pad_index=-1)
        rows = acc.gather(padded).cpu()
        rows = rows[rows[:, 0] >= 0]
        order = torch.argsort(rows[:, 0], stable=True)
        rows = rows[order]
        keep = torch.ones(len(rows), dtype=torch.bool)
        keep[1:] = rows[1:, 0] != rows[:-1, 0]
        rows = rows[keep]
        return rows[:, 3:], rows[:, 1].long(), rows[:, 2]

    def _prepare_batch(self, images: torch.Tensor, transform: Optional[nn.Module]) -> torch.Tensor:
        """Batch augmentation (cached pipeline) and the memory format the model expects."""
        if transform is not None:
            images = transform(images)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def train_epoch(self, epoch: int) -> dict:
        acc, cfg = self.accelerator, self.cfg
        self.model.train()
        self.train_loader.set_epoch(epoch)
        indices, logits_all, targets_all, losses_all = [], [], [], []
        seen, start = 0, time.perf_counter()
        progress = self._progress(f"epoch {epoch + 1}/{cfg.train.epochs}", len(self.train_loader))
        with progress or nullcontext():
            task = progress.add_task("train", total=len(self.train_loader), loss=float("nan"), ips=0.0) if progress else None
            for images, targets, index in self.train_loader:
                self.check_stop()
                images = self._prepare_batch(images, self.train_batch_transform)
                with acc.accumulate(self.model):
                    logits = self.model(images).float()
                    per_sample = self.criterion(logits, targets)
                    weights = self.criterion.weight[targets] if self.criterion.weight is not None else None
                    loss = per_sample.sum() / weights.sum() if weights is not None else per_sample.mean()
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.train.grad_clip > 0:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    if acc.sync_gradients:
                        self.scheduler.step()
                        self.state.step += 1
                indices.append(index)
                logits_all.append(logits.detach())
                targets_all.append(targets)
                losses_all.append(per_sample.detach())
                seen += len(targets) * acc.num_processes
                # Reading the loss waits for the device, so it happens only every log_every
                # steps: a read per step would stall the GPU's queue once per step.
                log_now = acc.sync_gradients and self.state.step % cfg.tracking.log_every == 0
                first = seen == len(targets) * acc.num_processes  # so the bar never shows "nan"
                show = progress is not None and (log_now or first)
                shown_loss = loss.item() if show or (log_now and self.tracker.enabled) else None
                if progress:
                    fields = {"ips": seen / (time.perf_counter() - start)}
                    if shown_loss is not None:
                        fields["loss"] = shown_loss
                    progress.update(task, advance=1, **fields)
                if log_now and self.tracker.enabled:
                    self.tracker.log({
                        "step": self.state.step,
                        "step/train_loss": shown_loss,
                        "step/lr": self.optimizer.param_groups[0]["lr"],
                        "step/throughput": seen / (time.perf_counter() - start),
                    })
        elapsed = time.perf_counter() - start
        logits, targets, losses = self._gather_predictions(indices, logits_all, targets_all, losses_all)
        metrics = classification_metrics(logits, targets, self.class_names, "train")
        return {
            "train/loss": float(losses.mean()),
            "train/acc": metrics["train/acc"],
            "train/macro_f1": metrics["train/macro_f1"],
            "throughput": len(targets) / elapsed,
            "train_time": elapsed,
        }

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, split: str) -> dict:
        """Loss and metrics over the whole split, every sample counted once across ranks."""
        self.model.eval()
        indices, logits_all, targets_all, losses_all = [], [], [], []
        plain_ce = nn.CrossEntropyLoss(reduction="none")
        for images, targets, index in loader:
            images = self._prepare_batch(images, self.eval_batch_transform)
            logits = self.model(images).float()
            indices.append(index)
            logits_all.append(logits)
            targets_all.append(targets)
            losses_all.append(plain_ce(logits, targets))
        logits, targets, losses = self._gather_predictions(indices, logits_all, targets_all, losses_all)
        metrics = classification_metrics(logits, targets, self.class_names, split)
        metrics[f"{split}/loss"] = float(losses.mean())
        metrics["size"] = len(targets)
        return metrics

    def _is_better(self, value: float) -> bool:
        if self.state.best_metric is None:
            return True
        if self.cfg.train.select_metric == "val/loss":
            return value < self.state.best_metric
        return value > self.state.best_metric

    def _write_best(self, state_dict: dict, epoch: int, metric: Optional[float]) -> None:
        tmp = self.run.best_weights.with_name(".best.safetensors.tmp")
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        metadata = {
            "epoch": str(epoch),
            "metric": self.cfg.train.select_metric,
            "value": str(metric),
            "model": self.cfg.model.name,
            "dataset": json.dumps(self.dataset_info),
            "config": config_lib.to_yaml(self.cfg),  # enough to rebuild the model from this file alone
        }
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, self.run.best_weights)

    def save_checkpoint(self, epoch: int) -> None:
        """Full state into a temporary folder on every rank, then one atomic rename."""
        acc = self.accelerator
        tmp, final = self.run.temp_checkpoint(epoch), self.run.checkpoint(epoch)
        if self.is_main:
            self.run.remove_temp_checkpoints()
            tmp.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if self.is_main:
            self.state.save(tmp)
        acc.wait_for_everyone()
        if self.is_main:
            os.replace(tmp, final)
            self.run.prune_checkpoints(self.cfg.train.keep_checkpoints, self.state.best_epoch)
        acc.wait_for_everyone()

    def test(self) -> dict:
        """Evaluate the best weights on the test split and write results.json."""
        acc = self.accelerator
        acc.wait_for_everyone()
        best = load_file(str(self.run.best_weights), device="cpu")
        acc.unwrap_model(self.model).load_state_dict(best)
        best_record = next(r for r in self.state.history if r["epoch"] == self.state.best_epoch)
        results: dict[str, Any] = {
            "best_epoch": self.state.best_epoch,
            "select_metric": self.cfg.train.select_metric,
            "best_value": self.state.best_metric,
            "world_size": acc.num_processes,
            "mixed_precision": resolve_precision(self.cfg.train.mixed_precision),
            **{k: v for k, v in best_record.items() if k.startswith("val/")},
        }
        if self.test_loader is None:
            results["test"] = None
        else:
            metrics = self.evaluate(self.test_loader, "test")
            results.update({k: v for k, v in metrics.items() if k != "size"})
            results["test/size"] = metrics["size"]
        if self.is_main:
            atomic_write_json(self.run.results, results)
        return results

    def close(self) -> None:
        if hasattr(self, "tracker"):
            self.offline_sync_command = self.tracker.finish()
            if self.offline_sync_command:
                log.info("W&B run saved offline; upload it with: %s", self.offline_sync_command)
        elif hasattr(self, "accelerator"):
            self.accelerator.end_training()

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        """Train every remaining epoch, then test the best model. Returns results.json."""
        self.setup()
        try:
            cfg, acc = self.cfg, self.accelerator
            if self.is_main:
                log.info(
                    "%s: %s (%s parameters), %d train / %d val / %s test images, %d process(es) on %s",
                    self.run.path,
                    cfg.model.name,
                    f"{count_parameters(acc.unwrap_model(self.model)):,}",
                    len(self.splits.train),
                    len(self.splits.val),
                    len(self.splits.test) if self.splits.test is not None else "no",
                    acc.num_processes,
                    acc.device,
                )
            for epoch in range(self.state.epoch, cfg.train.epochs):
                start = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                train = self.train_epoch(epoch)
                self.check_stop()
                val = self.evaluate(self.val_loader, "val")
                record = {
                    "epoch": epoch + 1,
                    **train,
                    "val/loss": val["val/loss"],
                    "val/acc": val["val/acc"],
                    "val/macro_f1": val["val/macro_f1"],
                    "lr": lr,
                    "epoch_time": time.perf_counter() - start,
                }
                self.state.history.append(record)
                self.state.epoch = epoch + 1
                value = record[cfg.train.select_metric]
                if self._is_better(value):
                    self.state.best_metric, self.state.best_epoch = value, epoch + 1
                    if self.is_main:
                        self._write_best(acc.unwrap_model(self.model).state_dict(), epoch + 1, value)
                if torch.cuda.is_available():
                    record["gpu_mem_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
                    torch.cuda.reset_peak_memory_stats()
                self.save_checkpoint(epoch + 1)
                if self.is_main:
                    write_jsonl(self.run.metrics, self.state.history)
                    self.tracker.log(record)
                    curves = figures.training_curves(self.state.history, self.state.best_epoch)
                    figures.save_figure(curves, self.figures_dir / "curves.png")
                    log.info(
                        "epoch %d/%d  train loss %.4f acc %.3f | val loss %.4f acc %.3f f1 %.3f | %.1f img/s, %.1f s%s",
                        epoch + 1, cfg.train.epochs, record["train/loss"], record["train/acc"], record["val/loss"],
                        record["val/acc"], record["val/macro_f1"], record["throughput"], record["epoch_time"],
                        "  *best*" if self.state.best_epoch == epoch + 1 else "",
                    )
            results = self.test()
            if self.is_main:
                self._end_figures(results)
                self._cam_figure()
            return results
        except TrainingInterrupted as e:
            log.warning("training stopped at epoch %d: %s", self.state.epoch + 1, e)
            raise
        finally:
            self.close()

    def _end_figures(self, results: dict) -> None:
        """Confusion matrix, curves, per-class table and (optionally) the model, at the end."""
        curves = self.figures_dir / "curves.png"
        figures.save_figure(figures.training_curves(self.state.history, self.state.best_epoch), curves)
        self.tracker.log_figure("results/curves", curves)
        if "confusion_matrix" in results:
            path = self.figures_dir / "confusion_matrix.png"
            title = f"Test confusion matrix (best epoch {results['best_epoch']})"
            figures.save_figure(figures.confusion_matrix(results["confusion_matrix"], self.class_names, title), path)
            self.tracker.log_figure("results/confusion_matrix_png", path)
        self.tracker.log_results(results)
        self.tracker.log_model(self.run.best_weights, {"best_epoch": results["best_epoch"], self.cfg.train.select_metric: results["best_value"]})

    def _cam_figure(self) -> None:
        """Grad-CAM overlays of a fixed set of validation images (the first of each class).

        A model that is right for the wrong reason (skull edges, text burnt into the
        slice) shows it here; the same images every run make runs comparable.
        """
        # Without Accelerate's autocast wrapper: Grad-CAM reads activations as fp32 numpy arrays.
        model = self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False, keep_torch_compile=False)
        k = self.cfg.tracking.samples_per_class
        chosen = first_per_class(self.splits.val, k)
        if not chosen or cam.target_layer(model) is None:
            log.info("no Grad-CAM figure: %s", "no validation images" if not chosen else "the model has no conv layer")
            return
        path = self.figures_dir / "gradcam.png"
        tiles = cam.explain_samples(
            model, self.splits.root, chosen, self.cfg.data.channels, self.cfg.data.image_size,
            self.dataset_info["mean"], self.dataset_info["std"], self.accelerator.device,
        )
        figures.save_figure(figures.cam_grid(tiles, self.class_names), path)
        self.tracker.log_figure("results/gradcam", path)

    def _progress(self, description: str, total: int):
        if not (self.show_progress and self.is_main):
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        return Progress(
            TextColumn(f"[bold]{description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[ips]:.1f} img/s"),
            TimeRemainingColumn(),
            transient=True,
        )
