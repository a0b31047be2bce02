"""Decoding and verifying every image of a dataset once, before training: unreadable files,
pixel and perceptual hashes, train/test leaks, and the scan that yields a run's splits."""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from brainmri.data.groups import perceptual_hash
from brainmri.data.samples import DatasetSplits, Sample, find_split_dir, list_images
from brainmri.data.scan_memo import ScanMemo, Verdict, file_key, memo_path
from brainmri.data.splits import SplitRule, drop_excluded, read_exclude_list, split_training
from brainmri.errors import DatasetError

log = logging.getLogger(__name__)

# A truncated file must fail the scan, never decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


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


def verify_images(
    root: Path, samples: Sequence[Sample], workers: int, perceptual: bool = False, memo: Optional[ScanMemo] = None
) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
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


def scan_dataset(
    root: Path,
    split: SplitRule,
    on_bad_image: str,
    workers: int,
    dedup: str = "none",
    exclude: Optional[Path] = None,
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
        action = (
            "dropped from the test split (data.dedup=train_test)" if dedup == "train_test" else "kept (data.dedup=none)"
        )
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
    return DatasetSplits(
        root=root, train=train, val=val, test=test, bad=bad, leaks=leaks, groups=groups, excluded=sorted(set(excluded))
    )
