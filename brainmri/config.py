"""Typed run configuration: dataclass defaults, then a recipe YAML, then ``key=value`` overrides.

The entry script builds one :class:`Config` with :func:`load_config` and hands each part
only its own slice (``build_model(cfg.model)``). Every dataclass validates itself on
creation, so a wrong value fails before any data is read, with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from brainmri.errors import ConfigError


def _check(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def _choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    _check(value in choices, key, "one of " + "|".join(map(str, choices)), value)


_BUDGET_RE = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def budget_seconds(budget: str) -> Optional[float]:
    """``train.budget`` in seconds (``1h30m`` is 5400); None for ``slurm``, whose seconds are the
    job's time left, known only inside the job."""
    text = str(budget).strip().lower()
    if text == "slurm":
        return None
    m = _BUDGET_RE.fullmatch(text)
    seconds = 3600 * int(m.group(1) or 0) + 60 * int(m.group(2) or 0) + int(m.group(3) or 0) if m else 0
    _check(seconds > 0, "train.budget", "a duration such as 30m, 2h, 1h30m, 40s, or slurm", budget)
    return float(seconds)


# Pairs of keys that are alternatives: the later layer's choice replaces the earlier one's.
ALTERNATIVES = (("train.epochs", "train.budget"),)


def has_validation(val_fraction: float, folds: int) -> bool:
    """Whether Training keeps a validation share: the one rule of the config's check and of the
    data layer's split (:class:`brainmri.data.splits.SplitRule`)."""
    return folds > 1 or val_fraction > 0


@dataclass
class DataConfig:
    """Where the images are and how they become tensors."""

    root: Optional[str] = None  # folder with Training/ and Testing/; "builtin:demo" is the bundled set
    image_size: int = 224
    channels: int = 3
    val_fraction: float = 0.1  # 0: no validation share, train on all of Training (the refit after CV chose the recipe)
    on_bad_image: str = "error"  # error: stop with the list; skip: train without them
    num_workers: int = -1  # -1: from the CPUs this process may use
    pipeline: str = (
        "cached"  # cached: decode once, augment batches on the device; pil: decode + transform every image every epoch
    )
    cache_dir: Optional[str] = None  # cached pipeline; None: node-local scratch (set by the launcher)
    # device: the whole cache on the training device, one gather per batch; host: loader workers
    # copy rows; auto: device if it fits in a quarter of the GPU's free memory (always on a CPU)
    cache_location: str = "auto"
    dedup: str = "none"  # train_test: drop test images whose pixels equal a Training image's (leakage)
    split_groups: str = (
        "near"  # near: pixel copies and perceptual near copies never straddle train/val; exact; none: plain stratified
    )
    near_threshold: int = 4  # perceptual-hash bits for split_groups=near (the audit's rule)
    folds: int = 0  # >= 2: k-fold cross-validation of Training; data.fold validates
    fold: int = 0
    exclude: Optional[str] = None  # a list of Training files to leave out (label_issues.csv, or one path per line)

    def __post_init__(self) -> None:
        _choice("data.pipeline", self.pipeline, ("pil", "cached"))
        _choice("data.cache_location", self.cache_location, ("auto", "device", "host"))
        _check(self.image_size >= 16, "data.image_size", "an integer >= 16", self.image_size)
        _choice("data.channels", self.channels, (1, 3))
        _check(
            0.0 <= self.val_fraction < 1.0,
            "data.val_fraction",
            "a fraction in [0, 1) (0: no validation)",
            self.val_fraction,
        )
        _choice("data.on_bad_image", self.on_bad_image, ("error", "skip"))
        _choice("data.dedup", self.dedup, ("none", "train_test"))
        _choice("data.split_groups", self.split_groups, ("near", "exact", "none"))
        _check(0 <= self.near_threshold <= 32, "data.near_threshold", "bits in [0, 32]", self.near_threshold)
        _check(self.folds == 0 or self.folds >= 2, "data.folds", "0 (one validation split) or >= 2", self.folds)
        if self.folds:
            _check(0 <= self.fold < self.folds, "data.fold", f"a fold in [0, {self.folds - 1}]", self.fold)
        else:
            _check(self.fold == 0, "data.fold", "0 unless data.folds is set", self.fold)
        _check(self.num_workers >= -1, "data.num_workers", "-1 (auto) or >= 0", self.num_workers)


