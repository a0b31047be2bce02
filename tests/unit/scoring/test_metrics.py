import pytest
import torch

from brainmri.scoring.metrics import classification_metrics


def test_metrics_against_hand_computed_values():
    # true:  0 0 0 1 1 2 2 3 ; pred: 0 0 1 1 1 2 3 3
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    preds = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    logits = torch.nn.functional.one_hot(preds, 4).float()
    m = classification_metrics(logits, targets, ["a", "b", "c", "d"], "test")
    assert m["test/acc"] == pytest.approx(6 / 8)
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]
    pc = m["per_class"]
    assert pc["a"]["precision"] == pytest.approx(1.0) and pc["a"]["recall"] == pytest.approx(2 / 3)
    assert pc["b"]["precision"] == pytest.approx(2 / 3) and pc["b"]["recall"] == pytest.approx(1.0)
    assert pc["d"]["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    f1s = [0.8, 0.8, 2 / 3, 2 / 3]
    assert m["test/macro_f1"] == pytest.approx(sum(f1s) / 4)
    assert [pc[c]["support"] for c in "abcd"] == [3, 2, 2, 1]
    assert sum(map(sum, m["confusion_matrix"])) == 8


def test_balanced_accuracy_specificity_and_weighted_f1_by_hand():
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    preds = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    m = classification_metrics(torch.nn.functional.one_hot(preds, 4).float(), targets, ["a", "b", "c", "d"], "test")
    recalls = [2 / 3, 1.0, 0.5, 1.0]
    assert m["test/balanced_acc"] == pytest.approx(sum(recalls) / 4)
    # specificity of a: negatives are the 5 non-a samples, none predicted a -> 5/5;
    # of b: 6 negatives, one (a true 0) predicted b -> 5/6; of d: 7 negatives, one predicted d -> 6/7.
    pc = m["per_class"]
    assert pc["a"]["specificity"] == pytest.approx(1.0)
    assert pc["b"]["specificity"] == pytest.approx(5 / 6)
    assert pc["d"]["specificity"] == pytest.approx(6 / 7)
    f1s, support = [0.8, 0.8, 2 / 3, 2 / 3], [3, 2, 2, 1]
    assert m["test/weighted_f1"] == pytest.approx(sum(f * s for f, s in zip(f1s, support)) / 8)


def test_roc_auc_known_cases():
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    perfect = torch.nn.functional.one_hot(targets, 4).float() * 5
    m = classification_metrics(perfect, targets, list("abcd"), "t")
    assert m["t/auroc_macro"] == pytest.approx(1.0)
    assert all(c["auroc"] == pytest.approx(1.0) for c in m["per_class"].values())
    # class a's score ranks every a below every other sample: AUC 0 for a
    scores = torch.zeros(8, 4)
    scores[:, 0] = torch.tensor([0.1, 0.2, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert classification_metrics(scores, targets, list("abcd"), "t")["per_class"]["a"]["auroc"] == pytest.approx(0.0)
    # one class absent: its AUC is undefined (None), the macro averages the others
    m = classification_metrics(perfect[:6], targets[:6], list("abcd"), "t")
    assert m["per_class"]["d"]["auroc"] is None and m["t/auroc_macro"] == pytest.approx(1.0)


def test_ece_known_cases():
    targets = torch.tensor([0, 1, 0, 1])
    # every prediction class 0 with confidence 0.9; half are right: |0.9 - 0.5| = 0.4
    probs = torch.tensor([[0.9, 0.1, 0.0, 0.0]] * 4)
    m = classification_metrics(probs.log(), targets, list("abcd"), "t")
    assert m["t/ece"] == pytest.approx(0.4, abs=1e-5)
    # confident and always right: perfectly calibrated
    right = torch.nn.functional.one_hot(targets, 4).float() * 50
    assert classification_metrics(right, targets, list("abcd"), "t")["t/ece"] == pytest.approx(0.0, abs=1e-6)


def test_reliability_bins_and_roc_curves_shapes():
    from brainmri.scoring.metrics import reliability_bins, roc_curves

    probs = torch.tensor([[0.95, 0.05, 0, 0], [0.55, 0.45, 0, 0], [0.2, 0.8, 0, 0]])
    targets = torch.tensor([0, 1, 1])
    bins = reliability_bins(probs, targets, n_bins=10)
    filled = [b for b in bins if b["count"]]
    assert [b["count"] for b in filled] == [1, 1, 1]
    assert [b["accuracy"] for b in filled] == [0.0, 1.0, 1.0]
    curves = roc_curves(probs, targets, 4)
    assert len(curves) == 4 and curves[0][0][0] == 0.0 and curves[0][1][-1] == 1.0
