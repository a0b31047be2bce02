"""brainmri/evaluation/labels.py: confident learning, by hand on a small case, on planted label flips,
and against cleanlab's find_label_issues (a test-only dependency: cleanlab is AGPL)."""

from __future__ import annotations

import numpy as np
import pytest

from brainmri.evaluation.labels import (
    calibrate_joint,
    confident_joint,
    find_label_issues,
    per_class_thresholds,
    rank_label_issues,
)


def noisy_problem(seed: int, n: int = 400, k: int = 4, flips: int = 40):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), true] += rng.uniform(1.0, 3.0)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = true.copy()
    flipped = rng.choice(n, flips, replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, k, flips)) % k
    return labels, probs, set(flipped.tolist())


def test_hand_computed_case():
    """Six images, two classes; image 2 is labelled 0 but the model is sure it is 1."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]])
    assert np.allclose(per_class_thresholds(labels, probs), [0.6, 0.8])  # (0.9+0.8+0.1)/3, (0.8+0.7+0.9)/3
    # image 2: above t_1 only -> counted (0, 1); image 4 (0.7 < 0.8, 0.3 < 0.6) confident of nothing
    assert confident_joint(labels, probs).tolist() == [[2, 1], [0, 2]]
    assert calibrate_joint(confident_joint(labels, probs), labels).tolist() == [[2, 1], [0, 3]]
    assert find_label_issues(labels, probs).tolist() == [False, False, True, False, False, False]
    (issue,) = rank_label_issues([f"f{i}" for i in range(6)], labels, probs)
    assert (issue.file, issue.given, issue.suggested, issue.self_confidence) == ("f2", 0, 1, pytest.approx(0.1))


def test_planted_flips_are_found_and_ranked_first():
    labels, probs, flipped = noisy_problem(0)
    issues = rank_label_issues([str(i) for i in range(len(labels))], labels, probs)
    found = {int(i.file) for i in issues}
    assert len(found & flipped) / len(flipped) >= 0.6  # recall on a noisy model
    assert len(found & flipped) / len(found) >= 0.6  # precision
    top = [int(i.file) for i in issues[:10]]
    assert sum(t in flipped for t in top) >= 8
    assert [i.self_confidence for i in issues] == sorted(i.self_confidence for i in issues)


def test_agrees_with_cleanlab():
    """Identical masks, except where a calibrated count is a rounding tie (x.5) that the last
    bits of a float sum decide: there the two may flag one image apart."""
    from cleanlab.filter import find_label_issues as cleanlab_find

    same, off_by_one = 0, 0
    for seed in range(100):
        rng = np.random.default_rng(1000 + seed)
        labels, probs, _ = noisy_problem(1000 + seed, n=int(rng.integers(40, 500)), k=int(rng.integers(2, 6)), flips=20)
        ours = find_label_issues(labels, probs)
        theirs = cleanlab_find(labels, probs, filter_by="prune_by_noise_rate")
        diff = int((ours != theirs).sum())
        same += diff == 0
        off_by_one += diff == 1
    assert same >= 97 and same + off_by_one == 100