def intensity_steps(augment: Any) -> list[str]:
    """The intensity and resolution steps that are on in ``augment``: an :class:`AugmentConfig`
    or the resolved parameters (:class:`brainmri.data.transforms.AugmentParams`). A range of
    (1, 1), a blur up to sigma 0 or a downsampling by 1 changes nothing, so it is off. The one
    definition the config's checks and :class:`~brainmri.data.batch_augment.BatchAugment` share."""
    changes = {
        "gamma": lambda v: tuple(v) != (1.0, 1.0),
        "contrast": lambda v: tuple(v) != (1.0, 1.0),
        "bias_field": lambda v: v > 0,
        "noise": lambda v: v > 0,
        "blur": lambda v: v[1] > 0,
        "downsample": lambda v: v > 1,
    }
    return [key for key, on in changes.items() if getattr(augment, key) is not None and on(getattr(augment, key))]


@dataclass
class AugmentConfig:
    """Training augmentation: a named preset whose parameters can each be overridden.

    ``None`` means "the preset's value"; see :mod:`brainmri.data.transforms`.
    """

    preset: str = "resnet_study"  # resnet_study | cnn_study | none
    pad: Optional[int] = None  # reflect-pad then random-crop back (pixels)
    hflip: Optional[float] = None  # probability
    translate: Optional[float] = None  # max fraction of the image, both axes
    degrees: Optional[float] = None  # max rotation
    brightness: Optional[List[float]] = None  # [min, max] factor
    # Intensity and resolution, per sample, cached pipeline only (brainmri.data.batch_augment);
    # every preset leaves them off.
    gamma: Optional[List[float]] = None  # [min, max] exponent of x ** gamma (x in [0, 1])
    contrast: Optional[List[float]] = None  # [min, max] factor around each image's own mean
    bias_field: Optional[float] = None  # max |coefficient| of a smooth multiplicative field (degree 3)
    noise: Optional[float] = None  # max std of additive Gaussian noise (x in [0, 1])
    blur: Optional[List[float]] = None  # [min, max] Gaussian sigma in pixels
    downsample: Optional[float] = None  # max factor of a down-then-up resampling (drawn in [1, max])
    intensity_p: Optional[float] = None  # probability that each step above applies to a sample (default 1)
    # Share of the planned epochs that train with the steps above; the rest train without them
    # (the geometric steps stay), so a short run's last epochs fit clean images at a low rate.
    intensity_until: float = 1.0
    # half (mean=std=0.5) | dataset (train split stats) | imagenet | zscore (per image, over its
    # foreground) | percentile (per image, 1st-99th percentile to [-1, 1]) | rank (per image,
    # histogram equalization to (-1, 1)); see brainmri.data.intensity
    normalize: Optional[str] = None

    def __post_init__(self) -> None:
        _choice("augment.preset", self.preset, ("resnet_study", "cnn_study", "none"))
        if self.pad is not None:
            _check(self.pad >= 0, "augment.pad", "an integer >= 0", self.pad)
        if self.hflip is not None:
            _check(0.0 <= self.hflip <= 1.0, "augment.hflip", "a probability in [0, 1]", self.hflip)
        if self.translate is not None:
            _check(0.0 <= self.translate < 1.0, "augment.translate", "a fraction in [0, 1)", self.translate)
        if self.degrees is not None:
            _check(0.0 <= self.degrees <= 180.0, "augment.degrees", "degrees in [0, 180]", self.degrees)
        if self.brightness is not None:
            b = list(self.brightness)
            _check(len(b) == 2 and 0 <= b[0] <= b[1], "augment.brightness", "[min, max] with 0 <= min <= max", b)
        for key, low in (("gamma", 0.0), ("contrast", 0.0), ("blur", 0.0)):
            r = getattr(self, key)
            if r is not None:
                r = list(r)
                ok = len(r) == 2 and low <= r[0] <= r[1] and (key != "gamma" or r[0] > 0)
                _check(ok, f"augment.{key}", f"[min, max] with {'0 <' if key == 'gamma' else '0 <='} min <= max", r)
        if self.blur is not None:
            _check(self.blur[1] <= 4.0, "augment.blur", "sigmas of at most 4 pixels", list(self.blur))
        for key, low, high in (
            ("bias_field", 0.0, 1.0),
            ("noise", 0.0, 1.0),
            ("downsample", 1.0, 4.0),
            ("intensity_p", 0.0, 1.0),
            ("intensity_until", 0.0, 1.0),
        ):
            v = getattr(self, key)
            if v is not None:
                _check(low <= v <= high, f"augment.{key}", f"a number in [{low:g}, {high:g}]", v)
        if self.normalize is not None:
            kinds = ("half", "dataset", "imagenet", "zscore", "percentile", "rank")
            _choice("augment.normalize", self.normalize, kinds)


