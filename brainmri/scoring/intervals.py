"""How sure a score is: stratified bootstrap intervals for accuracy, balanced accuracy and
macro-F1, the paired bootstrap of two models' difference, and McNemar's exact test.

A test split of a few hundred images makes every accuracy a noisy number: 0.91 on 400
images is compatible with anything from about 0.88 to 0.94. The bootstrap resamples the
images with replacement *within each class* (so every resample keeps the split's class
counts, which the test set was built with), rescores each resample, and reports the
percentile interval. It is seeded, so the same predictions give the same interval.

Two models scored on the same images are compared *paired*: each resample draws the same
images for both, which cancels the images' shared difficulty. McNemar's test looks only at
the images the two disagree on (one right, the other wrong) and asks whether the split is
more lopsided than a fair coin would make it (exact two-sided binomial test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from brainmri.errors import BrainMRIError

METRICS = ("acc", "balanced_acc", "macro_f1")
RESAMPLES = 2000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A metric's value on the split and its bootstrap percentile interval."""

    metric: str  # acc | balanced_acc | macro_f1 (for a comparison: the difference A - B)
    value: float
    low: float
    high: float
    level: float = LEVEL

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class Bootstrap:
    """How the intervals were drawn: recorded beside them so anyone can redraw them."""

    resamples: int = RESAMPLES
    seed: int = SEED
    level: float = LEVEL

    def __post_init__(self) -> None:
        if self.resamples < 100:
            raise BrainMRIError(
                f"bootstrap resamples: at least 100 for a {self.level:.0%} interval, got {self.resamples}"
            )
        if not 0.5 <= self.level < 1:
            raise BrainMRIError(f"bootstrap level: a fraction in [0.5, 1), got {self.level}")


