"""The robustness report: a trained model scored on corrupted copies of its own split.

Each image of the split is decoded and resized once, as the evaluation transform does; every
corruption of :mod:`brainmri.data.corruptions` at every severity is then applied to those
pixels in memory (the files are only read), followed by the run's own normalization, and
scored. The clean row is the same pipeline without a corruption, so it equals
:func:`~brainmri.evaluation.trained.evaluate`'s accuracy. The report says the accuracy per
corruption and severity, the mean corruption accuracy (over every corruption and severity,
ImageNet-C's "mean corruption" without its AlexNet reference) and the worst drop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from brainmri.config import TrackingConfig
from brainmri.data.corruptions import CORRUPTIONS, SEVERITIES, Corruption
from brainmri.data.dataset import ImageDataset
from brainmri.data.loaders import auto_workers
from brainmri.data.samples import Sample
from brainmri.data.transforms import resized_transform, to_float
from brainmri.errors import DatasetError
from brainmri.evaluation.trained import TrainedModel, predict_probs, resolve_tta
from brainmri.reporting.tracking import SummaryRun, log_summary
from brainmri.rundir import atomic_write_json

log = logging.getLogger(__name__)

NOISE_SEED = 0  # the noise corruption's generator: the same noise for every model scored


@dataclass
class RobustnessReport:
    """Accuracy on the clean split and on each corruption at each severity."""

    split: str
    size: int
    clean: float
    accuracy: dict[str, list[float]]  # corruption name -> accuracy at severities 1..5
    corruptions: Sequence[Corruption] = CORRUPTIONS

    @property
    def mean_corruption_accuracy(self) -> float:
        values = [a for row in self.accuracy.values() for a in row]
        return sum(values) / len(values)

    @property
    def worst(self) -> tuple[str, int, float]:
        """(corruption, severity, accuracy) of the lowest accuracy; the mildest severity on ties."""
        return min(
            ((name, s, row[s - 1]) for name, row in self.accuracy.items() for s in SEVERITIES), key=lambda t: t[2]
        )

    def to_json(self, weights: Any, tta: Any, data_root: Path) -> dict[str, Any]:
        """``robustness_<split>.json``."""
        name, severity, acc = self.worst
        by_name = {c.name: c for c in self.corruptions}
        return {
            "split": self.split,
            "size": self.size,
            "weights": weights,
            "tta": tta,
            "data_root": str(data_root),
            "clean_acc": self.clean,
            "mean_corruption_acc": self.mean_corruption_accuracy,
            "mean_drop": self.clean - self.mean_corruption_accuracy,
            "worst": {"corruption": name, "severity": severity, "acc": acc, "drop": self.clean - acc},
            "corruptions": {
                n: {
                    "parameter": by_name[n].parameter,
                    "description": by_name[n].description,
                    "severities": {
                        str(s): {by_name[n].parameter: by_name[n].levels[s - 1], "acc": row[s - 1]} for s in SEVERITIES
                    },
                    "mean_acc": sum(row) / len(row),
                }
                for n, row in self.accuracy.items()
            },
            "noise_seed": NOISE_SEED,
        }


def decode_once(root: Path, samples: Sequence[Sample], channels: int, image_size: int) -> torch.Tensor:
    """(N, C, S, S) uint8: every image resized as the evaluation transform resizes it."""
    loader = DataLoader(
        ImageDataset(root, samples, channels, resized_transform(image_size)), batch_size=64, num_workers=auto_workers(1)
    )
    return torch.cat([images for images, _ in loader])


class _Inputs:
    """Each member's decoded split, decoded once per (channels, image size)."""

    def __init__(self, root: Path, samples: Sequence[Sample]):
        self.root, self.samples, self.decoded = root, samples, {}

    def of(self, member: TrainedModel) -> torch.Tensor:
        key = (member.channels, member.image_size)
        if key not in self.decoded:
            self.decoded[key] = decode_once(self.root, self.samples, *key)
        return self.decoded[key]


def _probs(
    models: Sequence[TrainedModel], inputs: _Inputs, corruption: Corruption | None, severity: int, tta: str, batch: int
) -> torch.Tensor:
    """The members' mean probabilities on the split with ``corruption`` at ``severity`` (None: clean)."""
    total = None
    for member in models:
        images, norm = inputs.of(member), member.input_normalization()
        generator = torch.Generator().manual_seed(NOISE_SEED)
        parts = []
        for start in range(0, len(images), batch):
            x = to_float(images[start : start + batch])
            if corruption is not None:
                x = corruption.apply(x, severity, generator)
            parts.append(predict_probs(member, norm(x), tta, calibrated=False))
        probs = torch.cat(parts)
        total = probs if total is None else total + probs
    return total / len(models)


def robustness(
    models: TrainedModel | Sequence[TrainedModel],
    root: Path,
    samples: Sequence[Sample],
    split: str,
    tta: str = "auto",
    batch_size: int = 64,
    corruptions: Sequence[Corruption] = CORRUPTIONS,
) -> RobustnessReport:
    """Accuracy of one model (or the mean probabilities of several) on ``samples``, clean and
    under every corruption at every severity."""
    models = [models] if isinstance(models, TrainedModel) else list(models)
    if not samples:
        raise DatasetError(f"the {split} split is empty: nothing to corrupt")
    missing = [s.path for s in samples if not (root / s.path).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) of the {split} split are not in {root}, e.g. {missing[0]}")
    inputs = _Inputs(root, samples)
    targets = torch.tensor([s.label for s in samples])

    def accuracy(corruption: Corruption | None, severity: int = 0) -> float:
        probs = _probs(models, inputs, corruption, severity, tta, batch_size)
        return float((probs.argmax(dim=1) == targets).float().mean())

    clean = accuracy(None)
    table: dict[str, list[float]] = {}
    for c in corruptions:
        table[c.name] = [accuracy(c, s) for s in SEVERITIES]
        log.info("%s: %s", c.name, " ".join(f"{a:.3f}" for a in table[c.name]))
    return RobustnessReport(split, len(samples), clean, table, corruptions)