@dataclass
class ModelConfig:
    """Which network: a registered name (``cnn0``..``cnn3``, ``resnet18``) or any timm model."""

    name: str = "resnet18"
    in_chans: Optional[int] = None  # None: follow data.channels
    pretrained: bool = False  # timm's pretrained weights (needs internet or the HF cache)
    pretrained_file: Optional[str] = None  # local weights file, for compute nodes without internet
    dropout: Optional[float] = None  # None: the model's default (study CNNs) or 0 (timm)
    batch_norm: bool = False  # study CNNs only: BatchNorm after each conv
    global_pool: bool = False  # study CNNs only: global average pooling instead of flatten
    widths: Optional[List[int]] = None  # study CNNs only: channels per block (number of blocks = length)
    fc: Optional[int] = None  # study CNNs only: hidden width of the classifier

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", "a model name", self.name)
        if self.widths is not None:
            _check(
                len(self.widths) >= 1 and all(w >= 1 for w in self.widths),
                "model.widths",
                "a list of positive channel counts",
                self.widths,
            )
        if self.fc is not None:
            _check(self.fc >= 1, "model.fc", "an integer >= 1", self.fc)
        if self.in_chans is not None:
            _choice("model.in_chans", self.in_chans, (1, 3))
        if self.dropout is not None:
            _check(0.0 <= self.dropout < 1.0, "model.dropout", "a probability in [0, 1)", self.dropout)


