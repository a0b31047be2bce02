"""The report of a cross-validated sweep: its table, its figures, and what goes to W&B.

``launch/sweep.py status`` prints the table and writes the figures into the sweep folder:
``cv_<metric>.png`` (the metric against each swept parameter, ± one standard deviation over
folds) and, for a sweep of ``model.dropout``, the two dropout illustrations of the CNN study
(a linear layer's output spread and an image under each swept p). Each setting whose folds
are all done also gets the 95% stratified bootstrap interval of its pooled out-of-fold
accuracy and macro-F1 (every Training image once, predicted by the fold that did not train on it).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from brainmri.cluster.sweep import CvSetting
from brainmri.reporting import figures
from brainmri.scoring.intervals import Interval, bootstrap_intervals

COLUMNS = (
    "setting",
    "overrides",
    "folds done",
    "mean ± std",
    "spread",
    "per fold",
    "test acc (mean)",
    "out-of-fold acc [95% CI]",
    "out-of-fold macro-F1 [95% CI]",
)
DROPOUT_KEY = "model.dropout"


def _sort_key(value) -> tuple:
    return (
        (0, float(value), "")
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else (1, 0.0, str(value))
    )


def out_of_fold_intervals(sweep_dir: Path, settings: Sequence[CvSetting], folds: int) -> dict[str, dict[str, Interval]]:
    """setting -> the bootstrap intervals of its pooled out-of-fold predictions, for every
    setting whose folds all wrote theirs (``val_predictions.csv``)."""
    from brainmri.errors import BrainMRIError
    from brainmri.evaluation.labels import read_out_of_fold

    out = {}
    for c in settings:
        if len(c.values) != folds:
            continue
        try:
            oof = read_out_of_fold(sweep_dir, c.base)
        except BrainMRIError:  # folds that predate val_predictions.csv: no pooled score
            continue
        out[c.base] = bootstrap_intervals(oof.labels, oof.probs.argmax(axis=1), len(oof.class_names))
    return out


def table_rows(
    settings: Sequence[CvSetting],
    varying: Sequence[str],
    folds: int,
    oof: Optional[Mapping[str, dict[str, Interval]]] = None,
) -> list[list[str]]:
    """One row per setting, in the order given, matching :data:`COLUMNS`; ``oof``: the settings'
    out-of-fold intervals (:func:`out_of_fold_intervals`)."""
    oof = oof or {}
    return [
        [
            c.base,
            " ".join(f"{k.rsplit('.', 1)[-1]}={c.overrides.get(k)}" for k in varying),
            f"{len(c.values)}/{folds}",
            f"{c.mean:.4f} ± {c.std:.4f}" if c.mean is not None else "-",
            f"{c.spread:.4f}" if c.spread is not None else "-",
            " ".join(f"{c.values[f]:.3f}" if f in c.values else "-" for f in range(folds)),
            f"{sum(c.test_acc.values()) / len(c.test_acc):.4f}" if c.test_acc else "-",
            str(oof[c.base]["acc"]) if c.base in oof else "-",
            str(oof[c.base]["macro_f1"]) if c.base in oof else "-",
        ]
        for c in settings
    ]


def parameter_axes(
    settings: Sequence[CvSetting], varying: Sequence[str]
) -> dict[str, list[tuple[object, float, float, int]]]:
    """For each swept parameter: (value, mean, std, n) over every finished fold of every
    setting with that value (the other parameters averaged out)."""
    axes = {}
    for key in varying:
        by_value: dict[str, list[float]] = {}
        for c in settings:
            if c.values:
                by_value.setdefault(json.dumps(c.overrides.get(key)), []).extend(c.values.values())
        axes[key] = [
            (json.loads(v), statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, len(xs))
            for v, xs in sorted(by_value.items(), key=lambda kv: _sort_key(json.loads(kv[0])))
        ]
    return axes


def write_figures(
    sweep_dir: Path,
    sweep: str,
    metric: str,
    folds: int,
    settings: Sequence[CvSetting],
    varying: Sequence[str],
    example: Optional[np.ndarray],
) -> dict[str, Path]:
    """The sweep's figures, written into ``sweep_dir``; W&B key -> PNG. ``example`` is one
    grayscale training image for the dropout illustration (None: that figure is left out)."""
    out: dict[str, Path] = {}
    if not varying or not any(c.values for c in settings):
        return out
    png = sweep_dir / f"cv_{metric.replace('/', '_')}.png"
    figures.save_figure(
        figures.cv_errorbars(parameter_axes(settings, varying), metric, f"sweep {sweep}: {folds}-fold CV"), png
    )
    out[f"cv/{metric}"] = png
    if DROPOUT_KEY in varying:
        ps = sorted({float(c.overrides[DROPOUT_KEY]) for c in settings if c.overrides.get(DROPOUT_KEY) is not None})
        out["dropout/linear_outputs"] = sweep_dir / "dropout_linear_outputs.png"
        figures.save_figure(figures.dropout_linear_spread(ps), out["dropout/linear_outputs"])
        if example is not None:
            out["dropout/images"] = sweep_dir / "dropout_images.png"
            figures.save_figure(figures.dropout_images(example, ps), out["dropout/images"])
    return out


def example_image(data_root: str, split_csv: Path, size: int = 192) -> Optional[np.ndarray]:
    """The first Training image of a trial's split, grayscale, ``size`` pixels square; None if
    the data is not reachable from here (status may run on a login node without the data)."""
    import csv

    from PIL import Image

    from brainmri.data.samples import resolve_root
    from brainmri.errors import DatasetError

    try:
        with split_csv.open(newline="") as f:
            first = next(row["file"] for row in csv.DictReader(f) if row["split"] == "train")
        with Image.open(resolve_root(data_root) / first) as image:
            return np.asarray(image.convert("L").resize((size, size)))
    except (OSError, StopIteration, KeyError, DatasetError):
        return None


def complete(settings: Sequence[CvSetting], folds: int) -> bool:
    """Every setting has every fold's number: the sweep's answer is final."""
    return bool(settings) and all(len(c.values) == folds for c in settings)


def summary(
    settings: Sequence[CvSetting], metric: str, oof: Optional[Mapping[str, dict[str, Interval]]] = None
) -> dict[str, float]:
    """The best setting's mean and std (``settings`` sorted best first), and its out-of-fold
    intervals when known, for W&B's summary."""
    best = settings[0]
    out = {f"cv/{metric}/mean": best.mean, f"cv/{metric}/std": best.std, f"cv/{metric}/spread": best.spread}
    for name, interval in (oof or {}).get(best.base, {}).items():
        out.update(
            {f"cv/oof/{name}": interval.value, f"cv/oof/{name}/low": interval.low, f"cv/oof/{name}/high": interval.high}
        )
    return out