def _points(difference: float) -> str:
    """A difference of accuracies in percentage points."""
    return f"{100 * difference:+.1f} pt"


def print_report(report: RobustnessReport, title: str) -> None:
    """A rich table: one row per corruption, accuracy per severity and its mean; the summary below."""
    from rich.table import Table

    from brainmri.reporting.console import console

    table = Table(title=title)
    for column in ("corruption", "parameter", *map(str, SEVERITIES), "mean", "drop"):
        table.add_column(column, justify="left" if column in ("corruption", "parameter") else "right")
    table.add_row("clean", "", *[""] * len(SEVERITIES), f"{report.clean:.1%}", "")
    worst_name, worst_severity, _ = report.worst
    for c in report.corruptions:
        row = report.accuracy[c.name]
        cells = [
            f"[bold red]{a:.1%}[/]" if (c.name, s) == (worst_name, worst_severity) else f"{a:.1%}"
            for s, a in zip(SEVERITIES, row)
        ]
        mean = sum(row) / len(row)
        levels = ", ".join(f"{v:g}" for v in c.levels)
        table.add_row(c.name, f"{c.parameter} {levels}", *cells, f"{mean:.1%}", _points(mean - report.clean))
    console.print(table)
    name, severity, acc = report.worst
    mean = report.mean_corruption_accuracy
    console.print(
        f"clean [bold]{report.clean:.1%}[/bold]; mean corruption accuracy "
        f"[bold]{mean:.1%}[/bold] ({_points(mean - report.clean)}); "
        f"worst: {name} at severity {severity}, [bold]{acc:.1%}[/bold] ({_points(acc - report.clean)})"
    )


def robustness_figure(report: RobustnessReport, path: Path, title: str) -> Path:
    from brainmri.reporting import figures

    figures.save_figure(figures.robustness_curves(report.accuracy, report.clean, report.worst, title), path)
    return path


def write_robustness(
    models: Sequence[TrainedModel],
    root: Path,
    samples: Sequence[Sample],
    split: str,
    tta: str,
    batch_size: int,
    folder: Path,
    wandb_mode: str = "disabled",
) -> list[Path]:
    """Score, print the table, write ``robustness_<split>.json`` (``_ensemble`` for several
    runs) into ``folder`` and its figure into ``folder/figures``, and with ``wandb_mode``
    not disabled log the same to W&B (the first run's ``tracking`` settings); returns both paths."""
    report = robustness(models, root, samples, split, tta, batch_size)
    ensemble = len(models) > 1
    stem = f"robustness_{split}_ensemble" if ensemble else f"robustness_{split}"
    what = f"the ensemble of {len(models)} runs" if ensemble else models[0].weights.parent.name
    title = f"Robustness on corrupted copies of the {split} split ({report.size} images, {what})"
    print_report(report, title)
    tta_used = sorted({resolve_tta(m, tta) for m in models})
    weights = [str(m.weights) for m in models] if ensemble else str(models[0].weights)
    out = folder / f"{stem}.json"
    atomic_write_json(out, report.to_json(weights, tta_used[0] if len(tta_used) == 1 else tta_used, root))
    png = robustness_figure(report, folder / "figures" / f"{stem}.png", f"Accuracy under corruption ({split})")
    upload = log_robustness(report, models[0].cfg.tracking, wandb_mode, folder, stem, png)
    if upload:
        log.info("W&B (offline): upload with: %s", upload)
    return [out, png]


def log_robustness(
    report: RobustnessReport, tracking: TrackingConfig, mode: str, folder: Path, stem: str, png: Path
) -> Optional[str]:
    """The figure, the table and the summary numbers into the W&B run of ``folder`` (a run
    directory's own W&B run, joined by its id), offline-first and never fatal; logged once
    per content. Returns the upload command for an offline run."""
    columns = ["corruption", "parameter", *map(str, SEVERITIES), "mean"]
    rows = [
        [c.name, c.parameter, *report.accuracy[c.name], sum(report.accuracy[c.name]) / len(SEVERITIES)]
        for c in report.corruptions
    ]
    name, severity, acc = report.worst
    key = stem.replace("robustness_", "robustness/")
    summary = {
        f"{key}/clean_acc": report.clean,
        f"{key}/mean_corruption_acc": report.mean_corruption_accuracy,
        f"{key}/worst_drop": report.clean - acc,
        **{f"{key}/{c.name}/{s}": report.accuracy[c.name][s - 1] for c in report.corruptions for s in SEVERITIES},
    }
    run = SummaryRun(
        tracking.name or folder.name,
        tracking.group,
        None,
        f"{key}/table",
        f"wandb_{stem}.json",
        "the robustness report",
    )
    return log_summary(tracking, mode, folder, run, {f"{key}/figure": png}, columns, rows, summary)
