"""brainmri/calibration.py: a temperature fitted on one half lowers the NLL of the other half."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from brainmri.calibration import calibrated_metrics, fit_temperature, read_calibration, write_calibration
from brainmri.distributed import Predictions


def overconfident(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a 4-class model that is right ~70% of the time but sure of itself (x4)."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 4, (n,), generator=g)
    logits = torch.randn(n, 4, generator=g)
    logits[torch.arange(n), targets] += 1.5
    return logits * 4.0, targets


def test_temperature_fitted_on_validation_lowers_held_out_nll_and_keeps_predictions():
    val_logits, val_targets = overconfident(2000, 0)
    test_logits, test_targets = overconfident(2000, 1)
    cal = fit_temperature(val_logits, val_targets)
    assert 2.5 < cal.temperature < 6.0  # the x4 over-confidence, found back
    assert cal.nll_after < cal.nll_before
    before = F.cross_entropy(test_logits, test_targets)
    after = F.cross_entropy(cal.apply(test_logits), test_targets)
    assert after < 0.8 * before
    assert torch.equal(cal.apply(test_logits).argmax(1), test_logits.argmax(1))
    metrics = calibrated_metrics(Predictions(test_logits, test_targets, torch.zeros(len(test_targets))), cal, "test")
    assert metrics["test/loss_calibrated"] == float(after) and metrics["temperature"] == cal.temperature


def test_a_calibrated_model_stays_near_one():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4000, 4, generator=g)
    targets = torch.distributions.Categorical(logits=logits).sample()
    assert 0.9 < fit_temperature(logits, targets).temperature < 1.1


def test_round_trip(tmp_path):
    cal = fit_temperature(*overconfident(200, 2))
    write_calibration(tmp_path / "calibration.json", cal)
    assert read_calibration(tmp_path / "calibration.json") == cal
    assert read_calibration(tmp_path / "missing.json") is None
