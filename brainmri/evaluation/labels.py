"""Label issues by confident learning (Northcutt, Jiang & Chuang, JAIR 2021), from out-of-fold probabilities.

Every Training image gets a probability vector from the fold that did not train on it. An
image is a suspect when the model, never having seen it, is confident it belongs to another
class. The algorithm, in the paper's terms (and as cleanlab's ``find_label_issues`` with
``filter_by="prune_by_noise_rate"`` does it; cleanlab itself is AGPL, so it is written here):

1. per-class thresholds ``t_j``: the mean probability of class j over images labelled j;
2. the confident joint ``C[i][j]``: images labelled i that are above the threshold of class j
   only, or above several thresholds and most probable as j;
3. calibrated so each row sums to the number of images labelled i;
4. prune by noise rate: for each off-diagonal cell (i, j), the ``C[i][j]`` images labelled i
   with the largest margin ``p_j - p_i`` are label issues (at least one image per class is
   kept, and an image predicted as its given label is never an issue).

Issues are ranked by self-confidence (the probability of the given label; lowest first).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from brainmri.config import Config, config_from_yaml
from brainmri.errors import BrainMRIError
from brainmri.records import lower_is_better
from brainmri.rundir import atomic_write_text


def per_class_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Mean predicted probability of class j over the images labelled j."""
    k = probs.shape[1]
    return np.array([probs[labels == j, j].mean() if np.any(labels == j) else 1.0 for j in range(k)])


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """C[i][j]: images labelled i that are confidently j (uncalibrated counts)."""
    k = probs.shape[1]
    above = probs >= per_class_thresholds(labels, probs) - 1e-6
    n_above = above.sum(axis=1)
    counted = n_above > 0  # images confident of no class are left out (often outliers)
    # One class above its threshold: that class; several: the most probable class overall.
    guess = np.where(n_above > 1, probs.argmax(axis=1), above.argmax(axis=1))
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (labels[counted], guess[counted]), 1)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))  # every class keeps one image believed right
    return joint


def round_keeping_sum(values: np.ndarray) -> np.ndarray:
    """Integers that sum to round(sum(values)): round each, then move the difference onto
    the entries that rounding moved furthest."""
    ints = values.round()
    diff = int(round(values.sum()) - ints.sum())
    while diff:
        step = 1 if diff > 0 else -1
        order = np.argsort(values - ints)[::-step][: min(abs(diff), len(values))]
        ints[order] += step
        diff = int(round(values.sum()) - ints.sum())
    return ints.astype(np.int64)


