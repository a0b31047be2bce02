"""Classification metrics over a whole split, from torchmetrics' functional API."""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str], prefix: str) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix.

    ``logits`` is (N, C) and ``targets`` (N,), one row per sample of the split, each
    exactly once. The confusion matrix has a row per true class and a column per
    predicted class.
    """
    num_classes = len(class_names)
    preds = logits.argmax(dim=1)
    kw = {"num_classes": num_classes, "validate_args": False}
    precision = multiclass_precision(preds, targets, average="none", **kw)
    recall = multiclass_recall(preds, targets, average="none", **kw)
    f1 = multiclass_f1_score(preds, targets, average="none", **kw)
    cm = multiclass_confusion_matrix(preds, targets, **kw)
    support = cm.sum(dim=1)
    return {
        f"{prefix}/acc": float(multiclass_accuracy(preds, targets, average="micro", **kw)),
        f"{prefix}/macro_f1": float(multiclass_f1_score(preds, targets, average="macro", **kw)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }
