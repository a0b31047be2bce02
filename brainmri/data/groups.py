"""Duplicate groups and the splits that keep them whole: validation and k-fold folds without leakage.

Kaggle's brain-MRI sets hold pixel-identical copies and near copies (re-encoded, resized,
slightly shifted slices) inside Training. A random split puts one copy in train and its twin
in validation, so validation over-states accuracy and picks the epoch that memorized best.
Here an image's group is every image linked to it by equal pixels or by a perceptual-hash
distance within ``threshold`` (the audit's rule). The validation split draws whole groups per
class; k-fold folds come from scikit-learn's ``StratifiedGroupKFold``, which keeps each group
in one fold while balancing the classes.
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from brainmri.data.samples import Sample
from brainmri.errors import DatasetError


def perceptual_hash(image: Image.Image) -> int:
    """The 64-bit DCT hash (imagehash.phash) of the grayscale image."""
    import imagehash

    return int(str(imagehash.phash(image.convert("L"))), 16)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(len(x), 8), axis=1).sum(axis=1)


def near_edges(hashes: Sequence[int], threshold: int) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of perceptual hashes at most ``threshold`` bits apart."""
    array = np.array(hashes, dtype=np.uint64)
    edges: list[tuple[int, int]] = []
    for i in range(len(array) - 1):
        close = np.nonzero(popcount(array[i] ^ array[i + 1 :]) <= threshold)[0]
        edges.extend((i, i + 1 + int(j)) for j in close)
    return edges


def components(n: int, edges: Sequence[tuple[int, int]]) -> list[int]:
    """Connected component id of each of ``n`` nodes (union-find), numbered by first member."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots: dict[int, int] = {}
    return [roots.setdefault(find(i), len(roots)) for i in range(n)]


def duplicate_groups(
    paths: Sequence[str], pixels: Mapping[str, str], phashes: Mapping[str, int], threshold: Optional[int]
) -> dict[str, int]:
    """A group id for every path: equal pixels, or (``threshold`` not None) perceptual
    hashes at most ``threshold`` bits apart, link two images; groups are the connected sets."""
    edges: list[tuple[int, int]] = []
    first: dict[str, int] = {}
    for i, p in enumerate(paths):
        if p in pixels:
            j = first.setdefault(pixels[p], i)
            if j != i:
                edges.append((j, i))
    if threshold is not None:
        known = [i for i, p in enumerate(paths) if p in phashes]
        edges += [(known[a], known[b]) for a, b in near_edges([phashes[paths[i]] for i in known], threshold)]
    return dict(zip(paths, components(len(paths), edges)))


def _folds(samples: Sequence[Sample], groups: Optional[Mapping[str, int]], n_splits: int, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.array([s.label for s in samples])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only N members"
        if groups is None:
            return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(labels, labels))
        ids = np.array([groups[s.path] for s in samples])
        return list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(labels, labels, ids))


def fold_split(
    samples: Sequence[Sample], groups: Optional[Mapping[str, int]], folds: int, fold: int, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Fold ``fold`` of ``folds`` as validation, the others as train; groups never straddle."""
    largest = max(Counter(s.label for s in samples).values())
    if folds > largest:
        raise DatasetError(f"data.folds={folds}: no class has that many training images (the largest has {largest})")
    train_idx, val_idx = _folds(samples, groups, folds, seed)[fold]
    pick = lambda idx: sorted((samples[i] for i in idx), key=lambda s: s.path)  # noqa: E731
    return pick(train_idx), pick(val_idx)


def group_split(
    samples: Sequence[Sample], groups: Mapping[str, int], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """``val_fraction`` of every class as validation, drawn as whole groups.

    A group counts for the class of its first image (by path). Per class the groups are
    shuffled and each goes to validation while it fits in what is left of the class's
    share, so with no duplicates (every group one image) this is exactly the plain
    stratified split of :func:`brainmri.data.splits.stratified_split`, image for image.
    ``val_fraction=0`` keeps everything for training (a refit).
    """
    members: dict[int, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.path):
        members.setdefault(groups[s.path], []).append(s)
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        units = [g for g, m in members.items() if m[0].label == label]
        size = sum(len(members[g]) for g in units)
        rng.shuffle(units)
        target = max(1, round(size * val_fraction)) if size > 1 and val_fraction > 0 else 0
        taken = 0
        for g in units:
            fits = taken + len(members[g]) <= target
            (val if fits else train).extend(members[g])
            taken += len(members[g]) if fits else 0
    return sorted(train, key=lambda s: s.path), sorted(val, key=lambda s: s.path)
