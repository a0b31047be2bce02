"""brainmri/evaluation/cv_report.py (and the dropout figures it draws): a cross-validated sweep's report."""

from __future__ import annotations

import numpy as np
import pytest

from brainmri.cluster.sweep import CvSetting
from brainmri.evaluation import cv_report
from brainmri.reporting.figures import dropout_unit_outputs


def setting(base: str, p: float, values: dict[int, float]) -> CvSetting:
    return CvSetting(base, {"model.dropout": p}, 3, values, {f: 0.5 for f in values})


def test_inverted_dropout_keeps_the_mean_and_spreads_more_with_p():
    clean, outputs = dropout_unit_outputs([0.0, 0.2, 0.5, 0.8], draws=20000)
    assert outputs[0].std() < 1e-6 and outputs[0][0] == pytest.approx(clean, abs=1e-5)
    for y in outputs[1:]:
        assert y.mean() == pytest.approx(clean, abs=0.05 + 0.02 * abs(clean))
    stds = [y.std() for y in outputs]
    assert stds == sorted(stds) and stds[-1] > 3 * stds[1]


def test_rows_axes_and_completion():
    settings = [setting("t00", 0.0, {0: 0.8, 1: 0.9, 2: 0.85}), setting("t01", 0.5, {0: 0.7, 1: 0.75})]
    rows = cv_report.table_rows(settings, ["model.dropout"], 3)
    assert rows[0][:4] == ["t00", "dropout=0.0", "3/3", "0.8500 ± 0.0500"] and rows[1][5] == "0.700 0.750 -"
    axes = cv_report.parameter_axes(settings, ["model.dropout"])
    (low, high) = axes["model.dropout"]
    assert low[0] == 0.0 and low[1] == pytest.approx(0.85) and low[3] == 3 and high[3] == 2
    assert not cv_report.complete(settings, 3)
    settings[1].values[2] = 0.8
    assert cv_report.complete(settings, 3) and cv_report.summary(settings, "val/acc")[
        "cv/val/acc/mean"
    ] == pytest.approx(0.85)


def test_a_dropout_sweep_gets_both_illustrations(tmp_path):
    settings = [setting("t00", 0.0, {0: 0.8}), setting("t01", 0.3, {0: 0.7}), setting("t02", 0.6, {})]
    example = (np.arange(64 * 64) % 256).reshape(64, 64).astype(np.uint8)
    images = cv_report.write_figures(tmp_path, "cnn_dropout", "val/acc", 3, settings, ["model.dropout"], example)
    assert set(images) == {"cv/val/acc", "dropout/linear_outputs", "dropout/images"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in images.values())
    other = cv_report.write_figures(
        tmp_path / "lr",
        "cnn_lr",
        "val/acc",
        3,
        [CvSetting("t00", {"optim.lr": 0.1}, 3, {0: 0.8}, {})],
        ["optim.lr"],
        example,
    )
    assert set(other) == {"cv/val/acc"}  # no dropout figures for a sweep of something else


def test_example_image_is_none_when_the_data_is_not_here(tmp_path):
    split = tmp_path / "split.csv"
    split.write_text("file,class,split,group\nTraining/glioma/a.jpg,glioma,train,0\n")
    assert cv_report.example_image(str(tmp_path / "gone"), split) is None
    from PIL import Image

    (tmp_path / "Training" / "glioma").mkdir(parents=True)
    Image.new("RGB", (50, 40), (10, 20, 30)).save(tmp_path / "Training" / "glioma" / "a.jpg")
    assert cv_report.example_image(str(tmp_path), split, size=32).shape == (32, 32)


def test_out_of_fold_intervals_pool_the_folds_and_fill_the_table(tmp_path):
    from tests.unit.scoring.test_calibration import overconfident, write_cv_sweep

    logits, targets = overconfident(300, 1)
    sweep = write_cv_sweep(tmp_path / "cv", logits, targets)
    done, partial = CvSetting("t00", {}, 3, {0: 0.8, 1: 0.8, 2: 0.8}, {}), CvSetting("t01", {}, 3, {0: 0.8}, {})
    oof = cv_report.out_of_fold_intervals(sweep, [done, partial], 3)
    assert set(oof) == {"t00"}  # an unfinished setting has no pooled score
    acc = oof["t00"]["acc"]
    assert acc.value == pytest.approx(float((logits.argmax(1) == targets).float().mean()))
    assert acc.low < acc.value < acc.high and acc.high - acc.low < 0.15  # 300 images: about +-5 points
    rows = cv_report.table_rows([done, partial], [], 3, oof)
    assert rows[0][-2:] == [str(acc), str(oof["t00"]["macro_f1"])] and rows[1][-2:] == ["-", "-"]
    assert cv_report.summary([done], "val/acc", oof)["cv/oof/acc/low"] == acc.low
