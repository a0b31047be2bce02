"""Classification metrics over a whole split, from torchmetrics' functional API.

One function, :func:`classification_metrics`, gives everything a clinical reader asks for:
accuracy and balanced accuracy, macro and weighted F1, per-class precision, recall
(sensitivity), specificity, F1 and one-vs-rest ROC AUC, the macro AUC, the expected
calibration error and the confusion matrix. Training (``results.json``) and
``launch/evaluate.py`` both call it, so their numbers are the same numbers.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
    multiclass_roc,
    multiclass_specificity,
)

ECE_BINS = 15


def _finite(value: float) -> Optional[float]:
    return None if math.isnan(value) else value


def per_class_auroc(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[Optional[float]]:
    """One-vs-rest ROC AUC per class; None where a class has no positives or no negatives
    (the AUC is undefined there, and torchmetrics would report 0)."""
    with warnings.catch_warnings():  # torchmetrics warns about the absent classes we drop below
        warnings.simplefilter("ignore")
        aucs = multiclass_auroc(probs, targets, num_classes=num_classes, average="none", validate_args=False)
    out: list[Optional[float]] = []
    for c in range(num_classes):
        positives = int((targets == c).sum())
        out.append(None if positives in (0, len(targets)) else float(aucs[c]))
    return out


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """ECE over ``ECE_BINS`` equal-width confidence bins (the one definition every report uses)."""
    return float(
        multiclass_calibration_error(
            probs, targets, num_classes=probs.shape[1], n_bins=ECE_BINS, norm="l1", validate_args=False
        )
    )


def classification_metrics(
    logits: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str], prefix: str
) -> dict:
    """Every headline and per-class metric of one split.

    ``logits`` is (N, C) and ``targets`` (N,), one row per sample, each exactly once.
    Probabilities are the softmax of the logits. The confusion matrix has a row per true
    class and a column per predicted class. ECE uses 15 equal-width confidence bins.
    """
    num_classes = len(class_names)
    probs = logits.float().softmax(dim=1)
    preds = probs.argmax(dim=1)
    kw = {"num_classes": num_classes, "validate_args": False}
    precision = multiclass_precision(preds, targets, average="none", **kw)
    recall = multiclass_recall(preds, targets, average="none", **kw)
    specificity = multiclass_specificity(preds, targets, average="none", **kw)
    f1 = multiclass_f1_score(preds, targets, average="none", **kw)
    cm = multiclass_confusion_matrix(preds, targets, **kw)
    support = cm.sum(dim=1)
    aucs = per_class_auroc(probs, targets, num_classes)
    defined = [a for a in aucs if a is not None]
    present = support > 0
    n = max(1, len(targets))
    return {
        f"{prefix}/acc": float(multiclass_accuracy(preds, targets, average="micro", **kw)),
        # Mean recall over the classes present: what accuracy would be on balanced classes.
        f"{prefix}/balanced_acc": float(recall[present].mean()) if bool(present.any()) else 0.0,
        f"{prefix}/macro_f1": float(multiclass_f1_score(preds, targets, average="macro", **kw)),
        f"{prefix}/weighted_f1": float((f1 * support).sum() / n),
        f"{prefix}/auroc_macro": _finite(sum(defined) / len(defined)) if defined else None,
        f"{prefix}/ece": expected_calibration_error(probs, targets),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "specificity": float(specificity[i]),
                "f1": float(f1[i]),
                "auroc": aucs[i],
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }


def roc_curves(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[tuple[list[float], list[float]]]:
    """(false positive rates, true positive rates) of each class's one-vs-rest ROC curve."""
    fpr, tpr, _ = multiclass_roc(probs.float(), targets, num_classes=num_classes, validate_args=False)
    return [(f.tolist(), t.tolist()) for f, t in zip(fpr, tpr)]


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> list[dict]:
    """Confidence bins for a reliability diagram: mean confidence, accuracy and count per bin."""
    confidence, preds = probs.float().max(dim=1)
    correct = (preds == targets).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    bins = []
    for i in range(n_bins):
        lo, hi = float(edges[i]), float(edges[i + 1])
        inside = (confidence > lo) & (confidence <= hi) if i else (confidence >= lo) & (confidence <= hi)
        count = int(inside.sum())
        bins.append(
            {
                "lo": lo,
                "hi": hi,
                "count": count,
                "confidence": float(confidence[inside].mean()) if count else None,
                "accuracy": float(correct[inside].mean()) if count else None,
            }
        )
    return bins
