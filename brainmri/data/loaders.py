"""DataLoaders for one run, for either input pipeline: what training and the benchmark share.

``pil``: every image is decoded and transformed by DataLoader workers every epoch.
``cached``: images come as uint8 from the decoded-image cache and are augmented as whole
batches on the training device by :class:`~brainmri.data.batch_augment.BatchAugment`.
With the cache resident on the device (``data.cache_location``), the loaders carry only
row numbers and the batch transform gathers the images where the model runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from brainmri.config import AugmentConfig, DataConfig
from brainmri.data.batch_augment import BatchAugment
from brainmri.data.cache import CachedDataset, CachedRows, ResidentCache, open_or_build, resident_fits
from brainmri.data.datasets import DatasetSplits, ImageDataset, Sample
from brainmri.data.transforms import build_eval_transform, build_train_transform, resolve_augment
from brainmri.errors import ConfigError

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may run on (the SLURM allocation, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers(num_local_processes: int) -> int:
    """DataLoader workers per process: this process's share of the CPUs it may use, at most 8."""
    return max(1, min(8, available_cpus() // max(1, num_local_processes)))


def pipeline_workers(requested: int, pipeline: str, on_gpu: bool, num_local_processes: int) -> int:
    """Worker processes per DataLoader.

    The cached pipeline's workers only copy uint8 rows out of a memmap: on a GPU a few keep
    the copies ahead of the device, on a CPU they would only take cores from the model, so
    there the training process reads the rows itself.
    """
    if requested >= 0:
        return requested
    workers = auto_workers(num_local_processes)
    if pipeline == "cached":
        return min(workers, 4) if on_gpu else 0
    return workers


class IndexedDataset(Dataset):
    """Adds the sample index to each item, so metrics can drop the duplicates that
    distributed samplers add to even out the last batch."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label, index


@dataclass
class Loaders:
    """The loaders of one run and the batch transforms the cached pipeline applies on the device."""

    train: DataLoader
    val: DataLoader
    test: Optional[DataLoader]
    train_batch_transform: Optional[nn.Module]  # None: the pil pipeline transformed each image already
    eval_batch_transform: Optional[nn.Module]
    cache_build_seconds: float = 0.0
    cache_on_device: bool = False  # items are row numbers; the batch transforms gather the images
    cache_upload_seconds: float = 0.0


def build_loaders(
    splits: DatasetSplits,
    data: DataConfig,
    augment: AugmentConfig,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_local_processes: int = 1,
    drop_last_train: bool = False,
    device: Optional[torch.device] = None,
) -> Loaders:
    """Train, val and test loaders for ``data.pipeline``; every item is (image, label, index).

    ``device`` is where training runs (default: the first GPU if any, else the CPU). With
    the cache resident there, "image" is the cache row and the batch transforms, which
    start with a :class:`ResidentCache`, turn it into pixels.
    """
    on_gpu = torch.cuda.is_available()
    device = device or torch.device("cuda" if on_gpu else "cpu")
    params = resolve_augment(augment)
    workers = pipeline_workers(data.num_workers, data.pipeline, on_gpu, num_local_processes)
    train_tf = eval_tf = None
    train_batch: Optional[nn.Module] = None
    eval_batch: Optional[nn.Module] = None
    cache = resident = None
    if data.pipeline == "cached":
        cache_dir = Path(data.cache_dir or Path.home() / ".cache" / "brainmri").expanduser()
        everything = splits.train + splits.val + (splits.test or [])
        cache = open_or_build(splits.root, everything, data.image_size, data.channels, cache_dir, auto_workers(1))
        train_batch = BatchAugment(params, data.image_size, mean, std, train=True)
        eval_batch = BatchAugment(params, data.image_size, mean, std, train=False)
        location = data.cache_location
        if location == "auto":
            location = "device" if resident_fits(cache.array.nbytes, device) else "host"
            if location == "host":
                log.info("image cache (%.1f GB) kept on the host: too large for a quarter of %s's free memory", cache.array.nbytes / 1e9, device)
        elif location == "device" and not resident_fits(cache.array.nbytes, device, fraction=1.0):
            free = torch.cuda.mem_get_info(device)[0]
            raise ConfigError(
                f"data.cache_location=device: the image cache ({cache.array.nbytes / 1e9:.1f} GB) does not fit in "
                f"{device}'s free memory ({free / 1e9:.1f} GB); use data.cache_location=host or auto"
            )
        if location == "device":
            resident = ResidentCache(cache, device)
            train_batch, eval_batch = nn.Sequential(resident, train_batch), nn.Sequential(resident, eval_batch)
            workers = 0  # an item is two integers
            log.info("image cache resident on %s (%.2f GB, %.1f s)", device, cache.array.nbytes / 1e9, resident.upload_seconds)
    else:
        train_tf = build_train_transform(params, data.image_size, mean, std)
        eval_tf = build_eval_transform(data.image_size, mean, std)

    def loader(samples: Sequence[Sample], transform, train: bool) -> DataLoader:
        if resident is not None:
            dataset: Dataset = CachedRows(cache, samples)
        elif cache is not None:
            dataset = CachedDataset(cache, samples)
        else:
            dataset = ImageDataset(splits.root, samples, data.channels, transform)
        return DataLoader(
            IndexedDataset(dataset),
            batch_size=batch_size,
            shuffle=train,
            num_workers=workers,
            pin_memory=on_gpu and resident is None,
            persistent_workers=workers > 0,
            drop_last=train and drop_last_train,
        )

    return Loaders(
        train=loader(splits.train, train_tf, train=True),
        val=loader(splits.val, eval_tf, train=False),
        test=loader(splits.test, eval_tf, train=False) if splits.test else None,
        train_batch_transform=train_batch,
        eval_batch_transform=eval_batch,
        cache_build_seconds=cache.build_seconds if cache is not None else 0.0,
        cache_on_device=resident is not None,
        cache_upload_seconds=resident.upload_seconds if resident is not None else 0.0,
    )
