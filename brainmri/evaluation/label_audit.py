"""``audit.py labels``: whether the folds learned enough to rank anything, then the label issues
of their out-of-fold predictions as tables, ``label_issues.csv`` and ``label_issues.png``.

Confident learning trusts the out-of-fold probabilities. Folds that ended at chance (every
image predicted glioma, say) make every image of the other classes a "suspect": ranking them
is ranking noise. So the audit first compares the out-of-fold accuracy (with its stratified
bootstrap interval) to the majority-class rate, the accuracy of always guessing the most
common label, and refuses when the interval's lower bound is not above it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from brainmri.errors import BrainMRIError
from brainmri.evaluation.labels import OutOfFold, rank_label_issues, write_label_issues
from brainmri.scoring.intervals import Bootstrap, Interval, bootstrap_intervals

log = logging.getLogger(__name__)

# Beating the majority rate by less than this (at the interval's lower bound) earns a warning.
NARROW_MARGIN = 0.10


@dataclass(frozen=True)
class FoldSkill:
    """How the folds' out-of-fold accuracy compares with always guessing the majority class."""

    accuracy: Interval
    majority_rate: float
    majority_class: str

    @property
    def learned(self) -> bool:
        """The interval's lower bound is above the majority rate: the folds beat guessing."""
        return self.accuracy.low > self.majority_rate

    @property
    def narrow(self) -> bool:
        return self.learned and self.accuracy.low - self.majority_rate < NARROW_MARGIN

    def line(self) -> str:
        a = self.accuracy
        return (
            f"out-of-fold accuracy {a.value:.3f} ({a.level:.0%} CI {a.low:.3f}-{a.high:.3f}) against the "
            f"majority-class rate {self.majority_rate:.3f} (always {self.majority_class})"
        )


def fold_skill(oof: OutOfFold, spec: Bootstrap = Bootstrap()) -> FoldSkill:
    """The folds' out-of-fold accuracy with its interval, and the majority-class rate."""
    counts = np.bincount(oof.labels, minlength=len(oof.class_names))
    accuracy = bootstrap_intervals(oof.labels, oof.probs.argmax(axis=1), len(oof.class_names), spec)["acc"]
    majority = int(counts.argmax())
    return FoldSkill(accuracy, float(counts[majority] / counts.sum()), oof.class_names[majority])


def check_fold_skill(skill: FoldSkill, setting: str) -> Optional[str]:
    """Refuse (one line) folds that do not beat the majority class; the warning when they beat
    it only narrowly (None otherwise)."""
    if not skill.learned:
        raise BrainMRIError(
            f"setting {setting}: the folds have not learned: {skill.line()}; the lower bound is not above it, "
            "so their 'label issues' would rank noise. Train better folds (more epochs, another lr) first"
        )
    if not skill.narrow:
        return None
    warning = (
        f"setting {setting}: the folds beat the majority class only narrowly (the lower bound is within "
        f"{100 * NARROW_MARGIN:.0f} points of it); many of these label issues may be the models' errors"
    )
    log.warning(warning)
    return warning


def show_label_issues(oof: OutOfFold, top: int, out: Path) -> list[Path]:
    """Check the folds' skill, then print the label issues, and write ``label_issues.csv`` and
    (when there are issues) ``label_issues.png`` into ``out``; the files written."""
    from rich.table import Table

    from brainmri.reporting.console import console

    skill = fold_skill(oof)
    console.print(skill.line())
    warning = check_fold_skill(skill, oof.setting)
    if warning:
        console.print(f"[bold yellow]warning[/]: {warning}")
    names = oof.class_names
    issues = rank_label_issues(oof.files, oof.labels, oof.probs)
    counts = np.bincount(oof.labels, minlength=len(names))
    flagged = np.bincount([i.given for i in issues], minlength=len(names))
    title = f"{len(issues)} label issue(s) among {len(oof.files)} Training images (setting {oof.setting})"
    summary = Table(title=title)
    for column in ("given label", "images", "flagged", "share"):
        summary.add_column(column, justify="left" if column == "given label" else "right")
    for k, name in enumerate(names):
        summary.add_row(name, str(counts[k]), str(flagged[k]), f"{flagged[k] / max(counts[k], 1):.1%}")
    console.print(summary)
    table = Table(title=f"the {min(top, len(issues))} most suspect (lowest probability of the given label)")
    for column in ("file", "given", "suggested", "p(given)", "p(suggested)"):
        table.add_column(column, overflow="fold")
    for i in issues[:top]:
        table.add_row(i.file, names[i.given], names[i.suggested], f"{i.self_confidence:.3f}", f"{i.suggested_prob:.3f}")
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    write_label_issues(out / "label_issues.csv", issues, names)
    written = [out / "label_issues.csv"]
    if issues:
        written.append(_suspects_figure(oof, issues[:top], out / "label_issues.png"))
    return written


def _suspects_figure(oof: OutOfFold, shown: list, path: Path) -> Path:
    from brainmri.data.samples import resolve_root
    from brainmri.data.scanner import find_slices
    from brainmri.reporting import figures

    root, names = resolve_root(oof.data_root), oof.class_names
    # read as predict.py reads any file (a DICOM or NIfTI suspect shows its first slice)
    images = [np.asarray(find_slices([str(root / i.file)])[0].load(1).resize((160, 160))) for i in shown]
    captions = [
        f"{names[i.given]} → {names[i.suggested]} ({i.suggested_prob:.0%})\n{Path(i.file).name[:28]}" for i in shown
    ]
    figures.save_figure(figures.label_issue_grid(images, captions, "label suspects: given → suggested"), path)
    return path
