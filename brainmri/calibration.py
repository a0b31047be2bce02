"""Temperature scaling: one scalar that makes the model's probabilities honest (Guo et al., 2017).

A network trained to a low loss on a small dataset is over-confident: its top probability is
higher than its accuracy. Dividing the logits by a temperature T > 1, fitted on the
validation split by minimizing the negative log-likelihood, fixes most of that without
changing a single prediction (argmax is unchanged). The temperature is fitted after
training on the best weights and stored beside them (``calibration.json``);
``evaluate.py`` and ``predict.py`` apply it.

A refit on all of Training (``data.val_fraction=0``) has no held-out images. Its temperature
comes from the same recipe's cross-validation instead (:func:`calibrate_refit`, run by
``launch/calibrate.py``): fitted on the folds' out-of-fold predictions, the way CV chose its epochs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
import torch.nn.functional as F

from brainmri.errors import BrainMRIError
from brainmri.rundir import RunDir, atomic_write_json

if TYPE_CHECKING:
    from brainmri.config import Config
    from brainmri.distributed import Predictions


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it did on the split it was fitted on."""

    temperature: float
    fitted_on: str  # "val": the run's own validation split; "cv": another run's folds (``source``)
    size: int
    nll_before: float
    nll_after: float
    source: str = ""  # for "cv": the sweep folder and setting whose out-of-fold predictions were used

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, split: str = "val") -> Calibration:
    """The T > 0 minimizing NLL(logits / T) on these predictions (LBFGS on log T)."""
    logits, targets = logits.detach().double().cpu(), targets.detach().long().cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    return Calibration(
        temperature=temperature, fitted_on=split, size=len(targets),
        nll_before=float(F.cross_entropy(logits, targets)), nll_after=float(F.cross_entropy(logits / temperature, targets)),
    )


def fit_temperature_to_probabilities(probs: np.ndarray, targets: np.ndarray, split: str, source: str = "") -> Calibration:
    """:func:`fit_temperature` on stored probabilities. Their logarithms are the logits up to a
    constant per row, which the softmax ignores; probabilities rounded to 0 are floored at 1e-7."""
    logits = torch.from_numpy(np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-7, None)))
    return replace(fit_temperature(logits, torch.as_tensor(np.asarray(targets)), split), source=source)


# The settings that shape a model's confidence: a temperature carries over only between runs that share them.
CONFIDENCE_KEYS = ("data.image_size", "data.channels", "augment.", "model.", "train.epochs", "train.batch_size",
                   "train.grad_accum", "train.mixed_precision", "train.label_smoothing", "train.class_weights",
                   "train.tta", "optim.")


def confidence_differences(run: "Config", folds: "Config") -> list[str]:
    """``key: run's -> folds'`` for each confidence-shaping setting on which the two disagree."""
    from brainmri.config import flat_dict

    mine, theirs = flat_dict(asdict(run)), flat_dict(asdict(folds))
    return [f"{key}: {mine[key]!r} -> {theirs.get(key)!r}" for key in mine
            if key.startswith(CONFIDENCE_KEYS) and mine[key] != theirs.get(key)]


def calibrate_refit(run_dir: Path, sweep_dir: Path, setting: Optional[str] = None) -> Calibration:
    """Fit the temperature of a refit run (no validation split) on the out-of-fold predictions of
    the same recipe's CV sweep (its best setting, or ``setting``), and write ``calibration.json``.

    Refuses a run that has its own validation temperature, folds that are not finished, and folds
    trained with other confidence-shaping settings (resolution, augmentation, model, epochs, ...)."""
    from brainmri.config import config_from_yaml
    from brainmri.labels import read_out_of_fold

    run = RunDir(Path(run_dir))
    if not run.config.is_file() or not run.best_weights.is_file():
        raise BrainMRIError(f"{run.path} is not a finished run (no config.yaml or best.safetensors)")
    cfg = config_from_yaml(run.config)
    if cfg.has_validation:
        raise BrainMRIError(f"{run.path} has a validation split and its own temperature ({run.calibration}); "
                            "calibrate.py is for refits (data.val_fraction=0)")
    oof = read_out_of_fold(Path(sweep_dir), setting)
    differences = confidence_differences(cfg, oof.config)
    if differences:
        raise BrainMRIError(f"the folds of {sweep_dir} ({oof.setting}) were not trained like {run.path}: " + "; ".join(differences[:4]))
    calibration = fit_temperature_to_probabilities(oof.probs, oof.labels, "cv", f"{sweep_dir} ({oof.setting}, {len(oof.runs)} folds)")
    write_calibration(run.calibration, calibration)
    return calibration


def calibrated_metrics(predictions: "Predictions", calibration: Calibration, split: str) -> dict[str, float]:
    """ECE and NLL of ``split`` after dividing by the temperature (accuracy is unchanged)."""
    from brainmri.metrics import expected_calibration_error

    logits = calibration.apply(predictions.logits.float().cpu())
    targets = predictions.targets.long().cpu()
    return {
        "temperature": calibration.temperature,
        f"{split}/ece_calibrated": expected_calibration_error(logits.softmax(dim=1), targets),
        f"{split}/loss_calibrated": float(F.cross_entropy(logits, targets)),
    }


def write_calibration(path: Path, calibration: Calibration) -> None:
    atomic_write_json(path, asdict(calibration))


def read_calibration(path: Path) -> Optional[Calibration]:
    """The run's temperature, or None for runs trained before calibration existed."""
    if not path.exists():
        return None
    return Calibration(**json.loads(path.read_text()))
