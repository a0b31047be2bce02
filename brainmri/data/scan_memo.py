"""What the dataset scan learned about each image file, kept between runs beside the image cache.

Checking every image and hashing it (pixels for exact copies, a perceptual hash for near
copies) is one full decode of the dataset: about 25 s for Sartaj's 3,264 JPEGs on 2 cores,
paid by every run, every fold and every requeue. The memo keeps each file's verdict keyed,
like the image cache, by its path, size and modification time, so a changed or replaced file
is checked again and an unchanged one is not. It lives in ``data.cache_dir``; a missing,
stale or unreadable memo only costs the decode.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

from brainmri.rundir import atomic_write_text

log = logging.getLogger(__name__)

VERSION = 1
Verdict = tuple[Optional[str], Optional[str], Optional[int]]  # (why unusable, pixel hash, perceptual hash)


def memo_path(cache_dir: Path, root: Path) -> Path:
    """One memo per dataset folder (its resolved path), per format version."""
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir / f"brainmri-scan-{tag}-v{VERSION}.json"


def file_key(path: Path) -> Optional[str]:
    """``size|mtime_ns`` of the file a path points to; None when it cannot be stat'ed (a
    broken symlink, say), which is never memoized."""
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_size}|{st.st_mtime_ns}"


class ScanMemo:
    """Verdicts by relative path, valid while the file's size and mtime are unchanged."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self.entries: dict[str, list] = {}
        self.changed = False
        if path is not None and path.is_file():
            try:
                self.entries = json.loads(path.read_text())["files"]
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring an unreadable scan memo %s (the scan decodes every image again)", path)

    def get(self, rel: str, key: Optional[str], perceptual: bool) -> Optional[Verdict]:
        entry = self.entries.get(rel)
        if key is None or entry is None or entry[0] != key:
            return None
        reason, pixels, phash = entry[1:]
        if perceptual and reason is None and phash is None:
            return None  # memoized by a scan that did not need near copies
        return reason, pixels, (int(phash, 16) if phash is not None else None)

    def put(self, rel: str, key: Optional[str], verdict: Verdict) -> None:
        if key is None or self.path is None:
            return
        reason, pixels, phash = verdict
        self.entries[rel] = [key, reason, pixels, f"{phash:016x}" if phash is not None else None]
        self.changed = True

    def save(self) -> None:
        """Write the memo if anything new was learned; a failure to write is only a warning."""
        if not self.changed or self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({"version": VERSION, "files": self.entries}))
        except OSError as e:
            log.warning("could not save the scan memo %s (%s); the next scan decodes every image again", self.path, e)
