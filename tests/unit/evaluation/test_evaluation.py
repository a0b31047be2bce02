"""brainmri/evaluation/trained.py: finding and rebuilding a trained model, and scoring a split,
on a run written by brainmri 0.1 (tests/fixtures/run_v1: cnn0 at 64 px on the demo data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from brainmri.errors import CheckpointError, DatasetError
from brainmri.evaluation.trained import (
    evaluate,
    load_trained,
    locate,
    predict_probs,
    recorded_leaks,
    split_samples,
)

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "run_v1"
CPU = torch.device("cpu")


def test_locate_a_run_a_weights_file_or_a_checkpoint_folder(tmp_path):
    assert locate(str(FIXTURE), None) == (FIXTURE, FIXTURE / "best.safetensors")
    assert locate(None, str(FIXTURE / "best.safetensors")) == (FIXTURE, FIXTURE / "best.safetensors")
    folder = FIXTURE / "checkpoints" / "epoch_0001"
    assert locate(None, str(folder)) == (FIXTURE, folder / "model.safetensors")
    for run, checkpoint, message in [
        (None, None, "give run="),
        (str(tmp_path / "nope"), None, "run directory not found"),
        (str(tmp_path), None, "has no best.safetensors"),
        (None, str(tmp_path / "x.pth"), "not found"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            locate(run, checkpoint)


def test_an_old_run_loads_with_its_normalization_and_precision():
    trained = load_trained(str(FIXTURE), device=CPU)
    assert trained.cfg.model.name == "cnn0" and trained.image_size == 64 and trained.cfg.figures.samples_per_class == 3
    assert trained.mean == [0.5, 0.5, 0.5] and trained.precision in ("bf16", "no")
    probs = predict_probs(trained, torch.zeros(2, 3, 64, 64), tta="hflip")
    assert probs.shape == (2, 4) and torch.allclose(probs.sum(1), torch.ones(2))
    assert trained.cfg.train.tta == "none"  # a run from before train.tta: auto means no TTA
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(predict_probs(trained, x), predict_probs(trained, x, tta="none"))


def test_flip_tta_averages_the_logits_of_image_and_mirror():
    trained = load_trained(str(FIXTURE), device=CPU)
    trained.precision = "no"
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = ((trained.model(x) + trained.model(x.flip(-1))) / 2).softmax(dim=1)
    assert torch.allclose(predict_probs(trained, x, tta="hflip", calibrated=False), expected, atol=1e-5)


def test_a_weights_file_alone_carries_its_config(tmp_path):
    shutil.copy(FIXTURE / "best.safetensors", tmp_path / "model.safetensors")
    trained = load_trained(checkpoint=str(tmp_path / "model.safetensors"), device=CPU)
    assert trained.run_dir is None and trained.cfg.data.image_size == 64 and trained.std == [0.5, 0.5, 0.5]
    splits = split_samples(trained, None, "test")  # no split.csv: the whole Testing/ of its data.root (the demo)
    assert len(splits.test) == 40 and len(splits.train) == 160 and not splits.val
    with pytest.raises(CheckpointError, match="split=val of model.safetensors needs its run directory"):
        split_samples(trained, None, "val")


def test_evaluate_scores_the_test_split_with_and_without_leaked_images(tmp_path):
    """The demo has no leaks, so the run's record of them is planted: two test images said to
    copy Training images are left out of the leakage-free score."""
    trained = load_trained(str(FIXTURE), device=CPU)
    splits = split_samples(trained, None, "test")
    assert recorded_leaks(trained, splits.test) == {}
    assert evaluate(trained, splits, "test", batch_size=16).leakage_free is None
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    planted = {splits.test[0].path: splits.train[0].path, splits.test[-1].path: splits.train[-1].path}
    (run / "test_leaks.tsv").write_text("test\tsame pixels as\n" + "".join(f"{t}\t{r}\n" for t, r in planted.items()))
    trained = load_trained(str(run), device=CPU)
    assert recorded_leaks(trained, splits.test) == planted
    result = evaluate(trained, splits, "test", batch_size=16)
    assert result.metrics["test/acc"] == pytest.approx(0.25) and result.size == 40
    assert result.leakage_free["size"] == 38


def test_find_slices_names_the_culprit(tmp_path):
    from brainmri.data.scanner import find_slices

    with pytest.raises(DatasetError, match="no such image or folder"):
        find_slices([str(tmp_path / "nope.png")])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"bad.png: not an image"):
        find_slices([str(tmp_path)])


def test_an_ensemble_is_the_mean_of_its_members_and_a_sweep_folder_names_its_finished_runs(tmp_path):
    """Two copies of one run score exactly like the run; a calibrated copy moves only the
    calibrated numbers; a sweep folder yields its trials that have results."""
    import json

    from brainmri.evaluation.trained import load_models, run_dirs
    from brainmri.scoring.calibration import Calibration

    calibrated = tmp_path / "calibrated"
    shutil.copytree(FIXTURE, calibrated)
    (calibrated / "calibration.json").write_text(
        json.dumps({"temperature": 2.0, "fitted_on": "val", "size": 32, "nll_before": 1.4, "nll_after": 1.3})
    )
    single = load_trained(str(FIXTURE), device=CPU)
    splits = split_samples(single, None, "test")
    alone = evaluate(single, splits, "test", batch_size=16)
    pair = evaluate(load_models(f"{FIXTURE},{FIXTURE}", device=CPU), splits, "test", batch_size=16)
    assert torch.allclose(pair.probs, alone.probs) and pair.metrics["test/acc"] == alone.metrics["test/acc"]
    assert alone.calibrated is None
    members = load_models(f"{calibrated},{calibrated}", device=CPU)
    assert members[0].calibration == Calibration(2.0, "val", 32, 1.4, 1.3)
    both = evaluate(members, splits, "test", batch_size=16)
    expected = (alone.probs.log() / 2.0).softmax(dim=1)
    assert torch.allclose(both.calibrated.probs, expected, atol=1e-6) and both.calibrated.temperatures == [2.0, 2.0]
    assert torch.equal(both.calibrated.probs.argmax(1), alone.probs.argmax(1))

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "manifest.json").write_text(
        json.dumps({"trials": [{"output_dir": str(calibrated)}, {"output_dir": str(tmp_path / "unfinished")}]})
    )
    (calibrated / "results.json").write_text("{}")
    assert run_dirs(str(sweep)) == [calibrated]
    with pytest.raises(CheckpointError, match="checkpoint= picks the weights of one run"):
        load_models(f"{FIXTURE},{FIXTURE}", checkpoint=str(FIXTURE / "best.safetensors"))
    (calibrated / "results.json").unlink()
    with pytest.raises(CheckpointError, match="has no finished trial yet"):
        run_dirs(str(sweep))


def test_the_evaluation_report_keeps_the_keys_and_order_of_eval_json():
    """eval_<split>.json is read by users' scripts: the typed result writes the same keys in the
    same order as before it was typed."""
    from brainmri.evaluation.report import CalibratedScore, Evaluation

    metrics = {"test/acc": 0.5, "test/ece": 0.2, "test/loss": 1.0}
    result = Evaluation("test", metrics, torch.ones(2, 4) / 4, torch.tensor([0, 1]), leaks={"a.jpg": "b.jpg"})
    result.calibrated = CalibratedScore([1.5], "val", {"test/ece": 0.1, "test/loss": 0.9}, torch.ones(2, 4) / 4)
    report = result.report("w.safetensors", "none", Path("/data"))
    assert list(report) == [
        "split",
        "size",
        "weights",
        "tta",
        "data_root",
        "test/acc",
        "test/ece",
        "test/loss",
        "train_test_leaks",
        "leaked_files",
        "leakage_free",
        "calibration",
    ]
    assert report["calibration"] == {"temperature": 1.5, "fitted_on": "val", "test/ece": 0.1, "test/loss": 0.9}
    assert (report["size"], report["train_test_leaks"], report["leaked_files"]) == (2, 1, ["a.jpg"])
    result.calibrated = CalibratedScore([1.5, 2.0], "val", {"test/ece": 0.1, "test/loss": 0.9}, torch.ones(2, 4) / 4)
    assert result.report(["a", "b"], ["none"], Path("/d"))["calibration"]["temperature"] == [1.5, 2.0]  # an ensemble
    from brainmri.scoring.intervals import bootstrap_intervals

    result.intervals = bootstrap_intervals([0, 1, 1, 0], [0, 1, 0, 0], 4)
    assert list(result.report("w", "none", Path("/d")))[-1] == "intervals"  # new keys after the old ones


def test_a_volume_summary_names_its_most_likely_tumour_and_the_votes():
    from brainmri.evaluation.predict import Prediction, summarize_volumes

    names = ["glioma", "meningioma", "notumor", "pituitary"]
    rows = [
        Prediction("v.nii#z000", "notumor", 0.9, [0.05, 0.03, 0.9, 0.02], "v.nii"),
        Prediction("v.nii#z001", "notumor", 0.5, [0.1, 0.35, 0.5, 0.05], "v.nii"),
        Prediction("v.nii#z002", "glioma", 0.6, [0.6, 0.1, 0.2, 0.1], "v.nii"),
        Prediction("plain.jpg", "pituitary", 0.7, [0.1, 0.1, 0.1, 0.7]),
        Prediction("w.dcm#frame0", "notumor", 0.97, [0.01, 0.01, 0.97, 0.01], "w.dcm"),
    ]
    v, w = summarize_volumes(rows, names)
    assert (v.volume, v.slices, v.tumour, v.probability, v.slice) == ("v.nii", 3, "glioma", 0.6, "v.nii#z002")
    assert v.votes == {"glioma": 1, "meningioma": 0, "notumor": 2, "pituitary": 0}
    assert (w.slices, w.votes["notumor"]) == (1, 1)  # a volume of no tumour still names its likeliest tumour