def _as_labels(values: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def stratified_indices(targets: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, N) row indices; each row redraws every class's images from that class only."""
    columns = []
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        columns.append(members[rng.integers(0, len(members), size=(resamples, len(members)))])
    return np.concatenate(columns, axis=1)


def confusion_counts(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(B, C, C) confusion matrices (row: true class, column: predicted) of B index rows of
    equal length; ``targets`` and ``preds`` are (B, N)."""
    b = targets.shape[0]
    flat = (np.arange(b)[:, None] * num_classes + targets) * num_classes + preds
    return np.bincount(flat.ravel(), minlength=b * num_classes * num_classes).reshape(b, num_classes, num_classes)


def metrics_of_counts(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy (mean recall of the classes present) and macro-F1 (over the
    classes present in the labels or the predictions, as torchmetrics averages) of (B, C, C)."""
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    total = cm.sum(axis=(1, 2))
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    f1_den = support + predicted
    f1 = np.divide(2 * tp, f1_den, out=np.zeros_like(tp), where=f1_den > 0)
    return {
        "acc": tp.sum(axis=1) / np.maximum(total, 1),
        "balanced_acc": recall.sum(axis=1) / np.maximum(present.sum(axis=1), 1),
        "macro_f1": f1.sum(axis=1) / np.maximum((f1_den > 0).sum(axis=1), 1),
    }


def _check(targets: np.ndarray, preds: Sequence[np.ndarray]) -> None:
    if len(targets) == 0:
        raise BrainMRIError("no predictions to bootstrap: the split is empty")
    for p in preds:
        if p.shape != targets.shape:
            raise BrainMRIError(f"predictions and labels differ in length: {len(p)} vs {len(targets)}")


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_intervals(
    targets: Sequence[int] | np.ndarray,
    preds: Sequence[int] | np.ndarray,
    num_classes: int,
    spec: Bootstrap = Bootstrap(),
) -> dict[str, Interval]:
    """Each of :data:`METRICS` on the split, with its stratified percentile bootstrap interval."""
    targets, preds = _as_labels(targets), _as_labels(preds)
    _check(targets, [preds])
    rows = stratified_indices(targets, spec.resamples, np.random.default_rng(spec.seed))
    point = metrics_of_counts(confusion_counts(targets[None], preds[None], num_classes))
    drawn = metrics_of_counts(confusion_counts(targets[rows], preds[rows], num_classes))
    return {m: Interval(m, float(point[m][0]), *_percentiles(drawn[m], spec.level), spec.level) for m in METRICS}


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on two models' paired right/wrong answers."""

    only_a: int  # images A gets right and B wrong
    only_b: int  # images B gets right and A wrong
    p_value: float


def mcnemar(targets: Sequence[int] | np.ndarray, preds_a: Sequence[int], preds_b: Sequence[int]) -> McNemar:
    """Two-sided exact binomial test of the discordant pairs: under "the models are equally
    accurate", each of the n = only_a + only_b disagreements is a fair coin, so
    p = min(1, 2 * P(X <= min(only_a, only_b))) with X ~ Binomial(n, 1/2); 1 when n = 0."""
    targets, a, b = _as_labels(targets), _as_labels(preds_a), _as_labels(preds_b)
    _check(targets, [a, b])
    right_a, right_b = a == targets, b == targets
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n if n else 1.0
    return McNemar(only_a, only_b, min(1.0, 2 * tail))


@dataclass(frozen=True)
class Comparison:
    """Model A against model B on the same images: both scores, the paired bootstrap interval
    of each difference (A - B) and McNemar's test."""

    a: dict[str, Interval]
    b: dict[str, Interval]
    difference: dict[str, Interval]
    mcnemar: McNemar
    spec: Bootstrap

    def to_json(self) -> dict[str, Any]:
        return {
            "a": {m: i.to_json() for m, i in self.a.items()},
            "b": {m: i.to_json() for m, i in self.b.items()},
            "difference": {m: i.to_json() for m, i in self.difference.items()},
            "mcnemar": {"only_a": self.mcnemar.only_a, "only_b": self.mcnemar.only_b, "p_value": self.mcnemar.p_value},
            "bootstrap": bootstrap_json(self.spec),
        }


def compare(
    targets: Sequence[int] | np.ndarray,
    preds_a: Sequence[int] | np.ndarray,
    preds_b: Sequence[int] | np.ndarray,
    num_classes: int,
    spec: Bootstrap = Bootstrap(),
) -> Comparison:
    """A against B on the same images: each resample draws the same images for both."""
    targets, a, b = _as_labels(targets), _as_labels(preds_a), _as_labels(preds_b)
    _check(targets, [a, b])
    rows = stratified_indices(targets, spec.resamples, np.random.default_rng(spec.seed))
    drawn_a = metrics_of_counts(confusion_counts(targets[rows], a[rows], num_classes))
    drawn_b = metrics_of_counts(confusion_counts(targets[rows], b[rows], num_classes))
    score_a = bootstrap_intervals(targets, a, num_classes, spec)
    score_b = bootstrap_intervals(targets, b, num_classes, spec)
    difference = {
        m: Interval(
            m, score_a[m].value - score_b[m].value, *_percentiles(drawn_a[m] - drawn_b[m], spec.level), spec.level
        )
        for m in METRICS
    }
    return Comparison(score_a, score_b, difference, mcnemar(targets, a, b), spec)


def bootstrap_json(spec: Bootstrap) -> dict[str, Any]:
    return {
        "method": "stratified percentile bootstrap",
        "resamples": spec.resamples,
        "seed": spec.seed,
        "level": spec.level,
    }


def intervals_json(intervals: dict[str, Interval], prefix: str, spec: Bootstrap = Bootstrap()) -> dict[str, Any]:
    """The reports' ``intervals`` entry: ``{"<prefix>/acc": {value, low, high}, ..., "bootstrap": {...}}``."""
    return {**{f"{prefix}/{m}": i.to_json() for m, i in intervals.items()}, "bootstrap": bootstrap_json(spec)}


def describe(intervals: dict[str, Interval]) -> str:
    """One line for the console: ``acc 0.912 [0.884, 0.937], balanced_acc ..., macro_f1 ... (95% CI)``."""
    level = next(iter(intervals.values())).level
    return ", ".join(f"{m} {i}" for m, i in intervals.items()) + f" ({level:.0%} bootstrap CI)"
