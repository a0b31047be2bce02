"""brainmri/evaluation/label_audit.py: the label audit refuses folds that never learned, warns on
folds that barely did, and ranks the issues of folds that did."""

from __future__ import annotations

import logging

import pytest
import torch

from brainmri.errors import BrainMRIError
from brainmri.evaluation.label_audit import check_fold_skill, fold_skill, show_label_issues
from brainmri.evaluation.labels import read_out_of_fold
from tests.unit.scoring.test_calibration import overconfident, write_cv_sweep


def test_folds_at_chance_are_refused_in_one_line_and_nothing_is_written(tmp_path):
    """Every image predicted glioma (the 3-fold CV of the issue): accuracy = the glioma share."""
    targets = torch.tensor([0] * 30 + [1] * 25 + [2] * 20 + [3] * 15)
    logits = torch.zeros(len(targets), 4)
    logits[:, 0] = 3.0
    oof = read_out_of_fold(write_cv_sweep(tmp_path / "cv", logits, targets), None)
    skill = fold_skill(oof)
    assert skill.majority_rate == pytest.approx(30 / 90) and skill.majority_class == "glioma"
    assert skill.accuracy.value == pytest.approx(30 / 90) and not skill.learned
    with pytest.raises(BrainMRIError, match="the folds have not learned: out-of-fold accuracy 0.333") as caught:
        show_label_issues(oof, 10, tmp_path / "out")
    assert "\n" not in str(caught.value) and "majority-class rate 0.333 (always glioma)" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_random_probabilities_are_refused_too(tmp_path):
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (120,), generator=g)
    oof = read_out_of_fold(write_cv_sweep(tmp_path / "cv", torch.randn(120, 4, generator=g), targets), None)
    with pytest.raises(BrainMRIError, match="have not learned"):
        check_fold_skill(fold_skill(oof), oof.setting)


def test_folds_that_learned_pass_and_narrow_ones_warn(tmp_path, caplog):
    logits, targets = overconfident(300, 2)  # about 70% right on 4 balanced classes
    oof = read_out_of_fold(write_cv_sweep(tmp_path / "good", logits, targets), None)
    skill = fold_skill(oof)
    assert skill.learned and not skill.narrow and skill.accuracy.low > 0.5
    with caplog.at_level(logging.WARNING):
        assert check_fold_skill(skill, oof.setting) is None
    assert not caplog.records
    weak = logits.clone()
    g = torch.Generator().manual_seed(3)
    noise = torch.rand(300, generator=g) < 0.72  # most rows become guesses: accuracy just above 25%
    weak[noise] = torch.randn(int(noise.sum()), 4, generator=g)
    oof = read_out_of_fold(write_cv_sweep(tmp_path / "weak", weak, targets), None)
    skill = fold_skill(oof)
    assert skill.learned and skill.narrow, skill.line()
    with caplog.at_level(logging.WARNING):
        warning = check_fold_skill(skill, oof.setting)
    assert "only narrowly" in warning and "only narrowly" in caplog.text
