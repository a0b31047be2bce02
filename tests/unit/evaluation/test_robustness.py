"""brainmri/evaluation/robustness.py on the bundled demo's test split, with a fixed random
linear classifier: its predictions vary from image to image, so every number below depends
on what the corruptions did to the pixels it saw."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from brainmri.config import AugmentConfig, Config, DataConfig
from brainmri.data.corruptions import CORRUPTIONS
from brainmri.data.samples import DatasetSplits, list_images, resolve_root
from brainmri.data.transforms import fixed_normalization
from brainmri.evaluation.robustness import robustness
from brainmri.evaluation.trained import TrainedModel, evaluate

DEMO = resolve_root("builtin:demo")


def linear_model(kind: str) -> TrainedModel:
    torch.manual_seed(0)
    model = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(64, 4)).eval()
    cfg = Config(data=DataConfig(image_size=32, channels=1), augment=AugmentConfig(preset="none", normalize=kind))
    mean, std = fixed_normalization(kind, 1)
    return TrainedModel(model, cfg, list(mean), list(std), Path("linear.safetensors"), None)


@pytest.fixture(scope="module")
def demo_splits() -> DatasetSplits:
    return DatasetSplits(DEMO, list_images(DEMO / "Training", DEMO), [], list_images(DEMO / "Testing", DEMO), bad={})


def test_the_clean_row_is_evaluates_accuracy_and_corruptions_change_the_answers(demo_splits):
    files = sorted(p for p in DEMO.rglob("*") if p.is_file())
    before = [(p, p.stat().st_mtime_ns, p.read_bytes()) for p in files]
    trained = linear_model("half")
    report = robustness(trained, DEMO, demo_splits.test, "test", tta="none", batch_size=16)
    evaluation = evaluate(trained, demo_splits, "test", tta="none", batch_size=16)
    assert sum(1 for row in zip(*evaluation.metrics["confusion_matrix"]) if sum(row)) >= 2  # not one class for all
    assert report.clean == pytest.approx(evaluation.metrics["test/acc"], abs=1e-9) and report.size == 40
    assert list(report.accuracy) == [c.name for c in CORRUPTIONS]
    assert all(len(row) == 5 for row in report.accuracy.values())
    assert any(a != report.clean for row in report.accuracy.values() for a in row)
    values = [a for row in report.accuracy.values() for a in row]
    assert report.mean_corruption_accuracy == pytest.approx(sum(values) / 40)
    assert report.worst[2] == min(values)
    assert sorted(p for p in DEMO.rglob("*") if p.is_file()) == files  # nothing written beside the images
    assert [(p, p.stat().st_mtime_ns, p.read_bytes()) for p in files] == before


@pytest.mark.parametrize("kind", ["zscore", "percentile", "rank"])
def test_per_image_normalization_makes_the_contrast_corruption_harmless(demo_splits, kind):
    """Lower contrast around the image's mean is an increasing affine change of the pixels:
    per-image normalization undoes it, a fixed mean and std does not."""
    contrast = [c for c in CORRUPTIONS if c.name == "contrast"]
    fixed = robustness(linear_model("half"), DEMO, demo_splits.test, "test", "none", 16, contrast)
    assert fixed.accuracy["contrast"] != [fixed.clean] * 5
    trained = linear_model(kind)
    invariant = robustness(trained, DEMO, demo_splits.test, "test", "none", 16, contrast)
    assert invariant.accuracy["contrast"] == [invariant.clean] * 5
    # evaluation's per-image transform (TrainedModel.transform) normalizes as the report's batches do
    evaluation = evaluate(trained, demo_splits, "test", tta="none", batch_size=16)
    assert invariant.clean == pytest.approx(evaluation.metrics["test/acc"], abs=1e-9)


def test_wandb_gets_the_figure_table_and_numbers_in_the_runs_own_wandb_run(tmp_path, monkeypatch):
    from brainmri.config import TrackingConfig
    from brainmri.evaluation.robustness import RobustnessReport, log_robustness
    from tests.wandb_records import summarize, wait_for_exit_record

    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb_id.txt").write_text("trainrun\n")  # the id the training run's Tracker kept
    accuracy = {c.name: [0.9, 0.8, 0.7, 0.6, 0.5] for c in CORRUPTIONS}
    accuracy["jpeg"] = [0.95, 0.9, 0.9, 0.85, 0.4]
    report = RobustnessReport("test", 40, 0.95, accuracy)
    png = tmp_path / "figures" / "robustness_test.png"
    from brainmri.evaluation.robustness import robustness_figure

    robustness_figure(report, png, "t")
    upload = log_robustness(report, TrackingConfig(), "offline", tmp_path, "robustness_test", png)
    assert upload == f"wandb sync {tmp_path / 'wandb'}/offline-run-*"
    (offline,) = (tmp_path / "wandb").glob("offline-run-*")
    run_file = next(offline.glob("run-*.wandb"))
    wait_for_exit_record(run_file)
    data = summarize(run_file)
    assert data["run_ids"] == {"trainrun"}
    summary = data["summary"]
    assert summary["robustness/test/clean_acc"] == 0.95 and summary["robustness/test/worst_drop"] == pytest.approx(0.55)
    assert summary["robustness/test/jpeg/5"] == 0.4 and summary["robustness/test/table/_type"] == "table-file"
    assert summary["robustness/test/figure/_type"] == "image-file"
    assert log_robustness(report, TrackingConfig(), "disabled", tmp_path / "x", "robustness_test", png) is None


def test_an_ensemble_of_one_model_twice_scores_as_the_model(demo_splits):
    single = robustness(linear_model("half"), DEMO, demo_splits.test, "test", "none", 16, CORRUPTIONS[:2])
    pair = robustness([linear_model("half")] * 2, DEMO, demo_splits.test, "test", "none", 16, CORRUPTIONS[:2])
    assert pair.clean == single.clean and pair.accuracy == single.accuracy
