"""Decoded-image cache: every image decoded and resized once, then read as uint8 from a memmap.

These datasets are small (3-7k images) but their JPEGs are large; decoding and resizing
each one every epoch is what starves the model. The cache holds one ``.npy`` array
(N, C, S, S) of uint8 in ``data.cache_dir`` (node-local scratch by default) plus a JSON
index of the files in it. Its name is keyed by the dataset's content (paths, sizes,
mtimes), the resolution and the channel count, so a changed file gives a new cache.

Building is parallel (threads: PIL releases the GIL) and guarded by an ``flock``: the first
process on a node builds while the others wait, then everyone maps the same file. The
array is written under a temporary name and renamed last, so no reader sees a torn cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from brainmri.data.samples import Sample
from brainmri.data.scan import load_image
from brainmri.errors import DatasetError
from brainmri.rundir import atomic_replace, atomic_write_text

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 3600.0  # seconds a process waits for another one building the same cache
CACHE_VERSION = 1


def decode_resized(path: Path, size: int, channels: int) -> torch.Tensor:
    """uint8 (C, size, size): exactly the first steps of the per-image PIL pipeline."""
    image = load_image(path, channels)
    return v2.Resize((size, size), antialias=True)(v2.PILToTensor()(image))


def cache_key(root: Path, paths: Sequence[str], size: int, channels: int) -> str:
    digest = hashlib.sha256(f"brainmri-cache-v{CACHE_VERSION}|{size}|{channels}\n".encode())
    for rel in paths:
        st = (root / rel).stat()
        digest.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


@dataclass
class ImageCache:
    """An opened cache: the memmapped array and the row of each relative path."""

    path: Path
    array: np.ndarray
    rows: dict[str, int]
    build_seconds: float = 0.0  # 0 when an existing cache was opened

    def __len__(self) -> int:
        return len(self.rows)


def _open(array_path: Path, index_path: Path) -> ImageCache:
    paths = json.loads(index_path.read_text())["paths"]
    # Copy-on-write mapping: shared pages like "r", but torch can wrap it without a copy.
    array = np.load(array_path, mmap_mode="c")
    if array.shape[0] != len(paths):
        raise OSError(f"cache {array_path} has {array.shape[0]} rows for {len(paths)} files")
    return ImageCache(array_path, array, {p: i for i, p in enumerate(paths)})


def acquire(lock, timeout: float, poll: float = 0.5) -> None:
    """Take the builder's lock, saying who holds it while waiting; give up after ``timeout``.

    The lock is per node (node-local scratch); on a shared ``data.cache_dir`` a builder on
    another node may hold it, and a node that died there can leave it held (NFS), so no
    process waits forever. The holder writes ``host pid`` into the lock file.
    """
    start, last_said = time.monotonic(), None
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            waited = time.monotonic() - start
            if waited > timeout:
                raise DatasetError(
                    f"image cache lock {lock.name} held by {holder} for over {timeout:.0f} s; "
                    "if that process is gone, delete the lock file"
                ) from None
            if last_said is None or time.monotonic() - last_said >= 30:
                log.info("waiting for %s to build the image cache (%s)", holder, lock.name)
                last_said = time.monotonic()
            time.sleep(poll)
    lock.seek(0)
    lock.truncate()
    lock.write(f"{socket.gethostname()} pid {os.getpid()}")
    lock.flush()


def open_or_build(
    root: Path,
    samples: Sequence[Sample],
    size: int,
    channels: int,
    cache_dir: Path,
    workers: int,
    lock_timeout: float = LOCK_TIMEOUT,
) -> ImageCache:
    """The cache for these images at this size, building it first if no process has yet."""
    paths = sorted({s.path for s in samples})
    key = cache_key(root, paths, size, channels)
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"brainmri-{key}-{size}px-{channels}ch"
    array_path, index_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    if array_path.exists() and index_path.exists():
        return _open(array_path, index_path)
    with open(cache_dir / f"{stem}.lock", "a+") as lock:
        acquire(lock, lock_timeout)  # released when the file closes, also if this process dies
        if array_path.exists() and index_path.exists():  # another process built it while we waited
            return _open(array_path, index_path)
        start = time.perf_counter()
        log.info("building image cache: %d images at %dpx into %s", len(paths), size, array_path)
        tmp = cache_dir / f".{stem}.{os.getpid()}.tmp.npy"
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), channels, size, size))

        def fill(i: int, out: np.ndarray = array) -> None:
            out[i] = decode_resized(root / paths[i], size, channels).numpy()

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(fill, range(len(paths))))
        array.flush()
        del array
        atomic_write_text(
            index_path,
            json.dumps(
                {"version": CACHE_VERSION, "root": str(root), "size": size, "channels": channels, "paths": paths}
            ),
        )
        atomic_replace(tmp, array_path)  # the commit point: readers look for the array
        cache = _open(array_path, index_path)
        cache.build_seconds = time.perf_counter() - start
        log.info("image cache built in %.1f s (%.0f MB)", cache.build_seconds, array_path.stat().st_size / 2**20)
        return cache


class CachedDataset(Dataset):
    """uint8 (C, S, S) tensors straight from the cache; augmentation happens per batch.

    Loader workers map the cache file themselves: pickled (workers started by ``spawn`` or
    ``forkserver``, Python 3.14's default on Linux), a memmap would travel as a full copy
    of its data, one per worker. Only the file's path and the row numbers travel.
    """

    def __init__(self, cache: ImageCache, samples: Sequence[Sample]):
        self.path = cache.path
        self.rows = [cache.rows[s.path] for s in samples]
        self.labels = [s.label for s in samples]
        self._array: Optional[np.ndarray] = cache.array

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        return torch.from_numpy(np.array(self.array[self.rows[index]])), self.labels[index]


def resident_fits(nbytes: int, device: torch.device, fraction: float = 0.25) -> bool:
    """Whether a cache of ``nbytes`` should live on ``device``.

    On a CPU it always does: the "device" is the page cache the memmap already uses. On a
    GPU it does when it takes at most ``fraction`` of the memory free now, which leaves the
    rest for activations (ResNet18 at 512 px, batch 32, needs about 10 GB).
    """
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


class ResidentCache(nn.Module):
    """The whole cache as one uint8 tensor on the training device; row numbers in, images out.

    Each batch is then one ``index_select`` where the model runs: no DataLoader workers,
    no pinned staging copy, no host-to-device transfer per step. On a GPU this is what keeps
    a launch-bound step (ResNet18 at 224 px takes about 7 ms) from waiting on the host. On
    a CPU the tensor wraps the memmap, so nothing is copied and processes on a node share
    the pages.
    """

    def __init__(self, cache: ImageCache, device: torch.device):
        super().__init__()
        start = time.perf_counter()
        images = torch.from_numpy(cache.array)
        # A plain attribute, not a buffer: moving the batch transforms with ``.to(device)``
        # must neither copy the cache again nor pull it back to the host.
        self.images = images if device.type == "cpu" else images.to(device)
        self.upload_seconds = time.perf_counter() - start

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.images.index_select(0, rows.to(self.images.device))


class CachedRows(Dataset):
    """(row, label) pairs for a :class:`ResidentCache`: the images never pass through the DataLoader."""

    def __init__(self, cache: ImageCache, samples: Sequence[Sample]):
        self.rows = [cache.rows[s.path] for s in samples]
        self.labels = [s.label for s in samples]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        return self.rows[index], self.labels[index]
