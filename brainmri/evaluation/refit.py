"""A refit's temperature from its cross-validation: a run trained on all of Training
(``data.val_fraction=0``) has no held-out images, so its temperature is fitted on the
out-of-fold predictions of the same recipe's CV sweep, the way CV chose its epochs
(``launch/calibrate.py``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

from brainmri.config import Config, config_from_yaml, flat_dict
from brainmri.errors import BrainMRIError
from brainmri.evaluation.labels import read_out_of_fold
from brainmri.reporting.model_card import write_model_card
from brainmri.rundir import RunDir
from brainmri.scoring.calibration import (
    Calibration,
    fit_temperature_to_probabilities,
    stamp_weights,
    write_calibration,
)

# The settings that shape a model's confidence: a temperature carries over only between runs that share them.
CONFIDENCE_KEYS = (
    "data.image_size",
    "data.channels",
    "augment.",
    "model.",
    "train.epochs",
    "train.batch_size",
    "train.grad_accum",
    "train.mixed_precision",
    "train.label_smoothing",
    "train.class_weights",
    "train.tta",
    "train.ema",
    "optim.",
)


def confidence_differences(run: Config, folds: Config) -> list[str]:
    """``key: run's -> folds'`` for each confidence-shaping setting on which the two disagree."""
    mine, theirs = flat_dict(asdict(run)), flat_dict(asdict(folds))
    return [
        f"{key}: {mine[key]!r} -> {theirs.get(key)!r}"
        for key in mine
        if key.startswith(CONFIDENCE_KEYS) and mine[key] != theirs.get(key)
    ]


def calibrate_refit(run_dir: Path, sweep_dir: Path, setting: Optional[str] = None) -> Calibration:
    """Fit the temperature of a refit run (no validation split) on the out-of-fold predictions of
    the same recipe's CV sweep (its best setting, or ``setting``), and write ``calibration.json``.

    Refuses a run that has its own validation temperature, folds that are not finished, and folds
    trained with other confidence-shaping settings (resolution, augmentation, model, epochs, ...)."""
    run = RunDir(Path(run_dir))
    if not run.config.is_file() or not run.best_weights.is_file():
        raise BrainMRIError(f"{run.path} is not a finished run (no config.yaml or best.safetensors)")
    cfg = config_from_yaml(run.config)
    if cfg.has_validation:
        raise BrainMRIError(
            f"{run.path} has a validation split and its own temperature ({run.calibration}); "
            "calibrate.py is for refits (data.val_fraction=0)"
        )
    oof = read_out_of_fold(Path(sweep_dir), setting)
    differences = confidence_differences(cfg, oof.config)
    if differences:
        raise BrainMRIError(
            f"the folds of {sweep_dir} ({oof.setting}) were not trained like {run.path}: " + "; ".join(differences[:4])
        )
    calibration = fit_temperature_to_probabilities(
        oof.probs, oof.labels, "cv", f"{sweep_dir} ({oof.setting}, {len(oof.runs)} folds)"
    )
    write_calibration(run.calibration, calibration)
    stamp_weights(run.best_weights, calibration)  # the weights file alone then predicts calibrated too
    if run.results.is_file():
        write_model_card(run.path)  # its calibration section names the new temperature
    return calibration