@dataclass
class TrainConfig:
    """The loop: epochs, batch, precision and what counts as the best model."""

    epochs: int = 10  # a fixed count; or train.budget (the two are alternatives: a recipe sets one)
    budget: Optional[str] = None  # wall clock, start to results: 30m, 2h, 1h30m, 40s, or slurm (the job's limit)
    batch_size: int = 32  # per process
    mixed_precision: str = (
        "auto"  # auto (bf16 where the hardware has it, fp16 on older GPUs, else no) | no | bf16 | fp16
    )
    grad_accum: int = 1  # on world_size ranks; on fewer or more, scaled to keep the global batch
    # Each batch's forward and backward in slices of this many images, one optimizer step: the same
    # gradient, BatchNorm over each slice. auto: 16 where a CPU trains in fp32 (faster per image
    # there, docs/performance.md), else the whole batch; 0: the whole batch.
    micro_batch: Union[int, str] = "auto"
    # Ranks the global batch is planned for; None: the first start's. submit.py sets it for slurm.nodes=MIN-MAX.
    world_size: Optional[int] = None
    grad_clip: float = 0.0  # max global grad norm; 0 disables clipping
    label_smoothing: float = 0.0
    # Decay of an exponential moving average of the weights (timm's ModelEmaV3, with its warm-up);
    # 0: off. On, the average is what validation scores, best.safetensors holds and exports carry.
    ema: float = 0.0
    class_weights: bool = False  # weight the loss by inverse class frequency of the train split
    select_metric: str = (
        "val/macro_f1"  # val/macro_f1 | val/acc | val/loss | last (the final epoch: no validation needed)
    )
    tta: str = "none"  # test-time augmentation of the end-of-run validation and test scores: none | hflip
    keep_checkpoints: int = 2  # newest complete checkpoints kept (the best one is always kept)
    channels_last: bool = True  # NHWC memory format: faster convolutions on CPUs and tensor cores
    compile: bool = False  # torch.compile the model (first steps are slow while it compiles)
    collective_timeout: float = 600.0  # seconds a rank waits in a training collective (gloo and NCCL) before failing
    checkpoint_minutes: float = 0.0  # a rolling mid-epoch checkpoint every N minutes of training; 0: epoch ends only

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "an integer >= 1", self.epochs)
        if self.budget is not None:
            budget_seconds(self.budget)  # one line naming the key when it does not parse
        _check(self.batch_size >= 1, "train.batch_size", "an integer >= 1", self.batch_size)
        if self.mixed_precision in (False, "False", "false"):  # YAML 1.1 reads a bare `no` as false
            self.mixed_precision = "no"
        _choice("train.mixed_precision", self.mixed_precision, ("auto", "no", "bf16", "fp16"))
        _check(self.grad_accum >= 1, "train.grad_accum", "an integer >= 1", self.grad_accum)
        if self.micro_batch != "auto":
            ok = str(self.micro_batch).isdigit()  # a bool or a negative number is not
            _check(ok, "train.micro_batch", "auto, 0 (the whole batch) or a number of images", self.micro_batch)
            self.micro_batch = int(self.micro_batch)
        if self.world_size is not None:
            _check(self.world_size >= 1, "train.world_size", "an integer >= 1", self.world_size)
        _check(self.grad_clip >= 0, "train.grad_clip", "a norm >= 0 (0 disables)", self.grad_clip)
        _check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", "a value in [0, 1)", self.label_smoothing)
        _check(0.0 <= self.ema < 1.0, "train.ema", "a decay in [0, 1) (0: off), e.g. 0.999", self.ema)
        _choice("train.select_metric", self.select_metric, ("val/macro_f1", "val/acc", "val/loss", "last"))
        _choice("train.tta", self.tta, ("none", "hflip"))
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "an integer >= 1", self.keep_checkpoints)
        _check(self.collective_timeout >= 10, "train.collective_timeout", "seconds >= 10", self.collective_timeout)
        _check(
            self.checkpoint_minutes >= 0, "train.checkpoint_minutes", "minutes >= 0 (0: off)", self.checkpoint_minutes
        )


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (stepped once per optimizer step)."""

    name: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3  # peak learning rate (the max of onecycle)
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: str = "constant"  # constant | cosine | onecycle
    warmup_epochs: float = 0.0  # cosine: linear warm-up; onecycle: rise phase (0 -> 30% of training)
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of lr

    def __post_init__(self) -> None:
        _choice("optim.name", self.name, ("adamw", "adam", "sgd"))
        _check(self.lr > 0, "optim.lr", "a positive learning rate", self.lr)
        _check(self.weight_decay >= 0, "optim.weight_decay", "a value >= 0", self.weight_decay)
        _check(0 <= self.momentum < 1, "optim.momentum", "a value in [0, 1)", self.momentum)
        _choice("optim.schedule", self.schedule, ("constant", "cosine", "onecycle"))
        _check(self.warmup_epochs >= 0, "optim.warmup_epochs", "a value >= 0", self.warmup_epochs)
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "a fraction in [0, 1]", self.min_lr_ratio)


@dataclass
class TrackingConfig:
    """Weights & Biases. ``auto``: online when credentials are configured, else offline."""

    wandb: str = "auto"  # auto | online | offline | disabled
    project: str = "brainmri"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    name: Optional[str] = None  # None: the output_dir's name
    log_every: int = 10  # optimizer steps between step-level logs (loss, lr, images/s)
    log_model: bool = False  # upload best.safetensors as a W&B artifact
    init_timeout: float = 90.0  # seconds to wait for W&B before falling back to offline

    def __post_init__(self) -> None:
        _choice("tracking.wandb", self.wandb, ("auto", "online", "offline", "disabled"))
        _check(bool(self.project), "tracking.project", "a project name", self.project)
        _check(self.log_every >= 1, "tracking.log_every", "an integer >= 1", self.log_every)
        _check(self.init_timeout > 0, "tracking.init_timeout", "seconds > 0", self.init_timeout)


@dataclass
class FiguresConfig:
    """The figures a run draws (PNG in ``figures/``, and in W&B when tracking is on)."""

    samples_per_class: int = 3  # images per class in the augmentation and Grad-CAM grids

    def __post_init__(self) -> None:
        _check(
            1 <= self.samples_per_class <= 8,
            "figures.samples_per_class",
            "an integer in [1, 8]",
            self.samples_per_class,
        )


@dataclass
class SlurmConfig:
    """How ``launch/submit.py`` and ``launch/sweep.py`` ask SLURM (through submitit) for resources.

    Read by the launchers only; ``launch/train.py`` ignores this section, so a recipe can
    carry its cluster defaults.
    """

    cluster: str = "slurm"  # slurm | local | debug (submitit's executors)
    partition: Optional[str] = None
    nodes: Union[int, str] = 1  # N, or MIN-MAX (elastic: SLURM may start or requeue the job on fewer nodes)
    gpus_per_node: int = 1
    tasks_per_node: Optional[int] = None  # None: one task per GPU (1 without GPUs)
    cpus_per_task: int = 8  # also sets DataLoader workers (cpus_per_task - 1) unless data.num_workers is set
    mem_gb: Optional[float] = None
    timeout_min: int = 24 * 60
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    array_parallelism: int = 16  # sweeps: trials running at once
    max_requeues: int = 3  # preemptions and time-outs that requeue the job
    setup: List[str] = field(default_factory=list)  # shell lines before the job (module load ...)
    additional: Dict[str, Any] = field(default_factory=dict)  # any other sbatch option: {reservation: x}
    job_name: Optional[str] = None  # None: brainmri-<recipe>
    check_resources: bool = True  # check the request against sinfo before submitting (brainmri/cluster/partition.py)

    def __post_init__(self) -> None:
        _choice("slurm.cluster", self.cluster, ("slurm", "local", "debug"))
        node_range(self.nodes)
        _check(self.gpus_per_node >= 0, "slurm.gpus_per_node", "an integer >= 0", self.gpus_per_node)
        if self.tasks_per_node is not None:
            _check(self.tasks_per_node >= 1, "slurm.tasks_per_node", "an integer >= 1", self.tasks_per_node)
        _check(self.cpus_per_task >= 1, "slurm.cpus_per_task", "an integer >= 1", self.cpus_per_task)
        if self.mem_gb is not None:
            _check(self.mem_gb > 0, "slurm.mem_gb", "GiB > 0", self.mem_gb)
        _check(self.timeout_min >= 1, "slurm.timeout_min", "minutes >= 1", self.timeout_min)
        _check(self.array_parallelism >= 1, "slurm.array_parallelism", "an integer >= 1", self.array_parallelism)
        _check(self.max_requeues >= 0, "slurm.max_requeues", "an integer >= 0", self.max_requeues)
        if self.gpus_per_node and self.tasks > self.gpus_per_node:
            raise ConfigError(
                f"slurm.tasks_per_node={self.tasks} with slurm.gpus_per_node={self.gpus_per_node} "
                "puts several ranks on one GPU "
                "(NCCL stops with 'Duplicate GPU detected'): ask one GPU per task"
            )

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def min_nodes(self) -> int:
        return node_range(self.nodes)[0]

    @property
    def max_nodes(self) -> int:
        return node_range(self.nodes)[1]

    @property
    def elastic(self) -> bool:
        """``nodes=MIN-MAX``: the job may run on fewer nodes than it asks for."""
        return self.min_nodes < self.max_nodes

    @property
    def planned_world(self) -> Optional[int]:
        """An elastic job's ranks on its most nodes, which its global batch is planned for; None otherwise."""
        return self.max_nodes * self.tasks if self.elastic else None


