"""Dataset audit: what is in the folders before anyone trusts a score computed on them.

Class counts per split, image sizes and modes, unreadable files (DICOM files and NIfTI
volumes in the class folders are read too, as ``predict.py`` reads them; training does not), exact duplicates (same
decoded pixels, so a copy re-saved with other metadata still counts), near-duplicates
(perceptual hash within a Hamming distance, via ``imagehash``: catches re-encoded and
resized copies), duplicate groups whose labels disagree, and the leakage between Training
and Testing that both public brain-MRI datasets ship with. The dataset is only read.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from brainmri.data.groups import components, near_edges, perceptual_hash
from brainmri.data.samples import CLASS_ALIASES, CLASS_NAMES, find_split_dir, is_hidden, list_images
from brainmri.data.scan import open_verified, pixel_hash
from brainmri.data.scanner import find_slices, is_dicom, is_nifti
from brainmri.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class ImageRecord:
    """One file as the audit saw it."""

    path: str  # relative to the dataset root: Training/<class>/<file>
    split: str  # train | test
    label: int
    size: Optional[tuple[int, int]] = None
    mode: Optional[str] = None
    error: Optional[str] = None
    file_hash: Optional[str] = None  # SHA-256 of the bytes
    pixel_hash: Optional[str] = None  # SHA-1 of the decoded RGB pixels
    phash: Optional[int] = None  # 64-bit perceptual hash
    kind: str = "image"  # image | dicom | nifti (read through brainmri.data.scanner)


def scanner_records(split_dir: Path, root: Path, split: str) -> list[ImageRecord]:
    """The DICOM files and NIfTI volumes in a split's class folders (training reads only
    images; the audit reads these too, as ``predict.py`` would)."""
    out = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name.lower() in CLASS_ALIASES):
        for path in sorted(class_dir.rglob("*")):
            if not path.is_file() or any(is_hidden(part) for part in path.relative_to(root).parts):
                continue
            kind = "dicom" if is_dicom(path) else "nifti" if is_nifti(path) else None
            if kind is not None:
                label = CLASS_ALIASES[class_dir.name.lower()]
                out.append(ImageRecord(path.relative_to(root).as_posix(), split, label, kind=kind))
    return out


def _inspect_scanner_file(path: Path, record: ImageRecord) -> ImageRecord:
    """A DICOM file or NIfTI volume, read as ``predict.py`` reads it (:mod:`brainmri.data.scanner`):
    its first slice's size and perceptual hash, a pixel hash over every slice."""
    try:
        slices = [s.load(3) for s in find_slices([str(path)])]
    except DatasetError as e:  # no pixel data, an undecodable syntax, not 3-D: the reason, without the path
        record.error = str(e).removeprefix(f"{path}: ")
        return record
    record.size, record.mode = slices[0].size, f"{record.kind} ({len(slices)} slice(s))"
    record.file_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    hashes = [pixel_hash(image) for image in slices]
    record.pixel_hash = hashes[0] if len(hashes) == 1 else hashlib.sha1("".join(hashes).encode()).hexdigest()
    record.phash = perceptual_hash(slices[0])
    return record


def _inspect(root: Path, record: ImageRecord) -> ImageRecord:
    path = root / record.path
    if record.kind != "image":
        return _inspect_scanner_file(path, record)
    error, image = open_verified(path)
    if image is None:
        record.error = error
        return record
    record.size, record.mode = image.size, image.mode
    record.file_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        record.pixel_hash = pixel_hash(image)
    except (OSError, ValueError) as e:
        record.error = f"unsupported image mode {image.mode}: {e}"
        return record
    record.phash = perceptual_hash(image)
    return record


def scan(root: Path, workers: int) -> list[ImageRecord]:
    """Every image of Training/ and Testing/ (whichever exist), inspected once, in parallel."""
    records: list[ImageRecord] = []
    for split in ("train", "test"):
        folder = find_split_dir(root, split)
        if folder is not None:
            records += [ImageRecord(s.path, split, s.label) for s in list_images(folder, root)]
            records += scanner_records(folder, root, split)
    if not records:
        raise DatasetError(f"no Training/ or Testing/ folder in {root}")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda r: _inspect(root, r), records))