def calibrate_joint(joint: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rows rescaled to the number of images with that label (then the whole to the number
    of images), rounded keeping each row's total."""
    k = joint.shape[0]
    counts = np.bincount(labels, minlength=k).astype(float)
    # The operations in cleanlab's order: where rounding meets a tie (x.5), the last bits decide.
    scaled = (joint.T / np.clip(joint.sum(axis=1), 1e-6, None) * counts).T
    scaled = scaled / np.clip(np.sum(scaled), 1e-6, None) * counts.sum()
    return np.stack([round_keeping_sum(row) for row in scaled])


def keep_one_per_class(joint: np.ndarray) -> np.ndarray:
    """Prune counts that leave at least one image believed correct in each given class: a
    diagonal under one is raised to one, taken evenly from that class's non-zero noise counts.
    Returned as ``[true j][given i]`` (the transpose of the joint), as cleanlab keeps it."""
    prune = joint.T.astype(float)
    diagonal = np.diagonal(prune).copy()
    raised = np.maximum(diagonal, 1.0)
    per_noise = (raised - diagonal) / np.maximum(np.count_nonzero(prune, axis=0) - 1.0, 1.0)
    prune = np.clip(prune - per_noise, 0.0, None)
    np.fill_diagonal(prune, raised)
    return np.stack([round_keeping_sum(row) for row in prune])


def find_label_issues(labels: Sequence[int], probs: np.ndarray) -> np.ndarray:
    """Boolean mask of the images whose label is likely wrong (prune by noise rate)."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    prune = keep_one_per_class(calibrate_joint(confident_joint(labels, probs), labels))
    issues = np.zeros(len(labels), dtype=bool)
    for i in range(probs.shape[1]):
        members = np.flatnonzero(labels == i)
        if len(members) <= 1:
            continue
        for j in range(probs.shape[1]):
            n = int(prune[j, i]) if i != j else 0
            if n > 0:  # the n images labelled i that look most like j
                margin = probs[members, j] - probs[members, i]
                issues[members[np.argsort(-margin)[:n]]] = True
    # An image the models predict as its given label is not an issue, whatever the counts said.
    boosted = probs.copy()
    boosted[np.arange(len(labels)), labels] += 1e-6
    issues[boosted.argmax(axis=1) == labels] = False
    return issues


@dataclass(frozen=True)
class LabelIssue:
    """One suspect: its file, the label it has, the label the models suggest, and how sure."""

    file: str
    given: int
    suggested: int
    self_confidence: float  # the out-of-fold probability of the given label (low: suspect)
    suggested_prob: float


def rank_label_issues(files: Sequence[str], labels: Sequence[int], probs: np.ndarray) -> list[LabelIssue]:
    """The label issues, most suspect (lowest self-confidence) first."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    mask = find_label_issues(labels, probs)
    idx = np.flatnonzero(mask)
    self_conf = probs[idx, labels[idx]]
    order = idx[np.argsort(self_conf, kind="stable")]
    out = []
    for i in order:
        others = probs[i].copy()
        others[labels[i]] = -1.0
        j = int(others.argmax())
        out.append(LabelIssue(files[i], int(labels[i]), j, float(probs[i, labels[i]]), float(probs[i, j])))
    return out


@dataclass(frozen=True)
class OutOfFold:
    """Every Training image of a cross-validation setting once, with the probabilities of the
    fold that did not train on it (the folds' ``val_predictions.csv``)."""

    setting: str
    files: list[str]
    labels: np.ndarray
    probs: np.ndarray
    class_names: list[str]
    runs: list[str]  # the folds' run directories, fold 0 first
    config: Config  # fold 0's config; the folds differ only in their fold index

    @property
    def data_root(self) -> str:
        return self.config.data.root or ""


def read_out_of_fold(sweep_dir: Path, setting: Optional[str] = None) -> OutOfFold:
    """The out-of-fold predictions of one setting of a CV sweep (the best by the sweep's
    metric when ``setting`` is None); every fold must have finished."""
    from brainmri.cluster.sweep import TrialRecord, cv_settings, read_manifest

    manifest = read_manifest(sweep_dir / "manifest.json")
    if not manifest:
        raise BrainMRIError(f"no sweep manifest in {sweep_dir} (expected manifest.json written by launch/sweep.py)")
    folds = int(manifest.get("cv") or 0)
    if folds < 2:
        raise BrainMRIError(
            f"sweep {sweep_dir} is not cross-validated: run it with cv=K to get out-of-fold predictions"
        )
    records = [TrialRecord(**t) for t in manifest["trials"]]
    settings = cv_settings(records, manifest.get("metric", "val/macro_f1"), folds)
    names = [c.base for c in settings]
    if setting is not None and setting not in names:
        raise BrainMRIError(f"no setting {setting!r} in {sweep_dir} (settings: {', '.join(names)})")
    if setting is None:
        done = [c for c in settings if len(c.values) == folds]
        if not done:
            raise BrainMRIError(f"no setting of {sweep_dir} has all {folds} folds finished yet")
        sign = 1.0 if lower_is_better(manifest.get("metric", "val/macro_f1")) else -1.0
        setting = min(done, key=lambda c: sign * c.mean).base
    mine = sorted((r for r in records if (r.base or r.name) == setting), key=lambda r: r.fold or 0)
    missing = [r.name for r in mine if not (Path(r.output_dir) / "val_predictions.csv").is_file()]
    if missing:
        raise BrainMRIError(
            f"setting {setting}: fold(s) without out-of-fold predictions (unfinished?): {', '.join(missing)}"
        )
    rows: list[dict[str, str]] = []
    for r in mine:
        with open(Path(r.output_dir) / "val_predictions.csv", newline="") as f:
            rows += list(csv.DictReader(f))
    files = [row["file"] for row in rows]
    if len(set(files)) != len(files):
        raise BrainMRIError(
            f"setting {setting}: an image is in two folds' validation splits; were the folds made with different seeds?"
        )
    class_names = [c[2:] for c in rows[0] if c.startswith("p_")]
    labels = np.array([class_names.index(row["label"]) for row in rows])
    probs = np.array([[float(row[f"p_{c}"]) for c in class_names] for row in rows])
    config = config_from_yaml(Path(mine[0].output_dir) / "config.yaml")
    return OutOfFold(setting, files, labels, probs, class_names, [r.output_dir for r in mine], config)


def write_label_issues(path: Path, issues: Sequence[LabelIssue], class_names: Sequence[str]) -> None:
    """``label_issues.csv``: file, given label, suggested label, score (self-confidence;
    low = suspect), the suggested label's probability. ``data.exclude=`` reads it."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["file", "given", "suggested", "score", "p_suggested"])
    for issue in issues:
        writer.writerow(
            [
                issue.file,
                class_names[issue.given],
                class_names[issue.suggested],
                f"{issue.self_confidence:.4f}",
                f"{issue.suggested_prob:.4f}",
            ]
        )
    atomic_write_text(path, text.getvalue())