def _check_node_range(min_nodes: int, max_nodes: int, grad_accum: int) -> None:
    """An elastic job keeps the global batch of its most nodes by scaling gradient accumulation
    (:mod:`brainmri.training.elastic`): every node count of the range must divide it."""
    bad = [n for n in range(min_nodes, max_nodes + 1) if (max_nodes * grad_accum) % n]
    if bad:
        raise ConfigError(
            f"slurm.nodes={min_nodes}-{max_nodes} with train.grad_accum={grad_accum}: on {bad[0]} node(s) no whole "
            f"accumulation keeps the global batch of {max_nodes} node(s); every count in the range must divide "
            f"{max_nodes} x train.grad_accum"
        )


def node_range(nodes: Union[int, str]) -> tuple[int, int]:
    """``slurm.nodes`` as (fewest, most): ``2`` is (2, 2), ``"1-2"`` is (1, 2), as ``sbatch --nodes`` reads them."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(nodes))
    lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
    _check(1 <= lo <= hi, "slurm.nodes", "an integer >= 1 or a range MIN-MAX such as 1-2", nodes)
    return lo, hi


@dataclass
class Config:
    """One training run, fully resolved. Saved as ``config.yaml`` in the run directory."""

    recipe: Optional[str] = None
    output_dir: Optional[str] = None  # None: runs/<recipe>-<timestamp>
    resume: str = "never"  # never | auto (continue from the newest complete checkpoint)
    overwrite: bool = False  # allow starting a new run into a folder that already holds one
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    figures: FiguresConfig = field(default_factory=FiguresConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        _choice("resume", self.resume, ("never", "auto"))
        _check(not (self.overwrite and self.resume == "auto"), "overwrite", "false when resume=auto", self.overwrite)
        if self.model.in_chans is not None and self.model.in_chans != self.data.channels:
            raise ConfigError(
                f"model.in_chans={self.model.in_chans} disagrees with data.channels={self.data.channels}: "
                "set only data.channels"
            )
        if self.slurm.elastic:
            _check_node_range(self.slurm.min_nodes, self.slurm.max_nodes, self.train.grad_accum)
        intensity = intensity_steps(self.augment)
        if intensity and self.data.pipeline != "cached":
            raise ConfigError(
                f"augment.{intensity[0]} runs on the batched path only: set data.pipeline=cached "
                f"(data.pipeline={self.data.pipeline})"
            )
        if self.augment.intensity_until < 1.0 and not intensity:
            raise ConfigError(
                f"augment.intensity_until={self.augment.intensity_until:g} has nothing to turn off: "
                "no intensity or resolution step is on (augment.gamma, bias_field, noise, blur, downsample, contrast)"
            )
        if not self.has_validation and self.train.select_metric != "last":
            raise ConfigError(
                "data.val_fraction=0 leaves no validation to choose epochs by "
                f"train.select_metric={self.train.select_metric}: "
                "set train.select_metric=last"
            )

    @property
    def has_validation(self) -> bool:
        """False for a refit on all of Training (data.val_fraction=0, no folds): the split's own rule."""
        return has_validation(self.data.val_fraction, self.data.folds)

    @property
    def in_chans(self) -> int:
        return self.model.in_chans or self.data.channels


