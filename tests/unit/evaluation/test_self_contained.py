"""Self-contained weights (issue 24, item 1): best.safetensors carries the InferenceSpec and the
temperature; a bare file loads with the run's calibration; files written before still load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brainmri.config import load_config
from brainmri.evaluation.trained import load_trained
from brainmri.records import DatasetInfo
from brainmri.scoring.calibration import Calibration, stamp_weights, write_calibration
from brainmri.weights import inference_spec, load_state_dict_file, read_metadata, read_spec

REPO = Path(__file__).resolve().parents[3]
RUN_V1 = REPO / "tests" / "fixtures" / "run_v1"


def test_the_spec_is_what_predicting_needs_and_stamping_adds_the_temperature(tmp_path):
    from brainmri.training.checkpoint import TrainState, WeightsLabel
    from tests.unit.training.test_checkpoint import make_checkpointer, record

    checkpointer, model, _ = make_checkpointer(tmp_path)
    cfg = load_config(["recipe=demo", "train.tta=hflip", "model.name=cnn0"], REPO / "recipes")
    info = DatasetInfo(["a", "b", "c", "d"], {}, 8, 3, [0.4, 0.5, 0.6], [0.2] * 3)
    spec = inference_spec(cfg, info)
    old = checkpointer.label
    checkpointer.label = WeightsLabel(old.metric, old.model, old.config_yaml, old.info, spec)
    state = TrainState()
    state.finish_epoch(record(1, 0.9), "val/acc")
    checkpointer.write_best(model, state)
    weights = checkpointer.run.best_weights
    written = read_spec(read_metadata(weights))
    assert written == spec and written.temperature is None
    assert (written.class_names, written.mean, written.tta, written.model) == (
        ["a", "b", "c", "d"],
        [0.4, 0.5, 0.6],
        "hflip",
        "cnn0",
    )
    assert written.model_args["in_chans"] == cfg.in_chans and "pretrained" not in written.model_args
    tensors = load_state_dict_file(weights)
    cal = Calibration(1.7, "val", 8, 1.2, 0.9)
    stamp_weights(weights, cal)
    meta = read_metadata(weights)
    stamped = read_spec(meta)
    assert (stamped.temperature, stamped.temperature_fitted_on) == (1.7, "val") and meta["epoch"] == "1"
    assert all(torch.equal(tensors[k], v) for k, v in load_state_dict_file(weights).items())  # tensors untouched


def test_a_bare_weights_file_applies_the_temperature_it_carries(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(RUN_V1, run)
    cal = Calibration(2.5, "val", 32, 1.1, 0.8)
    write_calibration(run / "calibration.json", cal)
    stamp_weights(run / "best.safetensors", cal)
    bare = tmp_path / "elsewhere" / "model.safetensors"
    bare.parent.mkdir()
    shutil.copy(run / "best.safetensors", bare)
    from_run = load_trained(str(run), None, torch.device("cpu"))
    alone = load_trained(None, str(bare), torch.device("cpu"))
    assert alone.run_dir is None and alone.calibration == from_run.calibration == cal
    assert "calibration.json" in from_run.temperature_note()
    assert (
        "temperature 2.500" in alone.temperature_note() and "model.safetensors's metadata" in alone.temperature_note()
    )
    assert (alone.mean, alone.class_names, alone.image_size) == (from_run.mean, from_run.class_names, 64)
    x = torch.randn(3, 3, 64, 64)
    from brainmri.evaluation.trained import predict_probs

    assert torch.equal(predict_probs(alone, x), predict_probs(from_run, x))
    assert not torch.allclose(predict_probs(alone, x), predict_probs(alone, x, calibrated=False))


def test_an_old_weights_file_still_loads_and_says_it_is_uncalibrated(tmp_path):
    bare = tmp_path / "best.safetensors"
    shutil.copy(RUN_V1 / "best.safetensors", bare)  # brainmri 0.1: config and dataset, no spec, no temperature
    assert read_spec(read_metadata(bare)) is None
    trained = load_trained(None, str(bare), torch.device("cpu"))
    assert trained.calibration is None and trained.temperature_note().startswith("uncalibrated")
    assert trained.class_names == ["glioma", "meningioma", "notumor", "pituitary"]


def test_the_run_directory_calibration_wins_over_the_one_carried(tmp_path):
    """calibrate.py rewrites calibration.json (and stamps the weights); a run folder whose json
    is newer than its weights still applies the json."""
    run = tmp_path / "run"
    shutil.copytree(RUN_V1, run)
    stamp_weights(run / "best.safetensors", Calibration(1.5, "val", 32, 1.0, 0.9))
    write_calibration(run / "calibration.json", Calibration(3.0, "cv", 100, 1.0, 0.7, "sweep"))
    assert load_trained(str(run), None, torch.device("cpu")).calibration.temperature == pytest.approx(3.0)


def test_the_onnx_metadata_and_preprocessing_follow_a_per_image_normalization():
    from PIL import Image

    from brainmri.data.transforms import build_eval_transform
    from brainmri.evaluation.export import OnnxModel, metadata_props
    from brainmri.records import InferenceSpec

    spec = InferenceSpec(["a", "b"], 32, 1, [0.1], [0.3], "cnn0", {}, "none", 1.5, "val", normalize="zscore")
    props = metadata_props(spec)
    assert props["normalize"] == "zscore" and "z-score each image over its foreground" in props["preprocessing"]
    assert props["temperature"] == "1.5" and props["class_names"] == "a,b"
    image = Image.fromarray((np.arange(48 * 48).reshape(48, 48) % 251).astype(np.uint8))
    exported = OnnxModel(None, spec, Path("m.onnx"))
    assert torch.equal(exported.transform()(image), build_eval_transform(32, [0.1], [0.3], "zscore")(image))
    ranked = InferenceSpec(["a", "b"], 32, 1, [0.5], [0.5], "cnn0", {}, "none", normalize="rank")
    assert "mid-rank" in metadata_props(ranked)["preprocessing"]
    exported = OnnxModel(None, ranked, Path("m.onnx"))
    assert torch.equal(exported.transform()(image), build_eval_transform(32, [0.5], [0.5], "rank")(image))
    plain = metadata_props(InferenceSpec(["a", "b"], 32, 1, [0.1], [0.3], "cnn0", {}, "none"))
    assert plain["normalize"] == "fixed" and "z-score" not in plain["preprocessing"] and plain["temperature"] == "none"
