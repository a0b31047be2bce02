"""brainmri/data/scan_memo.py: the scan decodes an unchanged image once, across runs."""

from __future__ import annotations

import logging
import os

import pytest

import brainmri.data.scan as datasets
from brainmri.data.scan import scan_dataset
from brainmri.data.scan_memo import memo_path
from brainmri.data.splits import SplitRule
from brainmri.errors import DatasetError
from tests.conftest import make_dataset


@pytest.fixture
def decodes(monkeypatch):
    """The paths the scan decodes, in order."""
    seen: list[str] = []
    real = datasets.verify_image

    def counting(path, perceptual=False):
        seen.append(path.name)
        return real(path, perceptual)

    monkeypatch.setattr(datasets, "verify_image", counting)
    return seen


def scan(root, cache, groups="near"):
    return scan_dataset(root, SplitRule(0.25, 0, groups), "error", workers=2, cache_dir=cache)


def test_a_second_scan_decodes_nothing_and_splits_the_same(tmp_path, decodes):
    root, cache = make_dataset(tmp_path / "d", train_per_class=6, test_per_class=2), tmp_path / "cache"
    first = scan(root, cache)
    assert len(decodes) == 32 and memo_path(cache, root).is_file()
    second = scan(root, cache)
    assert len(decodes) == 32  # every verdict came from the memo
    assert second.train == first.train and second.val == first.val and second.groups == first.groups
    scan(root, None)
    assert len(decodes) == 64  # no cache_dir: no memo


def test_a_changed_file_is_decoded_again_and_a_corrupted_one_is_caught(tmp_path, decodes):
    root, cache = make_dataset(tmp_path / "d", train_per_class=6, test_per_class=2), tmp_path / "cache"
    scan(root, cache)
    victim = root / "Training" / "glioma_tumor" / "image (3).jpg"
    victim.write_bytes(victim.read_bytes()[:200])  # truncated in place: new size, new mtime
    decodes.clear()
    with pytest.raises(DatasetError, match=r"Training/glioma_tumor/image \(3\).jpg"):
        scan(root, cache)
    assert decodes == ["image (3).jpg"]


def test_a_memo_without_perceptual_hashes_is_completed_when_near_groups_need_them(tmp_path, decodes):
    root, cache = make_dataset(tmp_path / "d", train_per_class=3, test_per_class=1), tmp_path / "cache"
    scan(root, cache, groups="exact")
    scan(root, cache, groups="near")
    assert len(decodes) == 32
    scan(root, cache, groups="near")
    assert len(decodes) == 32


def test_an_unreadable_memo_costs_only_the_decode(tmp_path, decodes, caplog):
    root, cache = make_dataset(tmp_path / "d", train_per_class=3, test_per_class=1), tmp_path / "cache"
    cache.mkdir()
    memo_path(cache, root).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        splits = scan(root, cache)
    assert len(decodes) == 16 and len(splits.train) + len(splits.val) == 12
    assert "ignoring an unreadable scan memo" in caplog.text
    scan(root, cache)
    assert len(decodes) == 16  # rewritten, now valid


def test_a_broken_symlink_is_never_memoized(tmp_path, decodes):
    root, cache = make_dataset(tmp_path / "d", train_per_class=3, test_per_class=1), tmp_path / "cache"
    os.symlink("/nonexistent/scan.jpg", root / "Training" / "glioma_tumor" / "linked.jpg")
    for _ in range(2):
        with pytest.raises(DatasetError, match="linked.jpg: broken symlink"):
            scan(root, cache)
    assert decodes.count("linked.jpg") == 2
