"""How Training becomes train and validation (the split rule, splits that keep duplicate groups
whole, exclusion lists), and the exact split on disk (``split.csv``)."""

from __future__ import annotations

import csv
import io
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from brainmri.config import has_validation
from brainmri.data.groups import duplicate_groups, fold_split, group_split
from brainmri.data.samples import CLASS_NAMES, DatasetSplits, Sample
from brainmri.errors import DatasetError
from brainmri.rundir import atomic_write_text

log = logging.getLogger(__name__)


def stratified_split(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``val_fraction`` of every class (at least one image unless it is 0), reproducibly."""
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in range(len(CLASS_NAMES)):
        members = [s for s in samples if s.label == label]
        if not members:
            continue
        rng.shuffle(members)
        n_val = max(1, round(len(members) * val_fraction)) if len(members) > 1 and val_fraction > 0 else 0
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return sorted(train, key=lambda s: s.path), sorted(val, key=lambda s: s.path)


@dataclass(frozen=True)
class SplitRule:
    """How Training becomes train and validation (the ``data.*`` split keys)."""

    val_fraction: float = 0.1
    seed: int = 0
    groups: str = "near"  # near: pixel copies and perceptual near copies stay together; exact: pixel copies; none
    near_threshold: int = 4  # perceptual-hash bits (the audit's rule)
    folds: int = 0  # > 1: k-fold cross-validation, fold ``fold`` validates
    fold: int = 0

    @property
    def has_validation(self) -> bool:
        """False for a refit on all of Training (``val_fraction`` 0 and no folds): the one rule
        the config's check and the split both follow (:func:`brainmri.config.has_validation`)."""
        return has_validation(self.val_fraction, self.folds)


def split_rule(data, seed: int) -> SplitRule:
    """The split keys of a ``DataConfig``."""
    return SplitRule(data.val_fraction, seed, data.split_groups, data.near_threshold, data.folds, data.fold)


def split_training(
    samples: Sequence[Sample], rule: SplitRule, pixels: dict[str, str], phashes: dict[str, int]
) -> tuple[list[Sample], list[Sample], dict[str, int]]:
    """train, validation and every Training image's duplicate group under ``rule``."""
    paths = [s.path for s in samples]
    if rule.groups == "none":
        groups = {p: i for i, p in enumerate(paths)}
        if rule.folds > 1:
            train, val = fold_split(samples, None, rule.folds, rule.fold, rule.seed)
        else:
            train, val = stratified_split(samples, rule.val_fraction, rule.seed)
        return train, val, groups
    groups = duplicate_groups(paths, pixels, phashes, rule.near_threshold if rule.groups == "near" else None)
    if rule.folds > 1:
        train, val = fold_split(samples, groups, rule.folds, rule.fold, rule.seed)
    else:
        train, val = group_split(samples, groups, rule.val_fraction, rule.seed)
    sizes = Counter(groups.values())
    if val:
        log.info(
            "validation keeps %d duplicate group(s) of %d images whole (data.split_groups=%s)",
            sum(n > 1 for n in sizes.values()),
            sum(n for n in sizes.values() if n > 1),
            rule.groups,
        )
    return train, val, groups


def read_exclude_list(path: Path) -> list[str]:
    """The files of an exclusion list: a CSV with a ``file`` column (``label_issues.csv``), or
    one path per line; paths relative to data.root."""
    if not path.is_file():
        raise DatasetError(f"data.exclude={path}: no such file")
    text = path.read_text()
    first = text.splitlines()[0] if text.strip() else ""
    if "file" in [c.strip() for c in first.split(",")]:
        return [row["file"] for row in csv.DictReader(io.StringIO(text)) if row.get("file")]
    return [line.strip() for line in text.splitlines() if line.strip()]


def drop_excluded(train_all: list[Sample], excluded: Sequence[str], source: str) -> list[Sample]:
    """Training without the listed files; a listed file that is not in Training is an error
    (a list made for another dataset or data.root)."""
    known = {s.path for s in train_all}
    unknown = [p for p in excluded if p not in known]
    if unknown:
        raise DatasetError(
            f"data.exclude={source} lists {len(unknown)} file(s) that are not Training images of this "
            f"dataset, e.g. {unknown[0]}"
        )
    drop = set(excluded)
    log.info("leaving out %d Training image(s) listed in %s (data.exclude)", len(drop), source)
    return [s for s in train_all if s.path not in drop]


def write_split(path: Path, splits: DatasetSplits) -> None:
    """The exact split as CSV (file, class, split, group), so any run can be reproduced; the
    group is the Training image's duplicate group (empty for test images)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["file", "class", "split", "group"])
    for name, samples in (("train", splits.train), ("val", splits.val), ("test", splits.test or [])):
        for s in samples:
            writer.writerow([s.path, CLASS_NAMES[s.label], name, splits.groups.get(s.path, "")])
    atomic_write_text(path, text.getvalue())


def read_split(path: Path, root: Path, has_test: bool) -> DatasetSplits:
    """Reload a split written by :func:`write_split` (used on resume and by every rank)."""
    parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    groups: dict[str, int] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parts[row["split"]].append(Sample(row["file"], CLASS_NAMES.index(row["class"])))
            if row.get("group"):  # written since 0.3
                groups[row["file"]] = int(row["group"])
    missing = [s.path for s in parts["train"][:1] + parts["val"][:1] if not (root / s.path).is_file()]
    if missing:
        raise DatasetError(f"{path} lists {missing[0]}, which is not in data.root={root}")
    return DatasetSplits(root, parts["train"], parts["val"], parts["test"] if has_test else None, {}, groups=groups)
