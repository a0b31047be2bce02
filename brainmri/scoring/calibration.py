"""Temperature scaling: one scalar that makes the model's probabilities honest (Guo et al., 2017).

A network trained to a low loss on a small dataset is over-confident: its top probability is
higher than its accuracy. Dividing the logits by a temperature T > 1, fitted on the
validation split by minimizing the negative log-likelihood, fixes most of that without
changing a single prediction (argmax is unchanged). The temperature is fitted after
training on the best weights and stored beside them (``calibration.json``) and inside them
(the weights file's metadata); ``evaluate.py`` and ``predict.py`` apply it.

A refit on all of Training (``data.val_fraction=0``) has no held-out images. Its temperature
comes from the same recipe's cross-validation instead (:mod:`brainmri.evaluation.refit`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from brainmri.records import Predictions
from brainmri.rundir import atomic_write_json
from brainmri.weights import CALIBRATION_KEY, INFERENCE_KEY, read_metadata, read_spec, update_metadata


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
        temperature=temperature,
        fitted_on=split,
        size=len(targets),
        nll_before=float(F.cross_entropy(logits, targets)),
        nll_after=float(F.cross_entropy(logits / temperature, targets)),
    )


def fit_temperature_to_probabilities(
    probs: np.ndarray, targets: np.ndarray, split: str, source: str = ""
) -> Calibration:
    """:func:`fit_temperature` on stored probabilities. Their logarithms are the logits up to a
    constant per row, which the softmax ignores; probabilities rounded to 0 are floored at 1e-7."""
    logits = torch.from_numpy(np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-7, None)))
    return replace(fit_temperature(logits, torch.as_tensor(np.asarray(targets)), split), source=source)


def calibrated_metrics(predictions: Predictions, calibration: Calibration, split: str) -> dict[str, float]:
    """ECE and NLL of ``split`` after dividing by the temperature (accuracy is unchanged)."""
    from brainmri.scoring.metrics import expected_calibration_error

    logits = calibration.apply(predictions.logits.float().cpu())
    targets = predictions.targets.long().cpu()
    return {
        "temperature": calibration.temperature,
        f"{split}/ece_calibrated": expected_calibration_error(logits.softmax(dim=1), targets),
        f"{split}/loss_calibrated": float(F.cross_entropy(logits, targets)),
    }


def write_calibration(path: Path, calibration: Calibration) -> None:
    atomic_write_json(path, asdict(calibration))


def stamp_weights(weights: Path, calibration: Calibration) -> None:
    """Carry the temperature inside the weights file too (its ``calibration`` metadata, and the
    spec's temperature), so the file predicts calibrated without ``calibration.json`` beside it."""
    metadata = read_metadata(weights)
    entries = {CALIBRATION_KEY: json.dumps(asdict(calibration))}
    spec = read_spec(metadata)
    if spec is not None:
        stamped = replace(
            spec,
            temperature=calibration.temperature,
            temperature_fitted_on=calibration.fitted_on,
            temperature_source=calibration.source,
        )
        entries[INFERENCE_KEY] = json.dumps(stamped.to_json())
    update_metadata(weights, entries)


def calibration_from_metadata(metadata: dict[str, str]) -> Optional[Calibration]:
    """The temperature a weights file carries; None when it has none (uncalibrated or older)."""
    return Calibration(**json.loads(metadata[CALIBRATION_KEY])) if CALIBRATION_KEY in metadata else None


def read_calibration(path: Path) -> Optional[Calibration]:
    """The run's temperature, or None for runs trained before calibration existed."""
    if not path.exists():
        return None
    return Calibration(**json.loads(path.read_text()))
