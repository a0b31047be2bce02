"""Figures a researcher can put on a slide: class balance, augmentations, confusion matrix, curves.

Each function returns a matplotlib Figure; :func:`save_figure` writes it as PNG atomically.
The same figures go to W&B, so a user without W&B sees exactly what the dashboard shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: compute nodes have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from brainmri.records import EpochRecord  # noqa: E402
from brainmri.rundir import atomic_replace  # noqa: E402

DISPLAY_NAMES = {"glioma": "Glioma", "meningioma": "Meningioma", "notumor": "No tumour", "pituitary": "Pituitary"}
SPLIT_COLORS = {"train": "#3b6ea8", "val": "#e0a030", "test": "#5a9e6f"}
STYLE = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 110,
}


def _names(class_names: Sequence[str]) -> list[str]:
    return [DISPLAY_NAMES.get(c, c) for c in class_names]


def _bare(ax) -> None:
    """An image cell: no ticks, no frame."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def save_figure(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, bbox_inches="tight", facecolor="white")
    atomic_replace(tmp, path)
    plt.close(fig)


def class_distribution(counts: dict[str, Optional[Sequence[int]]], class_names: Sequence[str]) -> Figure:
    """Grouped bars: images per class in each split, counts written on the bars."""
    with plt.rc_context(STYLE):
        splits = [s for s, c in counts.items() if c is not None]
        fig, ax = plt.subplots(figsize=(8, 4.2))
        x = np.arange(len(class_names))
        width = 0.8 / len(splits)
        for i, split in enumerate(splits):
            values = counts[split]
            bars = ax.bar(
                x + (i - (len(splits) - 1) / 2) * width,
                values,
                width,
                label=f"{split} ({sum(values)})",
                color=SPLIT_COLORS.get(split),
            )
            ax.bar_label(bars, fontsize=9, padding=2)
        ax.set_xticks(x, _names(class_names))
        ax.set_ylabel("images")
        ax.set_title("Class distribution per split")
        ax.legend(frameon=False)
        ax.margins(y=0.12)
        fig.tight_layout()
        return fig


def _to_display(image: torch.Tensor, mean: Sequence[float], std: Sequence[float], stretch: bool = False) -> np.ndarray:
    """A normalized CHW tensor back to an HxW(x3) array in [0, 1]; ``stretch``: the image's
    own range to [0, 1] (a per-image z-score has no fixed range to undo)."""
    m = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    x = image * s + m
    if stretch:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-6)
    x = x.clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def augmentation_grid(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    stretch: bool = False,
) -> Figure:
    """One row per class; each image appears as "original" next to "augmented".

    ``pairs`` holds (original in [0, 1], augmented and normalized, label) for the same file;
    ``stretch`` shows each augmented image over its own range (per-image normalization).
    """
    by_class: dict[int, list] = {}
    for original, augmented, label in pairs:
        by_class.setdefault(label, []).append((original, augmented))
    rows = sorted(by_class)
    cols = max(len(v) for v in by_class.values()) * 2
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(rows), cols, figsize=(1.9 * cols, 2.1 * len(rows)), squeeze=False)
        for r, label in enumerate(rows):
            for c in range(cols):
                ax = axes[r][c]
                _bare(ax)
                k, is_aug = divmod(c, 2)
                if k >= len(by_class[label]):
                    continue
                original, augmented = by_class[label][k]
                image = (
                    _to_display(augmented, mean, std, stretch)
                    if is_aug
                    else _to_display(original, [0.0] * len(mean), [1.0] * len(std))
                )
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
                if r == 0:
                    ax.set_title("augmented" if is_aug else "original", fontsize=10, fontweight="normal")
                if c == 0:
                    ax.set_ylabel(_names(class_names)[label], fontsize=11, fontweight="bold")
        fig.suptitle("Training augmentation: the same images before and after the transforms", fontweight="bold")
        fig.tight_layout()
        return fig


def confusion_matrix(
    cm: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "Confusion matrix"
) -> Figure:
    """Counts with the row share (recall per true class) in each cell; colour by row share."""
    counts = np.asarray(cm, dtype=np.int64)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    names = _names(class_names)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 5.4))
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                color = "white" if share[i, j] > 0.55 else "#222222"
                ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", color=color, fontsize=10)
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        accuracy = np.trace(counts) / max(counts.sum(), 1)
        ax.set_title(f"{title}  (accuracy {accuracy:.1%}, n={counts.sum()})")
        for spine in ax.spines.values():
            spine.set_visible(False)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
        fig.tight_layout()
        return fig


