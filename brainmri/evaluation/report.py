"""One evaluation's typed result (:class:`Evaluation`), its JSON report (``eval_<split>.json``,
keys in the order earlier versions wrote them) and its figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from brainmri.scoring.intervals import Comparison, Interval, intervals_json
from brainmri.scoring.metrics import reliability_bins, roc_curves


@dataclass
class CalibratedScore:
    """The split scored again with each member's temperature."""

    temperatures: list[float]  # one per run (one for a single run)
    fitted_on: str  # val | cv | test: where the (first) temperature was fitted
    metrics: dict[str, Any]
    probs: torch.Tensor  # (N, C)

    @property
    def temperature(self) -> Union[float, list[float]]:
        """As the report writes it: a number for one run, a list for an ensemble."""
        return self.temperatures[0] if len(self.temperatures) == 1 else list(self.temperatures)


@dataclass
class Evaluation:
    """Every metric of one split (for one run or an ensemble's mean probabilities)."""

    split: str
    metrics: dict[str, Any]  # brainmri.scoring.metrics.classification_metrics plus <split>/loss
    probs: torch.Tensor  # (N, C)
    targets: torch.Tensor  # (N,)
    leaks: dict[str, str] = field(default_factory=dict)  # test file -> the Training file with its pixels
    leakage_free: Optional[dict[str, Any]] = None  # the metrics without the leaked images, with their "size"
    calibrated: Optional[CalibratedScore] = None
    intervals: dict[str, Interval] = field(default_factory=dict)  # 95% bootstrap: acc, balanced_acc, macro_f1
    comparison: Optional[Comparison] = None  # against another model on the same images (``compare=``)

    @property
    def size(self) -> int:
        return len(self.targets)

    def report(self, weights: Union[str, list[str]], tta: Union[str, list[str]], data_root: Path) -> dict[str, Any]:
        """``eval_<split>.json``."""
        split, cal = self.split, self.calibrated
        return {
            "split": split,
            "size": self.size,
            "weights": weights,
            "tta": tta,
            "data_root": str(data_root),
            **self.metrics,
            "train_test_leaks": len(self.leaks),
            "leaked_files": sorted(self.leaks),
            "leakage_free": self.leakage_free,
            "calibration": None
            if cal is None
            else {
                "temperature": cal.temperature,
                "fitted_on": cal.fitted_on,
                f"{split}/ece": cal.metrics[f"{split}/ece"],
                f"{split}/loss": cal.metrics[f"{split}/loss"],
            },
            # later additions go after the keys earlier versions wrote
            **({"intervals": intervals_json(self.intervals, split)} if self.intervals else {}),
            **({"comparison": self.comparison.to_json()} if self.comparison is not None else {}),
        }


def calibration_line(result: Evaluation, models: Sequence[Any]) -> str:
    """Which temperature the evaluation applied, and the ECE and NLL before and after it."""
    split, cal, m, trained = result.split, result.calibrated, result.metrics, models[0]
    ensemble = len(models) > 1
    if cal is None:
        return (
            "calibration: none of the members has a temperature"
            if ensemble
            else (f"calibration: {trained.temperature_note()}")
        )
    note = " (fitted on this split: optimistic)" if cal.fitted_on == split else ""
    note += "" if ensemble else f" (read from {trained.calibration_origin})"
    source = "the CV folds' out-of-fold predictions" if cal.fitted_on == "cv" else f"the {cal.fitted_on} split"
    temperature = (
        f"{cal.temperatures[0]:.3f}"
        if not ensemble
        else "per member " + ", ".join(f"{t:.2f}" for t in cal.temperatures)
    )
    return (
        f"calibration: temperature {temperature} from {source}{note}: "
        f"ECE {m[f'{split}/ece']:.3f} -> [bold]{cal.metrics[f'{split}/ece']:.3f}[/bold], "
        f"NLL {m[f'{split}/loss']:.3f} -> [bold]{cal.metrics[f'{split}/loss']:.3f}[/bold]"
    )


def comparison_line(comparison: Comparison, other: str, size: int) -> str:
    """A - B with each paired interval, and McNemar's test, in one line."""
    d, test = comparison.difference, comparison.mcnemar
    return (
        f"[bold]A - B[/bold] (B: {other}, same {size} images, paired bootstrap): "
        + ", ".join(f"{k} {v.value:+.3f} [{v.low:+.3f}, {v.high:+.3f}]" for k, v in d.items())
        + f"; McNemar: A alone right {test.only_a}, B alone right {test.only_b}, exact p = {test.p_value:.4g}"
    )


def evaluation_figures(
    result: Evaluation, class_names: Sequence[str], figures_dir: Path, split: str, stem: Optional[str] = None
) -> list[Path]:
    """Confusion matrix, ROC curves and reliability diagram of one evaluation, as PNGs
    named ``<stem>_<figure>.png`` (stem: ``eval_<split>``)."""
    from brainmri.reporting import figures

    m = result.metrics
    probs, targets = result.probs, result.targets
    stem = stem or f"eval_{split}"
    paths = [figures_dir / f"{stem}_{name}.png" for name in ("confusion_matrix", "roc", "reliability")]
    figures.save_figure(
        figures.confusion_matrix(m["confusion_matrix"], class_names, f"{split.capitalize()} confusion matrix"), paths[0]
    )
    aucs = [m["per_class"][c]["auroc"] for c in class_names]
    figures.save_figure(figures.roc_curves(roc_curves(probs, targets, len(class_names)), aucs, class_names), paths[1])
    figures.save_figure(figures.reliability_diagram(reliability_bins(probs, targets), m[f"{split}/ece"]), paths[2])
    if result.calibrated is not None:
        cal = result.calibrated
        paths.append(figures_dir / f"{stem}_reliability_calibrated.png")
        figures.save_figure(
            figures.reliability_diagram(reliability_bins(cal.probs, targets), cal.metrics[f"{split}/ece"]), paths[3]
        )
    return paths
