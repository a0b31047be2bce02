"""brainmri/reporting/model_card.py: MODEL_CARD.md from a run directory's own files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from brainmri.reporting.model_card import model_card, write_model_card
from brainmri.rundir import RunDir
from brainmri.scoring.calibration import Calibration, write_calibration
from brainmri.scoring.intervals import bootstrap_intervals, intervals_json

RUN_V1 = Path(__file__).resolve().parents[2] / "fixtures" / "run_v1"


def finished_run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    shutil.copytree(RUN_V1, run.path, ignore=shutil.ignore_patterns("checkpoints"))
    results = {
        "best_epoch": 1,
        "tta": "hflip",
        "test/acc": 0.75,
        "test/balanced_acc": 0.75,
        "test/macro_f1": 0.74,
        "test/auroc_macro": 0.9,
        "test/ece": 0.12,
        "test/ece_calibrated": 0.05,
        "test/size": 40,
        "per_class": {
            c: {"precision": 0.7, "recall": 0.8, "specificity": 0.9, "f1": 0.75, "support": 10}
            for c in ("glioma", "meningioma", "notumor", "pituitary")
        },
        "intervals": intervals_json(bootstrap_intervals([0, 1, 2, 3] * 10, [0, 1, 2, 2] * 10, 4), "test"),
    }
    run.results.write_text(json.dumps(results))
    return run


def test_the_card_holds_data_metrics_with_intervals_calibration_recipe_and_limits(tmp_path):
    run = finished_run(tmp_path)
    write_calibration(run.calibration, Calibration(1.8, "val", 32, 0.9, 0.7))
    run.excluded.write_text("Training/glioma/a.jpg\nTraining/glioma/b.jpg\n")
    card = model_card(run)
    for expected in (
        "| train | 32 | 32 | 32 | 32 | 128 |",
        "Leakage: 0 test image(s)",
        "Label audit: 2 Training image(s) left out as likely label errors",
        "| accuracy | 0.750 | 0.750 - 0.750 |",  # the intervals of results.json, whatever they are
        "stratified percentile bootstrap, 2000 resamples, seed 0",
        "| glioma | 0.800 | 0.900 | 0.700 | 10 |",
        "Temperature 1.800, fitted on the val split (32 images): NLL 0.900 -> 0.700",
        "Test ECE (15 bins): 0.120 before, 0.050 after.",
        "Model `cnn0` (from scratch), 64 px, 3 channel(s).",
        "**Not a diagnostic device.**",
    ):
        assert expected in card, expected
    path = write_model_card(run.path)
    assert path.name == "MODEL_CARD.md" and path.read_text() == card


def test_missing_pieces_are_said_to_be_missing(tmp_path):
    run = finished_run(tmp_path)
    run.results.unlink()
    run.dataset.unlink()
    card = model_card(run)
    assert "`dataset.json` is missing" in card and "No test split was scored" in card
    assert "Uncalibrated: no temperature was fitted" in card
