"""The two public Kaggle brain-MRI layouts, read unchanged.

Sartaj Bhuvaji's "Brain Tumor Classification (MRI)" (``glioma_tumor``, ``no_tumor`` ...) and
Masoud Nickparvar's "Brain Tumor MRI Dataset" (``glioma``, ``notumor`` ...) both hold
``Training/`` and ``Testing/`` with one folder per class. Both map onto the same four
canonical classes in a fixed order, whatever order the folders are listed in.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError
from torch.utils.data import Dataset

from brainmri.data.groups import duplicate_groups, fold_split, group_split, perceptual_hash
from brainmri.data.scan_memo import ScanMemo, Verdict, file_key, memo_path
from brainmri.errors import DatasetError
from brainmri.rundir import atomic_write_text

log = logging.getLogger(__name__)

# A truncated file must fail the scan, never decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

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
        raise DatasetError(f"no class folders in {split_dir} (expected e.g. glioma/, meningioma/, notumor/, pituitary/)")
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
        log.info("skipped %d file(s) in hidden folders under %s (.ipynb_checkpoints, .git, __MACOSX, ...)", skipped, class_dir)
    return sorted(files)


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to 8-bit grayscale (1) or RGB (3), deliberately.

    16-bit and float images are scaled from their own min..max to 0..255 (a plain
    ``convert("L")`` would clip them); transparency is composited onto black, the
    background of an MRI slice; palette and CMYK go through RGB.
    """
    mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(image, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        image = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    elif mode == "1":
        image = image.convert("L")
    elif mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def load_image(path: Path | str, channels: int) -> Image.Image:
    """Open, fully decode and convert one image."""
    with Image.open(path) as im:
        im.load()
        return to_channels(im, channels)


def pixel_hash(image: Image.Image) -> str:
    """SHA-1 of the decoded RGB pixels and size: the same for a byte copy and for a lossless
    re-save (PNG of a JPEG, stripped metadata), unlike a hash of the file."""
    rgb = to_channels(image, 3)
    return hashlib.sha1(f"{rgb.width}x{rgb.height}|".encode() + rgb.tobytes()).hexdigest()


def open_verified(path: Path) -> tuple[Optional[str], Optional[Image.Image]]:
    """(why ``path`` cannot be trained on, None) or (None, the fully decoded image)."""
    if path.is_symlink() and not path.exists():
        return f"broken symlink (its target {os.readlink(path)} does not exist on this machine)", None
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)", None
        with Image.open(path) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                return f"degenerate size {im.size}", None
            return None, im.copy()
    except UnidentifiedImageError:
        return "not an image (unknown format)", None
    except OSError as e:
        text = str(e)
        return (f"truncated or corrupt: {text}" if "truncat" in text.lower() else f"unreadable: {text}"), None
    except (SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"corrupt: {e}", None


def verify_image(path: Path, perceptual: bool = False) -> tuple[Optional[str], Optional[str], Optional[int]]:
    """(why ``path`` cannot be trained on, None, None) or (None, its :func:`pixel_hash`, its
    perceptual hash when asked), from one decode."""
    reason, image = open_verified(path)
    if image is None:
        return reason, None, None
    try:
        return None, pixel_hash(image), perceptual_hash(image) if perceptual else None
    except (OSError, ValueError) as e:  # a mode PIL cannot convert
        return f"unsupported image mode {image.mode}: {e}", None, None


def verify_images(root: Path, samples: Sequence[Sample], workers: int, perceptual: bool = False,
                  memo: Optional[ScanMemo] = None) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """Decode every image once (threads: PIL releases the GIL), except those whose verdict
    ``memo`` still holds (same size and mtime).

    Returns all failures (path -> reason), the pixel hash of every readable image and, with
    ``perceptual``, its perceptual hash (for near-duplicate groups).
    """
    memo = memo or ScanMemo(None)
    keys = [file_key(root / s.path) for s in samples]
    known = [memo.get(s.path, k, perceptual) for s, k in zip(samples, keys)]
    todo = [i for i, v in enumerate(known) if v is None]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        fresh = list(pool.map(lambda i: verify_image(root / samples[i].path, perceptual), todo, chunksize=16))
    for i, verdict in zip(todo, fresh):
        known[i] = verdict
        memo.put(samples[i].path, keys[i], verdict)
    if len(todo) < len(samples):
        log.info("%d of %d image verdicts from the scan memo %s", len(samples) - len(todo), len(samples), memo.path)
    memo.save()
    results: list[Verdict] = known  # type: ignore[assignment]
    bad = {s.path: r for s, (r, _, _) in zip(samples, results) if r is not None}
    hashes = {s.path: h for s, (_, h, _) in zip(samples, results) if h is not None}
    phashes = {s.path: p for s, (_, _, p) in zip(samples, results) if p is not None}
    return bad, hashes, phashes


def train_test_leaks(train: Sequence[Sample], test: Sequence[Sample], hashes: dict[str, str]) -> dict[str, str]:
    """Test images whose pixels equal a Training image's: test path -> that Training path."""
    seen: dict[str, str] = {}
    for s in train:
        if s.path in hashes:
            seen.setdefault(hashes[s.path], s.path)
    return {s.path: seen[hashes[s.path]] for s in test if hashes.get(s.path) in seen}


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
        the config's check and the split both follow."""
        return self.folds > 1 or self.val_fraction > 0


def split_rule(data, seed: int) -> SplitRule:
    """The split keys of a ``DataConfig``."""
    return SplitRule(data.val_fraction, seed, data.split_groups, data.near_threshold, data.folds, data.fold)


def split_training(samples: Sequence[Sample], rule: SplitRule, pixels: dict[str, str],
                   phashes: dict[str, int]) -> tuple[list[Sample], list[Sample], dict[str, int]]:
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
        log.info("validation keeps %d duplicate group(s) of %d images whole (data.split_groups=%s)",
                 sum(n > 1 for n in sizes.values()), sum(n for n in sizes.values() if n > 1), rule.groups)
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
        raise DatasetError(f"data.exclude={source} lists {len(unknown)} file(s) that are not Training images of this "
                           f"dataset, e.g. {unknown[0]}")
    drop = set(excluded)
    log.info("leaving out %d Training image(s) listed in %s (data.exclude)", len(drop), source)
    return [s for s in train_all if s.path not in drop]


def scan_dataset(
    root: Path, split: SplitRule, on_bad_image: str, workers: int, dedup: str = "none", exclude: Optional[Path] = None,
    cache_dir: Optional[Path] = None,
) -> DatasetSplits:
    """Find the splits, check every image and split Training into train and validation.

    All unreadable images are reported together so a user fixes them in one go.
    ``dedup="train_test"`` drops the test images whose pixels equal a Training image's, so
    the test score measures generalisation rather than memory. Validation (or a k-fold
    fold) keeps duplicate groups whole (:mod:`brainmri.data.groups`). With ``cache_dir``, each
    file's verdict and hashes are memoized there (:mod:`brainmri.data.scan_memo`).
    """
    train_dir = find_split_dir(root, "train")
    if train_dir is None:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(f"no Training/ (or train/) folder in {root}; found {found}")
    train_all = list_images(train_dir, root)
    excluded = read_exclude_list(exclude) if exclude is not None else []
    if excluded:
        train_all = drop_excluded(train_all, excluded, str(exclude))
    test_dir = find_split_dir(root, "test")
    test = list_images(test_dir, root) if test_dir is not None else None
    everything = train_all + (test or [])
    log.info("checking %d images in %s", len(everything), root)
    memo = ScanMemo(memo_path(cache_dir, root) if cache_dir is not None else None)
    bad, hashes, phashes = verify_images(root, everything, workers, perceptual=split.groups == "near", memo=memo)
    if bad and on_bad_image == "error":
        listing = "; ".join(f"{p}: {r}" for p, r in sorted(bad.items()))
        raise DatasetError(
            f"{len(bad)} unreadable image(s) in {root} (fix them or set data.on_bad_image=skip): {listing}"
        )
    if bad:
        log.warning("skipping %d unreadable image(s) (listed in bad_images.txt)", len(bad))
        train_all = [s for s in train_all if s.path not in bad]
        test = [s for s in test if s.path not in bad] if test is not None else None
    if not train_all:
        raise DatasetError(f"no readable training images in {train_dir}")
    leaks = train_test_leaks(train_all, test or [], hashes)
    if leaks:
        action = "dropped from the test split (data.dedup=train_test)" if dedup == "train_test" else "kept (data.dedup=none)"
        log.warning("%d test image(s) have the same pixels as a Training image: %s", len(leaks), action)
        if dedup == "train_test" and test is not None:
            test = [s for s in test if s.path not in leaks]
    if test is not None and not test:
        raise DatasetError(f"no readable test images in {test_dir}")
    train, val, groups = split_training(train_all, split, hashes, phashes)
    if not train or (split.has_validation and not val):
        raise DatasetError(f"too few training images in {train_dir} for a validation split")
    if not split.has_validation:
        log.info("no validation split: all %d Training images train (data.val_fraction=0)", len(train))
    return DatasetSplits(root=root, train=train, val=val, test=test, bad=bad, leaks=leaks, groups=groups, excluded=sorted(set(excluded)))


def class_counts(samples: Sequence[Sample]) -> list[int]:
    counts = Counter(s.label for s in samples)
    return [counts.get(i, 0) for i in range(len(CLASS_NAMES))]


def first_per_class(samples: Sequence[Sample], k: int) -> list[Sample]:
    """The first ``k`` samples of each class, in class order: a fixed set for figures."""
    return [s for label in range(len(CLASS_NAMES)) for s in [x for x in samples if x.label == label][:k]]


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


class ImageDataset(Dataset):
    """Samples decoded on demand with PIL and passed through ``transform``."""

    def __init__(self, root: Path, samples: Sequence[Sample], channels: int, transform: Optional[Callable] = None):
        self.root = root
        self.samples = list(samples)
        self.channels = channels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = load_image(self.root / sample.path, self.channels)
        return (self.transform(image) if self.transform else image), sample.label
