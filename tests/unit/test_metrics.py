import pytest
import torch

from brainmri.metrics import classification_metrics


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