@dataclass
class EvalDataConfig:
    root: Optional[str] = None  # None: the data.root the run was trained on


@dataclass
class AuditConfig:
    """``launch/audit.py``: which dataset folder to audit."""

    data: EvalDataConfig = field(default_factory=EvalDataConfig)

    def __post_init__(self) -> None:
        _check(self.data.root is not None, "data.root", "the dataset folder (data.root=DIR)", self.data.root)


@dataclass
class EvalConfig:
    """``launch/evaluate.py`` and ``launch/predict.py``: which trained model, which images."""

    run: Optional[str] = None  # a run directory
    checkpoint: Optional[str] = None  # a weights file or checkpoint folder (default: the run's best.safetensors)
    compare: Optional[str] = None  # evaluate.py: another run (or runs) scored on the same images, paired
    split: str = "test"  # test | val (the run's own split.csv)
    tta: str = "auto"  # auto: the run's own train.tta | none | hflip (average the logits of the image and its mirror)
    batch_size: int = 64
    robustness: bool = False  # evaluate.py: accuracy on corrupted copies of the split (docs/robustness.md)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)

    def __post_init__(self) -> None:
        _choice("split", self.split, ("test", "val"))
        _choice("tta", self.tta, ("auto", "none", "hflip"))
        _check(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        _check(self.run is not None or self.checkpoint is not None, "run", "run=RUN_DIR or checkpoint=FILE", self.run)


# ---------------------------------------------------------------------------------------
# Loading


def flat_dict(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` to ``{"optim.lr": 1}``; an empty mapping stays a leaf."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, (dict, DictConfig)) and len(value) > 0:
            out.update(flat_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _with_sections(leaves: Sequence[str]) -> list[str]:
    """Each leaf preceded by the sections above it: ``data``, ``data.root``; each key once.

    A mistyped section (``trian.epochs``) is then reported as the section it is."""
    keys: dict[str, None] = {}
    for leaf in leaves:
        parts = leaf.split(".")
        keys.update({".".join(parts[: i + 1]): None for i in range(len(parts))})
    return list(keys)


def _schema_keys(schema: type) -> list[str]:
    return _with_sections(list(flat_dict(OmegaConf.structured(schema))))


def nearest_key(key: str, valid: Sequence[str]) -> Optional[str]:
    """The valid key a mistyped one most likely meant (full dotted name, then leaf name)."""
    hit = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if hit:
        return hit[0]
    prefix, _, leaf = key.rpartition(".")
    same_section = [v for v in valid if v.rpartition(".")[0] == prefix]
    leaves = {v.rpartition(".")[2]: v for v in same_section}
    hit = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.5)
    if hit:
        return leaves[hit[0]]
    anywhere = {v.rpartition(".")[2]: v for v in valid}
    hit = difflib.get_close_matches(leaf, list(anywhere), n=1, cutoff=0.75)
    return anywhere[hit[0]] if hit else None


FREE_FORM = ("slurm.additional",)  # mappings whose keys are the user's (sbatch options)


def check_keys(keys: Sequence[str], valid: Sequence[str], source: str) -> None:
    """Fail on the first key that is not in the schema, naming the nearest valid one."""
    valid_set = set(valid)
    for key in keys:
        if key not in valid_set and not key.startswith(tuple(f + "." for f in FREE_FORM)):
            hint = nearest_key(key, valid)
            section = key.rpartition(".")[0]
            if hint and not key.startswith(hint + "."):
                suggestion = f"; did you mean '{hint}'?"
            elif section and section in valid_set:
                leaves = [v.rpartition(".")[2] for v in valid if v.rpartition(".")[0] == section]
                suggestion = f"; {section} has: {', '.join(leaves)}"
            else:
                suggestion = ""
            raise ConfigError(f"unknown key '{key}' in {source}{suggestion}")


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """``["optim.lr=1e-3", ...]`` to an ordered mapping; later duplicates win."""
    out: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got '{arg}'")
        out[key.strip()] = value
    return out


def find_recipe(name: str, recipes_dir: Path) -> Path:
    """A recipe by name (``recipes/NAME.yaml``) or by path to a YAML file."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml"):
        if as_path.is_file():
            return as_path
        raise ConfigError(f"recipe file not found: {as_path}")
    path = recipes_dir / f"{name}.yaml"
    if path.is_file():
        return path
    known = sorted(p.stem for p in recipes_dir.glob("*.yaml"))
    hint = difflib.get_close_matches(name, known, n=1)
    suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
    raise ConfigError(f"unknown recipe '{name}'{suggestion} (known: {', '.join(known)})")


def load_yaml_mapping(path: Path) -> DictConfig:
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends; one line is enough
        raise ConfigError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of keys, not {type(node).__name__}")
    return node


def merge_config(schema: type, layers: Sequence[tuple[str, DictConfig | dict]], alternatives: bool = False) -> Any:
    """Merge named layers onto ``schema``'s defaults and build the validated dataclass.

    Each layer's keys are checked first so a typo gets a "did you mean" instead of
    OmegaConf's generic message; type conversion and errors come from OmegaConf.
    """
    valid = _schema_keys(schema)
    merged = OmegaConf.structured(schema)
    for source, layer in layers:
        node = layer if isinstance(layer, DictConfig) else OmegaConf.create(layer)
        keys = list(flat_dict(node))
        check_keys(_with_sections(keys), valid, source)
        try:
            if alternatives:  # a user's layers (recipe, command line), not a saved config.yaml
                _replace_alternatives(merged, keys, source, schema)
            merged = OmegaConf.merge(merged, node)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            msg = str(getattr(e, "msg", e)).splitlines()[0]
            raise ConfigError(f"{key}: {msg} (from {source})") from None
    try:
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{key}: {str(getattr(e, 'msg', e)).splitlines()[0]}") from None


def _replace_alternatives(merged: DictConfig, keys: Sequence[str], source: str, schema: type) -> None:
    """A layer that sets one key of an :data:`ALTERNATIVES` pair drops the other's earlier
    setting (``recipe=masoud_cpu30 train.epochs=5`` trains 5 epochs, not 30 minutes); a layer
    that sets both is refused."""
    if schema is not Config:
        return
    for pair in ALTERNATIVES:
        given = [key for key in pair if key in keys]
        if len(given) == 2:
            raise ConfigError(f"{pair[0]} and {pair[1]} are alternatives: set one of them (both set in {source})")
        if given:
            (other,) = [key for key in pair if key != given[0]]
            OmegaConf.update(merged, other, OmegaConf.select(OmegaConf.structured(Config), other), merge=False)


def _is_str_field(schema: type, dotted: str) -> bool:
    """Whether ``dotted`` names a str (or Optional[str]) field, whose CLI value is taken verbatim."""
    cls: Any = schema
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return False
        hint = hints[part]
        if i == len(parts) - 1:
            return hint is str or hint == Optional[str]
        cls = hint
    return False


def load_config(args: Sequence[str], recipes_dir: Path, schema: type = Config, defaults: Optional[dict] = None) -> Any:
    """Defaults, then ``recipe=NAME`` (from ``recipes_dir``), then the other overrides.

    ``defaults`` (dotted keys) replace the schema's own defaults: the launcher's choices
    that depend on where it runs (the node-local cache folder, say). Recipes and the
    command line still override them, and the result is validated once, as a whole.
    """
    overrides = parse_overrides(args)
    layers: list[tuple[str, DictConfig | dict]] = []
    if defaults:
        node = OmegaConf.create()
        for key, value in defaults.items():
            OmegaConf.update(node, key, value, force_add=True)
        layers.append(("the launcher's defaults", node))
    recipe = overrides.pop("recipe", None)
    if recipe:
        path = find_recipe(recipe, recipes_dir)
        layers.append((f"recipe {path}", load_yaml_mapping(path)))
    # Values are YAML (numbers, lists, true/false), except for string keys: there `no`,
    # `on` or `1e-3` stay the text the user typed.
    verbatim = {k: v for k, v in overrides.items() if _is_str_field(schema, k)}
    dotlist = [f"{k}={v}" for k, v in overrides.items() if k not in verbatim]
    try:
        cli = OmegaConf.from_dotlist(dotlist)
        for key, value in verbatim.items():
            text = value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value
            OmegaConf.update(cli, key, None if text in ("null", "~") else text, force_add=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides: {str(e).splitlines()[0]}") from None
    if recipe:
        cli = OmegaConf.merge(cli, {"recipe": Path(recipe).stem})
    layers.append(("the command line", cli))
    return merge_config(schema, layers, alternatives=True)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


# Keys renamed since runs were first written; saved configs are read under the new name.
RENAMED = {"tracking.samples_per_class": "figures.samples_per_class"}


def migrate(node: DictConfig) -> DictConfig:
    """A saved config (``config.yaml``, weights metadata) brought up to today's keys."""
    for old, new in RENAMED.items():
        section, _, leaf = old.rpartition(".")
        parent = OmegaConf.select(node, section) if section else node
        if isinstance(parent, DictConfig) and leaf in parent:
            value = parent[leaf]
            del parent[leaf]
            OmegaConf.update(node, new, value, force_add=True)
    return node


def config_from_yaml(path: Path, schema: type = Config) -> Any:
    """Rebuild a config saved in a run directory (written by this or an earlier version)."""
    return merge_config(schema, [(str(path), migrate(load_yaml_mapping(path)))])


def config_from_text(text: str, source: str, schema: type = Config) -> Any:
    """Rebuild a config saved as YAML text (the metadata of ``best.safetensors``)."""
    return merge_config(schema, [(source, migrate(OmegaConf.create(text)))])
