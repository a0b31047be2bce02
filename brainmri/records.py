"""Typed records that cross module boundaries, and their JSON form on disk.

``dataset.json``, each line of ``metrics.jsonl`` and ``results.json`` are a contract other
tools read, so the records convert to and from exactly those keys (``train/loss``,
``val/macro_f1``...) while the code passes attributes around. The one rule of which way
a metric improves lives here too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch

SELECT_METRICS = ("val/macro_f1", "val/acc", "val/loss", "last")
_VAL_FIELDS = ("val_loss", "val_acc", "val_macro_f1")


def lower_is_better(metric: str) -> bool:
    """Losses improve downwards; accuracies, F1 and AUCs upwards."""
    return metric.rsplit("/", 1)[-1].endswith("loss")


def is_better(metric: str, value: float, best: Optional[float]) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet, so anything does)."""
    if best is None:
        return True
    return value < best if lower_is_better(metric) else value > best


def best_of(metric: str, values: list[float]) -> Optional[float]:
    if not values:
        return None
    return min(values) if lower_is_better(metric) else max(values)


@dataclass
class DatasetInfo:
    """What a run measured of its data once (``dataset.json``): evaluation reuses it."""

    class_names: list[str]
    counts: dict[str, Optional[list[int]]]  # train / val / test: images per class (test None without Testing/)
    image_size: int
    channels: int
    mean: list[float]
    std: list[float]
    bad_images: int = 0
    dedup: str = "none"
    train_test_leaks: int = 0  # test images with a Training twin (dropped from test when dedup=train_test)

    _ORDER = (
        "class_names",
        "counts",
        "bad_images",
        "dedup",
        "train_test_leaks",
        "image_size",
        "channels",
        "mean",
        "std",
    )

    def to_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._ORDER}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DatasetInfo":
        """Also reads the dataset.json of older runs, which lack the later fields."""
        return cls(**{k: data[k] for k in cls._ORDER if k in data})


@dataclass(frozen=True)
class InferenceSpec:
    """Everything predicting needs besides the tensors, so a weights file (or an ONNX model)
    stands alone: the classes in output order, how to turn a slice into the input tensor
    (size, channels, normalization), which network with which arguments, the test-time
    augmentation the run scored with, and the temperature with where it was fitted
    (None: the model is uncalibrated). ``best.safetensors`` carries it as the JSON of its
    ``inference`` metadata entry."""

    class_names: list[str]
    image_size: int
    channels: int
    mean: list[float]
    std: list[float]
    model: str
    model_args: dict[str, Any]
    tta: str
    temperature: Optional[float] = None
    temperature_fitted_on: Optional[str] = None  # val | cv (then temperature_source names the sweep)
    temperature_source: str = ""
    normalize: Optional[str] = None  # augment.normalize; zscore | percentile: a per-image step before mean/std

    def to_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "InferenceSpec":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# JSON key of each EpochRecord field, in the order metrics.jsonl has always written them.
_EPOCH_KEYS = {
    "epoch": "epoch",
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "train_macro_f1": "train/macro_f1",
    "throughput": "throughput",
    "train_time": "train_time",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "val_macro_f1": "val/macro_f1",
    "lr": "lr",
    "epoch_time": "epoch_time",
    "gpu_mem_peak_gb": "gpu_mem_peak_gb",
    "train_samples": "train/samples",
    "ranks": "ranks",
    "grad_accum": "grad_accum",
}


@dataclass
class TrainEpoch:
    """What one pass over the training split measured."""

    loss: float
    acc: float
    macro_f1: float
    throughput: float  # images per second over the whole epoch, as users see it
    seconds: float
    samples: int  # distinct images, across ranks