def training_curves(history: Sequence[EpochRecord], best_epoch: Optional[int] = None) -> Figure:
    """Loss, accuracy and validation macro-F1 per epoch, best epoch marked."""
    epochs = [r.epoch for r in history]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        panels = [
            ("Loss", [("train/loss", "train"), ("val/loss", "validation")]),
            ("Accuracy", [("train/acc", "train"), ("val/acc", "validation")]),
            ("Macro-F1", [("train/macro_f1", "train"), ("val/macro_f1", "validation")]),
        ]
        for ax, (title, series) in zip(axes, panels):
            for key, label in series:
                values = [r.value(key) for r in history]
                if all(v is None for v in values):  # a run without validation
                    continue
                color = SPLIT_COLORS["train" if label == "train" else "val"]
                ax.plot(epochs, values, marker="o", markersize=3, label=label, color=color)
            if best_epoch is not None:
                ax.axvline(best_epoch, color="#888888", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            if title != "Loss":
                ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.25)
        axes[0].legend(frameon=False)
        fig.tight_layout()
        return fig


def roc_curves(
    curves: Sequence[tuple[Sequence[float], Sequence[float]]],
    aucs: Sequence[Optional[float]],
    class_names: Sequence[str],
    title: str = "ROC curves (one vs rest)",
) -> Figure:
    """One ROC curve per class with its AUC in the legend; the diagonal is chance."""
    colors = ["#3b6ea8", "#d0613a", "#5a9e6f", "#8e5fa8"]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.6, 5.2))
        for i, ((fpr, tpr), auc, name) in enumerate(zip(curves, aucs, _names(class_names))):
            label = f"{name} (AUC {auc:.3f})" if auc is not None else f"{name} (AUC undefined)"
            ax.plot(fpr, tpr, color=colors[i % len(colors)], linewidth=2, label=label)
        ax.plot([0, 1], [0, 1], color="#aaaaaa", linestyle="--", linewidth=1)
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_title(title)
        ax.legend(frameon=False, loc="lower right")
        ax.grid(alpha=0.25)
        fig.tight_layout()
        return fig


