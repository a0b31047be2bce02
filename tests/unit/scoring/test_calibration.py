"""brainmri/scoring/calibration.py: a temperature fitted on one half lowers the NLL of the other half;
a refit borrows the temperature of its CV folds' out-of-fold predictions, and only from the same recipe."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainmri.cluster.sweep import TrialRecord, write_manifest
from brainmri.config import load_config, to_yaml
from brainmri.errors import BrainMRIError
from brainmri.evaluation.refit import calibrate_refit, confidence_differences
from brainmri.records import Predictions
from brainmri.scoring.calibration import (
    calibrated_metrics,
    fit_temperature,
    fit_temperature_to_probabilities,
    read_calibration,
    write_calibration,
)

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


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


def test_stored_probabilities_give_the_temperature_of_their_logits():
    """val_predictions.csv keeps 6 decimals; the temperature fitted on them matches the logits' one."""
    logits, targets = overconfident(3000, 4)
    rounded = np.round(logits.softmax(dim=1).double().numpy(), 6)
    from_logits = fit_temperature(logits, targets).temperature
    from_probs = fit_temperature_to_probabilities(rounded, targets.numpy(), "cv", "sweep (t00, 3 folds)")
    assert from_probs.temperature == pytest.approx(from_logits, rel=0.02)
    assert from_probs.fitted_on == "cv" and from_probs.source == "sweep (t00, 3 folds)"


def test_confidence_differences_ignore_the_split_and_name_the_rest():
    refit = load_config(["recipe=demo", "data.val_fraction=0", "train.select_metric=last"], RECIPES)
    fold = load_config(["recipe=demo", "data.folds=3", "data.fold=1", "output_dir=/elsewhere", "seed=7"], RECIPES)
    assert confidence_differences(refit, fold) == []
    other = load_config(["recipe=demo", "data.image_size=128", "optim.lr=0.01"], RECIPES)
    assert confidence_differences(refit, other) == ["data.image_size: 96 -> 128", "optim.lr: 0.001 -> 0.01"]


def write_run(folder: Path, settings: list[str]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(to_yaml(load_config(["recipe=demo", *settings], RECIPES)))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(folder / "best.safetensors"), metadata={"epoch": "1"})
    return folder


def write_cv_sweep(root: Path, logits: torch.Tensor, targets: torch.Tensor, folds: int = 3, extra: tuple = ()) -> Path:
    """A finished CV sweep as sweep.py leaves it: manifest, and per fold its config, results and out-of-fold CSV."""
    records = []
    for k, idx in enumerate(np.array_split(np.arange(len(targets)), folds)):
        run = write_run(root / f"t00-fold{k}", ["data.folds=3", f"data.fold={k}", *extra])
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val/acc": 0.8}) + "\n")
        (run / "results.json").write_text(json.dumps({"test/acc": 0.8}))
        probs = logits[idx].softmax(dim=1).tolist()
        with open(run / "val_predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "label", *[f"p_{c}" for c in CLASSES]])
            w.writerows(
                [
                    [f"Training/x/{i}.jpg", CLASSES[int(targets[i])], *[f"{p:.6f}" for p in probs[j]]]
                    for j, i in enumerate(idx)
                ]
            )
        records.append(
            TrialRecord(
                k, f"t00-fold{k}", {"data.folds": 3, "data.fold": k}, str(run), state="completed", base="t00", fold=k
            )
        )
    write_manifest(root / "manifest.json", "cv", "cv.yaml", records, {"metric": "val/acc", "cv": folds})
    return root


def test_a_refit_takes_the_temperature_of_its_folds_out_of_fold_predictions(tmp_path):
    logits, targets = overconfident(900, 5)
    sweep = write_cv_sweep(tmp_path / "cv", logits, targets)
    refit = write_run(tmp_path / "refit", ["data.val_fraction=0", "train.select_metric=last"])
    cal = calibrate_refit(refit, sweep)
    assert cal.temperature == pytest.approx(fit_temperature(logits, targets).temperature, rel=0.02)
    assert (cal.fitted_on, cal.size) == ("cv", 900) and "t00, 3 folds" in cal.source
    assert read_calibration(refit / "calibration.json") == cal  # what evaluate.py and predict.py apply
    from brainmri.scoring.calibration import calibration_from_metadata
    from brainmri.weights import read_metadata

    assert calibration_from_metadata(read_metadata(refit / "best.safetensors")) == cal  # and the weights carry it


def test_calibrate_refit_refuses_what_would_give_a_wrong_temperature(tmp_path):
    logits, targets = overconfident(300, 6)
    sweep = write_cv_sweep(tmp_path / "cv", logits, targets)
    own_val = write_run(tmp_path / "with_val", [])
    with pytest.raises(BrainMRIError, match="has a validation split and its own temperature"):
        calibrate_refit(own_val, sweep)
    other = write_cv_sweep(tmp_path / "cv128", logits, targets, extra=("data.image_size=128",))
    refit = write_run(tmp_path / "refit", ["data.val_fraction=0", "train.select_metric=last"])
    with pytest.raises(BrainMRIError, match=r"were not trained like .*data.image_size: 96 -> 128"):
        calibrate_refit(refit, other)
    (sweep / "t00-fold2" / "val_predictions.csv").unlink()
    with pytest.raises(BrainMRIError, match="t00-fold2"):
        calibrate_refit(refit, sweep, "t00")
    with pytest.raises(BrainMRIError, match="not a finished run"):
        calibrate_refit(tmp_path / "nowhere", sweep)
    assert not (refit / "calibration.json").exists()  # nothing written by a refusal