@dataclass
class EpochRecord:
    """One finished epoch: a line of ``metrics.jsonl`` and an entry of the checkpoint's history."""

    epoch: int
    train_loss: float
    train_acc: float
    train_macro_f1: float
    throughput: float
    train_time: float
    val_loss: Optional[float]  # None: the run has no validation split (data.val_fraction=0)
    val_acc: Optional[float]
    val_macro_f1: Optional[float]
    lr: float
    epoch_time: float
    gpu_mem_peak_gb: Optional[float] = None  # CUDA only
    # Absent in runs from before elastic node counts: the distinct training images the epoch's
    # metrics cover (every one once, across ranks and resumes), and the ranks and accumulation
    # of the attempt that finished the epoch.
    train_samples: Optional[int] = None
    ranks: Optional[int] = None
    grad_accum: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        optional = ("gpu_mem_peak_gb", "train_samples", "ranks", "grad_accum") + _VAL_FIELDS
        return {
            key: getattr(self, name)
            for name, key in _EPOCH_KEYS.items()
            if not (name in optional and getattr(self, name) is None)
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EpochRecord":
        values = {name: data[key] for name, key in _EPOCH_KEYS.items() if key in data}
        return cls(**{**{name: None for name in _VAL_FIELDS}, **values})

    @property
    def has_val(self) -> bool:
        return self.val_loss is not None

    def value(self, metric: str) -> Optional[float]:
        """A metric by its JSON name (``val/macro_f1``), as ``train.select_metric`` names it;
        ``last`` is the epoch number, so the latest epoch is always the best."""
        if metric == "last":
            return float(self.epoch)
        by_key = {key: name for name, key in _EPOCH_KEYS.items()}
        if metric not in by_key:
            raise KeyError(f"no metric {metric!r} in an epoch record")
        return getattr(self, by_key[metric])

    def val_metrics(self) -> dict[str, float]:
        """The val/* metrics; empty without a validation split."""
        if not self.has_val:
            return {}
        return {"val/loss": self.val_loss, "val/acc": self.val_acc, "val/macro_f1": self.val_macro_f1}


@dataclass(frozen=True)
class BudgetPlan:
    """A run's plan under ``train.budget`` (brainmri.training.budget): in the checkpoint and results.json."""

    budget: str  # as given: 30m, slurm
    seconds: float  # the window the plan was made for (what was left of the budget then)
    step_seconds: float  # a training step, timed after warm-up
    epoch_seconds: float  # one epoch as planned: training, validation, checkpoint
    reserve_seconds: float  # after the last epoch: calibration, test, files
    epochs: int  # the last one included, whole or cut short
    planned_after: int  # epochs completed when it was made
    replans: int = 0  # times the clock or a requeue forced a new plan
    # Optimizer steps of the last epoch when the plan cuts it short (None: whole). Steps, not
    # batches: an elastic resume on fewer ranks keeps the global batch, so an epoch's steps stay.
    last_steps: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BudgetPlan":
        return cls(**data)


@dataclass
class RunResults:
    """The test of the best epoch's weights (``results.json``)."""

    best_epoch: int
    select_metric: str
    best_value: float
    world_size: int
    mixed_precision: str
    best_val: dict[str, float]  # the best epoch's val/* metrics (empty without validation)
    test: Optional[dict[str, Any]] = None  # brainmri.scoring.metrics.classification_metrics of the test split
    test_size: int = 0
    tta: str = "none"  # the test-time augmentation of the final validation and test scores
    budget: Optional[BudgetPlan] = None  # train.budget's plan, when the run had one
    wall_seconds: Optional[float] = None  # start to results, over every attempt

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "best_epoch": self.best_epoch,
            "select_metric": self.select_metric,
            "best_value": self.best_value,
            "world_size": self.world_size,
            "mixed_precision": self.mixed_precision,
            "tta": self.tta,
            **self.best_val,
        }
        if self.test is None:
            out["test"] = None
        else:
            out.update(self.test)
            out["test/size"] = self.test_size
        if self.budget is not None:
            out["budget"] = self.budget.to_json()
        if self.wall_seconds is not None:
            out["wall_seconds"] = round(self.wall_seconds, 1)
        return out


@dataclass
class Predictions:
    """One split's model outputs, each sample exactly once, in dataset index order."""

    logits: torch.Tensor  # (N, C)
    targets: torch.Tensor  # (N,)
    losses: torch.Tensor  # (N,) per-sample loss