def reliability_diagram(bins: Sequence[dict], ece: float, title: str = "Reliability diagram") -> Figure:
    """Accuracy against confidence per bin, bar width the bin, with the bin's image count;
    bars under the diagonal mean over-confidence."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.6, 5.2))
        for b in bins:
            if not b["count"]:
                continue
            width = b["hi"] - b["lo"]
            ax.bar(b["lo"], b["accuracy"], width=width, align="edge", color="#3b6ea8", edgecolor="white", alpha=0.85)
            gap = b["confidence"] - b["accuracy"]
            if gap > 0:
                ax.bar(
                    b["lo"],
                    gap,
                    bottom=b["accuracy"],
                    width=width,
                    align="edge",
                    color="#d0613a",
                    alpha=0.35,
                    edgecolor="white",
                )
            ax.text(b["lo"] + width / 2, min(b["accuracy"], 0.95) + 0.02, str(b["count"]), ha="center", fontsize=7)
        ax.plot([0, 1], [0, 1], color="#444444", linestyle="--", linewidth=1)
        ax.set_xlabel("confidence (max probability)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{title}  (ECE {ece:.3f})")
        ax.grid(alpha=0.25)
        fig.tight_layout()
        return fig


def cam_grid(tiles: Sequence, class_names: Sequence[str], title: str = "Grad-CAM: where the model looked") -> Figure:
    """Rows of Grad-CAM overlays grouped by true class; each titled true -> predicted (p).

    ``tiles`` are :class:`brainmri.reporting.cam.CamTile`; a wrong prediction is titled in red.
    """
    from brainmri.reporting.cam import overlay

    names = _names(class_names)
    by_class: dict[int, list] = {}
    for t in tiles:
        by_class.setdefault(t.label if t.label is not None else -1, []).append(t)
    rows = sorted(by_class)
    cols = max(len(v) for v in by_class.values())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(rows), cols * 2, figsize=(2.0 * cols * 2, 2.3 * len(rows)), squeeze=False)
        for r, label in enumerate(rows):
            for c in range(cols * 2):
                ax = axes[r][c]
                _bare(ax)
                k, is_cam = divmod(c, 2)
                if k >= len(by_class[label]):
                    continue
                t = by_class[label][k]
                ax.imshow(overlay(t.image, t.heat) if is_cam else t.image)
                if is_cam:
                    wrong = t.label is not None and t.pred != t.label
                    ax.set_title(
                        f"→ {names[t.pred]} ({t.prob:.0%})",
                        fontsize=9,
                        color="#c0392b" if wrong else "#222222",
                        fontweight="normal",
                    )
                if c == 0:
                    ax.set_ylabel(names[label] if label >= 0 else "?", fontsize=11, fontweight="bold")
        fig.suptitle(title, fontweight="bold")
        fig.tight_layout()
        return fig


def cv_errorbars(axes: dict[str, list[tuple[object, float, float, int]]], metric: str, title: str) -> Figure:
    """One panel per swept parameter: the mean of ``metric`` over cross-validation folds
    against the parameter's value, with ± one standard deviation.

    ``axes``: parameter -> [(value, mean, std, folds done)], averaged over the other parameters' settings.
    """
    fig, panels = plt.subplots(1, max(1, len(axes)), figsize=(4.2 * max(1, len(axes)), 3.6), squeeze=False)
    for ax, (name, points) in zip(panels[0], axes.items()):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, *_ in points)
        xs = [float(v) for v, *_ in points] if numeric else list(range(len(points)))
        ax.errorbar(
            xs, [m for _, m, _, _ in points], yerr=[s for _, _, s, _ in points], fmt="o-", capsize=4, color="#1f77b4"
        )
        if numeric and len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(xs, [str(v) for v, *_ in points])
        ax.set_xlabel(name)
        ax.set_ylabel(f"{metric} (mean ± std over folds)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def robustness_curves(
    accuracy: dict[str, Sequence[float]], clean: float, worst: tuple[str, int, float], title: str
) -> Figure:
    """Accuracy against severity (0 = clean, then 1..5), one line per corruption; the worst
    condition marked. ``accuracy``: corruption -> accuracy at each severity."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 4.8))
        colors = plt.get_cmap("tab10")
        for i, (name, values) in enumerate(accuracy.items()):
            ax.plot(range(len(values) + 1), [clean, *values], marker="o", ms=4, label=name, color=colors(i % 10))
        name, severity, acc = worst
        ax.annotate(
            f"worst: {name} {severity}\n{acc:.1%} ({100 * (acc - clean):+.1f} pt)",
            (severity, acc),
            xytext=(10, -4),
            textcoords="offset points",
            fontsize=9,
        )
        ax.axhline(clean, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"])
        ax.set_xlabel("severity")
        ax.set_ylabel("accuracy")
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_title(title)
        ax.legend(frameon=False, fontsize=9, ncol=2)
        fig.tight_layout()
        return fig


def label_issue_grid(images: Sequence[np.ndarray], captions: Sequence[str], title: str, cols: int = 6) -> Figure:
    """The top label suspects, each captioned "given → suggested (p)", for a radiologist to look at."""
    rows = max(1, -(-len(images) // cols))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False)
        for k, ax in enumerate(axes.flat):
            _bare(ax)
            if k < len(images):
                ax.imshow(images[k], cmap="gray" if images[k].ndim == 2 else None)
                ax.set_title(captions[k], fontsize=8, fontweight="normal")
        fig.suptitle(title, fontweight="bold")
        fig.tight_layout()
    return fig


def dropout_unit_outputs(
    ps: Sequence[float],
    features: int = 256,
    draws: int = 4000,
    seed: int = 0,
) -> tuple[float, list[np.ndarray]]:
    """One fixed random linear unit on one fixed input: its output without dropout, and its
    outputs over ``draws`` inverted-dropout masks (scale 1/(1-p)) for each p."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(features, generator=gen)
    w = torch.randn(features, generator=gen) / features**0.5
    outputs = []
    for p in ps:
        keep = (
            (torch.rand(draws, features, generator=gen) >= p).float() / (1.0 - p)
            if p < 1
            else torch.zeros(draws, features)
        )
        outputs.append(((keep * x) @ w).numpy())
    return float(w @ x), outputs


def dropout_linear_spread(ps: Sequence[float], features: int = 256, draws: int = 4000, seed: int = 0) -> Figure:
    """What dropout does to a linear layer (:func:`dropout_unit_outputs`): inverted dropout
    keeps the output's mean where it was, and its spread grows with p; that spread is the
    noise the network learns to tolerate."""
    clean, outputs = dropout_unit_outputs(ps, features, draws, seed)
    labels = [f"p={p:g}\nstd {y.std():.3f}" for p, y in zip(ps, outputs)]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(1.3 * len(ps) + 2.5, 3.8))
        ax.violinplot(outputs, showmeans=True, showextrema=False)
        ax.axhline(clean, color="#999999", lw=1, ls="--", label="no dropout")
        ax.set_xticks(range(1, len(ps) + 1), labels)
        ax.set_ylabel("output of one linear unit")
        ax.set_title(f"A linear layer's output under dropout ({draws} masks, {features} inputs)")
        ax.legend(loc="upper left", frameon=False)
        fig.tight_layout()
    return fig


def dropout_images(image: np.ndarray, ps: Sequence[float], seed: int = 0) -> Figure:
    """One MRI slice with each pixel dropped with probability p (and the rest scaled by
    1/(1-p), as ``nn.Dropout`` does), for each swept p: how much of the picture survives."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.as_tensor(image, dtype=torch.float32) / 255.0
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(ps), figsize=(2.4 * len(ps), 2.8), squeeze=False)
        for ax, p in zip(axes[0], ps):
            keep = (torch.rand(pixels.shape, generator=gen) >= p).float()
            shown = (pixels * keep / (1.0 - p)).clamp(0, 1) if p < 1 else torch.zeros_like(pixels)
            _bare(ax)
            ax.imshow(shown.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"p = {p:g}", fontweight="normal")
        fig.suptitle("An image under dropout", fontweight="bold")
        fig.tight_layout()
    return fig
