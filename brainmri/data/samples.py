"""The two public Kaggle brain-MRI layouts, read unchanged: which images there are and their classes.

Sartaj Bhuvaji's "Brain Tumor Classification (MRI)" (``glioma_tumor``, ``no_tumor`` ...) and
Masoud Nickparvar's "Brain Tumor MRI Dataset" (``glioma``, ``notumor`` ...) both hold
``Training/`` and ``Testing/`` with one folder per class. Both map onto the same four
canonical classes in a fixed order, whatever order the folders are listed in.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from brainmri.errors import DatasetError

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
CLASS_ALIASES: dict[str, int] = {
    "glioma": 0,
    "glioma_tumor": 0,
    "meningioma": 1,
    "meningioma_tumor": 1,
    "notumor": 2,
    "no_tumor": 2,
    "pituitary": 3,
    "pituitary_tumor": 3,
}
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
SPLIT_FOLDERS = {"train": ("training", "train"), "test": ("testing", "test")}
DEMO_ROOT = Path(__file__).resolve().parent / "demo"
BUILTIN_DEMO = "builtin:demo"


@dataclass(frozen=True)
class Sample:
    """One image: its path relative to the dataset root and its canonical label."""

    path: str
    label: int


@dataclass
class DatasetSplits:
    """The result of scanning a dataset: what trains, validates and tests."""

    root: Path
    train: list[Sample]
    val: list[Sample]
    test: Optional[list[Sample]]  # None: the dataset has no Testing folder
    bad: dict[str, str]  # relative path -> reason, for images left out (on_bad_image=skip)
    leaks: dict[str, str] = field(default_factory=dict)  # test path -> Training path with the same pixels
    excluded: list[str] = field(default_factory=list)  # Training paths left out on purpose (data.exclude)
    groups: dict[str, int] = field(default_factory=dict)  # Training path -> duplicate group (split.csv's group column)


def resolve_root(root: Optional[str]) -> Path:
    """The dataset folder; ``builtin:demo`` is the small set shipped with the package."""
    if not root:
        raise DatasetError("data.root is not set: give data.root=/path/to/dataset (a folder with Training/)")
    path = DEMO_ROOT if root == BUILTIN_DEMO else Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"data.root does not exist or is not a folder: {path}")
    return path.resolve()


def find_split_dir(root: Path, split: str) -> Optional[Path]:
    """``Training``/``train`` (any case) for split "train", ``Testing``/``test`` for "test"."""
    wanted = SPLIT_FOLDERS[split]
    matches = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in wanted)
    if len(matches) > 1:
        raise DatasetError(f"{root} has several {split} folders: {', '.join(p.name for p in matches)}")
    return matches[0] if matches else None


def list_images(split_dir: Path, root: Path) -> list[Sample]:
    """Every image under the class folders of one split, in canonical class order."""
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in class_dirs if p.name.lower() not in CLASS_ALIASES]
    if unknown:
        raise DatasetError(
            f"unknown class folder(s) {unknown} in {split_dir}; found {[p.name for p in class_dirs]}, "
            f"accepted: {sorted(CLASS_ALIASES)}"
        )
    if not class_dirs:
        raise DatasetError(
            f"no class folders in {split_dir} (expected e.g. glioma/, meningioma/, notumor/, pituitary/)"
        )
    samples: list[Sample] = []
    for class_dir in sorted(class_dirs, key=lambda p: (CLASS_ALIASES[p.name.lower()], p.name)):
        label = CLASS_ALIASES[class_dir.name.lower()]
        files = class_files(class_dir)
        if not files:
            raise DatasetError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        samples.extend(Sample(f.relative_to(root).as_posix(), label) for f in files)
    return samples


def is_hidden(name: str) -> bool:
    """Tool and OS litter, never data: .ipynb_checkpoints, .git, .DS_Store, __MACOSX."""
    return name.startswith(".") or name == "__MACOSX"


def class_files(class_dir: Path) -> list[Path]:
    """The image files under one class folder, hidden folders at every level skipped.

    A symlink whose target is gone is kept: it is a missing image (a storage mount absent on
    this node, say) and the image check reports it like any unreadable file.
    """
    files, skipped = [], 0
    for folder, dirs, names in os.walk(class_dir, followlinks=True):
        hidden = [d for d in dirs if is_hidden(d)]
        for d in hidden:
            skipped += sum(len(n) for _, _, n in os.walk(Path(folder) / d))
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        for name in names:
            path = Path(folder) / name
            if is_hidden(name) or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if path.is_file() or path.is_symlink():
                files.append(path)
    if skipped:
        log.info(
            "skipped %d file(s) in hidden folders under %s (.ipynb_checkpoints, .git, __MACOSX, ...)",
            skipped,
            class_dir,
        )
    return sorted(files)


def class_counts(samples: Sequence[Sample]) -> list[int]:
    counts = Counter(s.label for s in samples)
    return [counts.get(i, 0) for i in range(len(CLASS_NAMES))]


def first_per_class(samples: Sequence[Sample], k: int) -> list[Sample]:
    """The first ``k`` samples of each class, in class order: a fixed set for figures."""
    return [s for label in range(len(CLASS_NAMES)) for s in [x for x in samples if x.label == label][:k]]