def exact_groups(records: Sequence[ImageRecord]) -> list[list[ImageRecord]]:
    """Images with identical decoded pixels, in groups of two or more."""
    by_hash: dict[str, list[ImageRecord]] = {}
    for r in records:
        if r.pixel_hash:
            by_hash.setdefault(r.pixel_hash, []).append(r)
    return sorted((g for g in by_hash.values() if len(g) > 1), key=lambda g: g[0].path)


def near_groups(records: Sequence[ImageRecord], threshold: int) -> list[list[ImageRecord]]:
    """Images linked by perceptual-hash distances <= ``threshold``, in connected groups.

    Only groups that are not all one image (some pair differs in its pixels) are listed:
    exact copies are :func:`exact_groups`' business.
    """
    good = [r for r in records if r.phash is not None]
    ids = components(len(good), near_edges([r.phash for r in good], threshold))
    members: dict[int, list[ImageRecord]] = {}
    for record, group in zip(good, ids):
        members.setdefault(group, []).append(record)
    groups = [g for g in members.values() if len(g) > 1 and len({r.pixel_hash for r in g}) > 1]
    return sorted(groups, key=lambda g: g[0].path)


def _paths(group: Sequence[ImageRecord]) -> list[str]:
    return sorted(r.path for r in group)


def _leaked_tests(groups: Sequence[Sequence[ImageRecord]]) -> set[str]:
    """Test images that share a group with a training image."""
    leaked: set[str] = set()
    for g in groups:
        if any(r.split == "train" for r in g):
            leaked.update(r.path for r in g if r.split == "test")
    return leaked


def audit(root: Path, near_threshold: int = 4, workers: int = 2) -> dict:
    """The whole report as a JSON-ready dict; see the module docstring."""
    records = scan(root, workers)
    readable = [r for r in records if r.error is None]
    exact = exact_groups(readable)
    near = near_groups(readable, near_threshold)
    conflicts = [g for g in exact + near if len({r.label for r in g}) > 1]
    test_bytes = {r.file_hash for r in readable if r.split == "train"}
    splits = sorted({r.split for r in records}, key=["train", "test"].index)

    def within(groups, split):
        return sum(1 for g in groups if all(r.split == split for r in g))

    return {
        "root": str(root),
        "near_threshold": near_threshold,
        "images": len(records),
        "counts": {
            s: {c: sum(1 for r in records if r.split == s and r.label == i) for i, c in enumerate(CLASS_NAMES)}
            for s in splits
        },
        "sizes": {f"{w}x{h}": n for (w, h), n in Counter(r.size for r in readable).most_common()},
        "modes": dict(Counter(r.mode for r in readable).most_common()),
        "unreadable": {r.path: r.error for r in records if r.error},
        "exact_groups": [_paths(g) for g in exact],
        "near_groups": [_paths(g) for g in near],
        "label_conflicts": [
            {"files": _paths(g), "labels": sorted({CLASS_NAMES[r.label] for r in g})} for g in conflicts
        ],
        "summary": {
            "exact_groups": len(exact),
            "exact_duplicate_images": sum(len(g) - 1 for g in exact),
            "exact_groups_within": {s: within(exact, s) for s in splits},
            "exact_groups_across_splits": sum(1 for g in exact if len({r.split for r in g}) > 1),
            "near_groups": len(near),
            "near_groups_across_splits": sum(1 for g in near if len({r.split for r in g}) > 1),
            "label_conflicts": len(conflicts),
            "test_images_byte_identical_to_training": sum(
                1 for r in readable if r.split == "test" and r.file_hash in test_bytes
            ),
            "test_images_pixel_identical_to_training": len(_leaked_tests(exact)),
            "test_images_near_duplicate_of_training": len(_leaked_tests(exact + near)),
        },
    }
