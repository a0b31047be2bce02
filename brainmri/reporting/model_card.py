"""``MODEL_CARD.md``: what a finished run is, how well it did (with intervals), how it was
calibrated, how it was trained, and what it must not be used for, written from the run
directory's own files so that anyone can regenerate it (training writes it when the run
finishes; ``calibrate.py`` rewrites it with the new temperature).

Everything in it is read from ``config.yaml``, ``dataset.json``, ``results.json``,
``calibration.json``, ``test_leaks.tsv`` and ``excluded.txt``; a missing piece is said to
be missing, never guessed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from brainmri import __version__
from brainmri.config import Config, config_from_yaml
from brainmri.records import DatasetInfo
from brainmri.rundir import RunDir, atomic_write_text
from brainmri.scoring.calibration import Calibration, read_calibration

log = logging.getLogger(__name__)

CARD = "MODEL_CARD.md"

NOT_FOR = """\
- **Not a diagnostic device.** It is not cleared or approved by any regulator (FDA, CE/MDR or
  other), has not been validated prospectively or on patients, and must not be used to
  diagnose, triage, rule out or treat anyone, nor replace a radiologist's reading.
- Not for images unlike its training data: other modalities or sequences than the dataset's
  MRI slices, other anatomy, paediatric scans if the data had none, scanners, field strengths
  or post-processing the data did not contain, whole volumes without slice-level review.
- Not for tumour types outside its four classes: it always answers one of them, and its
  "no tumour" is not evidence that a scan is normal.
- Its probabilities are calibrated on its own validation split at best; on other data they
  are not trustworthy without recalibration, and its accuracy there is unknown.
