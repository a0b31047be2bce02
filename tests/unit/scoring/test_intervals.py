import math

import numpy as np
import pytest
import torch

from brainmri.errors import BrainMRIError
from brainmri.scoring.intervals import Bootstrap, bootstrap_intervals, compare, mcnemar
from brainmri.scoring.metrics import classification_metrics


def synthetic(rng: np.random.Generator, per_class: int, accuracy: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Fixed class counts; each image is right with its class's accuracy, else a random other class."""
    k = len(accuracy)
    targets = np.repeat(np.arange(k), per_class)
    right = rng.random(len(targets)) < np.asarray(accuracy)[targets]
    wrong = (targets + rng.integers(1, k, len(targets))) % k
    return targets, np.where(right, targets, wrong)


def test_point_values_are_the_reports_metrics():
    rng = np.random.default_rng(3)
    targets, preds = synthetic(rng, 30, [0.9, 0.6, 0.7, 0.4])
    m = classification_metrics(
        torch.nn.functional.one_hot(torch.tensor(preds), 4).float(), torch.tensor(targets), list("abcd"), "test"
    )
    got = bootstrap_intervals(targets, preds, 4, Bootstrap(resamples=200))
    for name in ("acc", "balanced_acc", "macro_f1"):
        assert got[name].value == pytest.approx(m[f"test/{name}"], abs=1e-6)
        assert got[name].low <= got[name].value <= got[name].high


def test_intervals_are_reproducible_with_a_seed_and_change_with_another():
    targets, preds = synthetic(np.random.default_rng(0), 25, [0.8, 0.7, 0.9, 0.6])
    one = bootstrap_intervals(targets, preds, 4, Bootstrap(resamples=500, seed=7))
    assert one == bootstrap_intervals(targets, preds, 4, Bootstrap(resamples=500, seed=7))
    assert one != bootstrap_intervals(targets, preds, 4, Bootstrap(resamples=500, seed=8))


def test_accuracy_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    """200 synthetic test sets of 200 images (true accuracy 0.8125): the 95% interval holds it in
    roughly 95% of them (the percentile bootstrap runs a little short at this size; the bound is tolerant)."""
    rng = np.random.default_rng(2024)
    accuracy = [0.9, 0.8, 0.7, 0.85]
    truth = float(np.mean(accuracy))
    hits = 0
    for draw in range(200):
        targets, preds = synthetic(rng, 50, accuracy)
        acc = bootstrap_intervals(targets, preds, 4, Bootstrap(resamples=400, seed=draw))["acc"]
        hits += acc.low <= truth <= acc.high
    assert 0.88 <= hits / 200 <= 0.99


def test_mcnemar_exact_p_value_by_hand():
    # A right and B wrong on 7 images, the reverse on 1, both right on 10, both wrong on 2.
    targets = np.zeros(20, dtype=int)
    a = np.array([0] * 7 + [1] * 1 + [0] * 10 + [1] * 2)
    b = np.array([1] * 7 + [0] * 1 + [0] * 10 + [1] * 2)
    result = mcnemar(targets, a, b)
    assert (result.only_a, result.only_b) == (7, 1)
    # n = 8 discordant: P(X <= 1) = (C(8,0) + C(8,1)) / 2^8 = 9/256, two-sided 18/256
    assert result.p_value == pytest.approx(18 / 256)
    assert mcnemar(targets, a, a).p_value == 1.0
    tie = mcnemar(np.zeros(4, dtype=int), np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0]))
    assert (tie.only_a, tie.only_b) == (2, 2) and tie.p_value == 1.0  # 2 * P(X <= 2 | n=4) = 22/16, capped


def test_mcnemar_agrees_with_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    targets = np.zeros(60, dtype=int)
    a = np.array([0] * 15 + [1] * 4 + [0] * 41)
    b = np.array([1] * 15 + [0] * 4 + [0] * 41)
    assert mcnemar(targets, a, b).p_value == pytest.approx(stats.binomtest(4, 19, 0.5).pvalue)
    assert math.isclose(mcnemar(targets, b, a).p_value, mcnemar(targets, a, b).p_value)


def test_paired_difference_of_a_model_with_itself_is_zero_and_of_a_better_model_excludes_zero():
    rng = np.random.default_rng(1)
    targets, weak = synthetic(rng, 50, [0.6, 0.6, 0.6, 0.6])
    strong = np.where(rng.random(len(targets)) < 0.8, targets, weak)  # fixes most of weak's errors
    same = compare(targets, weak, weak, 4, Bootstrap(resamples=300))
    assert all((i.low, i.value, i.high) == (0.0, 0.0, 0.0) for i in same.difference.values())
    better = compare(targets, strong, weak, 4, Bootstrap(resamples=300))
    assert better.difference["acc"].low > 0 and better.mcnemar.p_value < 1e-6
    assert better.difference["acc"].value == pytest.approx(better.a["acc"].value - better.b["acc"].value)
    assert set(better.to_json()) == {"a", "b", "difference", "mcnemar", "bootstrap"}


def test_bad_input_is_one_line():
    with pytest.raises(BrainMRIError, match="empty"):
        bootstrap_intervals([], [], 4)
    with pytest.raises(BrainMRIError, match="differ in length"):
        mcnemar([0, 1], [0], [0, 1])
    with pytest.raises(BrainMRIError, match="at least 100"):
        Bootstrap(resamples=10)