"""


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _data_section(cfg: Config, info: Optional[DatasetInfo], run: RunDir) -> list[str]:
    lines = ["## Data and split", ""]
    if info is None:
        return lines + ["`dataset.json` is missing: the data this run saw is not recorded.", ""]
    lines += [f"Dataset: `{cfg.data.root}`. Classes, in output order: {', '.join(info.class_names)}.", ""]
    lines += ["| split | " + " | ".join(info.class_names) + " | total |", "|---" * (len(info.class_names) + 2) + "|"]
    for split, counts in info.counts.items():
        if counts is not None:
            lines.append(f"| {split} | " + " | ".join(map(str, counts)) + f" | {sum(counts)} |")
    share = f"fold {cfg.data.fold} of {cfg.data.folds}-fold CV" if cfg.data.folds else f"{cfg.data.val_fraction:.0%}"
    drawn = "image by image" if cfg.data.split_groups == "none" else "as whole duplicate groups"
    validation = f"{share} of Training, drawn {drawn} (`data.split_groups={cfg.data.split_groups}`), seed {cfg.seed}"
    if not cfg.has_validation:
        validation = "none: a refit on all of Training (`data.val_fraction=0`)"
    lines += [
        "",
        f"- Validation: {validation}.",
        f"- Unreadable images left out: {info.bad_images}.",
        f"- Leakage: {info.train_test_leaks} test image(s) have the same pixels as a Training image" + _leak_note(info),
    ]
    excluded = run.excluded.read_text().split() if run.excluded.is_file() else []
    if excluded:
        lines.append(
            f"- Label audit: {len(excluded)} Training image(s) left out as likely label errors "
            f"(`data.exclude={cfg.data.exclude}`; the list is `excluded.txt`)."
        )
    else:
        lines.append("- Label audit: no image was excluded; the labels are the dataset's as published.")
    return lines + [""]


def _leak_note(info: DatasetInfo) -> str:
    if info.dedup == "train_test":
        return " (dropped from the test split: `data.dedup=train_test`)."
    if info.train_test_leaks:
        return "; the test score below includes them (`evaluate.py` scores the split without them too)."
    return "."


def _metrics_section(results: Optional[dict[str, Any]]) -> list[str]:
    lines = ["## Test metrics", ""]
    if results is None or "test/acc" not in results:
        return lines + ["No test split was scored (no `Testing/` folder, or the run has not finished).", ""]
    intervals = results.get("intervals") or {}
    size, tta, best = results.get("test/size", "?"), results.get("tta", "none"), results.get("best_epoch")
    lines += [f"On {size} test images, TTA `{tta}`, the weights of epoch {best}.", ""]
    lines += ["| metric | value | 95% CI |", "|---|---|---|"]
    for key, label in (("acc", "accuracy"), ("balanced_acc", "balanced accuracy"), ("macro_f1", "macro-F1")):
        interval = intervals.get(f"test/{key}")
        ci = f"{interval['low']:.3f} - {interval['high']:.3f}" if interval else "not computed"
        lines.append(f"| {label} | {_fmt(results.get(f'test/{key}'))} | {ci} |")
    lines += [f"| macro ROC AUC | {_fmt(results.get('test/auroc_macro'))} | |", ""]
    spec = intervals.get("bootstrap")
    if spec:
        lines += [f"Intervals: {spec['method']}, {spec['resamples']} resamples, seed {spec['seed']}.", ""]
    lines += ["| class | recall (sensitivity) | specificity | precision | support |", "|---|---|---|---|---|"]
    for name, m in (results.get("per_class") or {}).items():
        cells = [_fmt(m["recall"]), _fmt(m.get("specificity")), _fmt(m["precision"]), str(m["support"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _calibration_section(results: Optional[dict[str, Any]], cal: Optional[Calibration]) -> list[str]:
    lines = ["## Calibration", ""]
    if cal is None:
        return lines + ["Uncalibrated: no temperature was fitted (a run without validation; see `calibrate.py`).", ""]
    fitted = f"the {cal.fitted_on} split"
    if cal.fitted_on == "cv":
        fitted = "the CV folds' out-of-fold predictions" + (f" ({cal.source})" if cal.source else "")
    lines.append(
        f"Temperature {cal.temperature:.3f}, fitted on {fitted} ({cal.size} images): "
        f"NLL {cal.nll_before:.3f} -> {cal.nll_after:.3f} there."
    )
    if results is not None and "test/ece" in results:
        after = results.get("test/ece_calibrated")
        tail = "." if after is not None else " (the temperature came after the test phase: see `evaluate.py`)."
        lines.append(f"Test ECE (15 bins): {_fmt(results['test/ece'])} before, {_fmt(after)} after{tail}")
    return lines + ["The weights file carries this temperature; `predict.py` applies it.", ""]


def _recipe_section(cfg: Config) -> list[str]:
    return [
        "## Recipe",
        "",
        f"- Model `{cfg.model.name}` ({'pretrained' if cfg.model.pretrained else 'from scratch'}), "
        f"{cfg.data.image_size} px, {cfg.data.channels} channel(s).",
        f"- {cfg.train.epochs} epochs, batch {cfg.train.batch_size} per process, {cfg.optim.name} lr {cfg.optim.lr}, "
        f"weight decay {cfg.optim.weight_decay}, schedule {cfg.optim.schedule}; augmentation `{cfg.augment.preset}`; "
        f"precision `{cfg.train.mixed_precision}`; best epoch by `{cfg.train.select_metric}`; seed {cfg.seed}.",
        f"- Recipe `{cfg.recipe or 'none (defaults and overrides)'}`; the full config is `config.yaml`. "
        f"brainmri {__version__}.",
        "",
    ]


def model_card(run: RunDir) -> str:
    """The card's Markdown, from the run directory's files."""
    cfg = config_from_yaml(run.config)
    info = DatasetInfo.from_json(json.loads(run.dataset.read_text())) if run.dataset.is_file() else None
    results = json.loads(run.results.read_text()) if run.results.is_file() else None
    lines = [
        f"# Model card: {run.path.name}",
        "",
        f"A `{cfg.model.name}` classifier of brain-MRI slices into "
        f"{', '.join(info.class_names) if info else 'four classes'}, trained with brainmri for research and teaching.",
        "",
        *_data_section(cfg, info, run),
        *_metrics_section(results),
        *_calibration_section(results, read_calibration(run.calibration)),
        *_recipe_section(cfg),
        "## What it must not be used for",
        "",
        NOT_FOR,
    ]
    return "\n".join(lines)


def write_model_card(run_dir: Path) -> Path:
    """Write (or rewrite) ``MODEL_CARD.md`` in a finished run directory."""
    run = RunDir(Path(run_dir))
    path = run.path / CARD
    atomic_write_text(path, model_card(run))
    return path
