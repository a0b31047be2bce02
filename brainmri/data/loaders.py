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
from brainmri.data.cache import (
    CachedDataset,
    CachedRows,
    ImageCache,
    ResidentCache,
    decode_resized,
    open_or_build,
    resident_fits,
)
from brainmri.data.dataset import ImageDataset
from brainmri.data.samples import DatasetSplits, Sample
from brainmri.data.scan import load_image
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
    val: Optional[DataLoader]  # None: no validation split (data.val_fraction=0)
    test: Optional[DataLoader]
    train_batch_transform: Optional[nn.Module]  # None: the pil pipeline transformed each image already
    eval_batch_transform: Optional[nn.Module]
    cache_build_seconds: float = 0.0
    cache_on_device: bool = False  # items are row numbers; the batch transforms gather the images
    cache_upload_seconds: float = 0.0


def place_cache(cache: ImageCache, location: str, device: torch.device) -> Optional[ResidentCache]:
    """The cache resident on ``device``, or None to keep it on the host (``data.cache_location``).

    ``auto`` keeps it resident when it takes at most a quarter of the device's free memory;
    an explicit ``device`` that cannot fit at all is a config error before anything moves.
    """
    nbytes = cache.array.nbytes
    if location == "auto":
        location = "device" if resident_fits(nbytes, device) else "host"
        if location == "host":
            log.info(
                "image cache (%.1f GB) kept on the host: too large for a quarter of %s's free memory",
                nbytes / 1e9,
                device,
            )
    elif location == "device" and not resident_fits(nbytes, device, fraction=1.0):
        free = torch.cuda.mem_get_info(device)[0]
        raise ConfigError(
            f"data.cache_location=device: the image cache ({nbytes / 1e9:.1f} GB) does not fit in "
            f"{device}'s free memory ({free / 1e9:.1f} GB); use data.cache_location=host or auto"
        )
    if location != "device":
        return None
    resident = ResidentCache(cache, device)
    log.info("image cache resident on %s (%.2f GB, %.1f s)", device, nbytes / 1e9, resident.upload_seconds)
    return resident


def build_loaders(
    splits: DatasetSplits,
    data: DataConfig,
    augment: AugmentConfig,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    num_local_processes: int = 1,
) -> Loaders:
    """Train, val and test loaders for ``data.pipeline``; every item is (image, label, index).

    ``device`` is where training runs. With the cache resident there, "image" is the cache
    row and the batch transforms, which start with a :class:`ResidentCache`, turn it into pixels.
    """
    on_gpu = device.type == "cuda"
    params = resolve_augment(augment)
    workers = pipeline_workers(data.num_workers, data.pipeline, on_gpu, num_local_processes)
    train_tf = eval_tf = train_batch = eval_batch = cache = resident = None
    if data.pipeline == "cached":
        if data.cache_dir is None:
            raise ConfigError("data.cache_dir is not set: the cached pipeline needs a folder for its image cache")
        everything = splits.train + splits.val + (splits.test or [])
        cache = open_or_build(
            splits.root, everything, data.image_size, data.channels, Path(data.cache_dir).expanduser(), auto_workers(1)
        )
        train_batch = BatchAugment(params, data.image_size, mean, std, train=True)
        eval_batch = BatchAugment(params, data.image_size, mean, std, train=False)
        resident = place_cache(cache, data.cache_location, device)
        if resident is not None:
            train_batch, eval_batch = nn.Sequential(resident, train_batch), nn.Sequential(resident, eval_batch)
            workers = 0  # an item is two integers
    else:
        train_tf = build_train_transform(params, data.image_size, mean, std)
        eval_tf = build_eval_transform(data.image_size, mean, std, params.normalize)

    def loader(samples: Sequence[Sample], transform, train: bool) -> DataLoader:
        if resident is not None:
            dataset: Dataset = CachedRows(cache, samples)
        elif cache is not None:
            dataset = CachedDataset(cache, samples)
        else:
            dataset = ImageDataset(splits.root, samples, data.channels, transform)
        return _data_loader(dataset, batch_size, train, workers, pin_memory=on_gpu and resident is None)

    return Loaders(
        train=loader(splits.train, train_tf, train=True),
        val=loader(splits.val, eval_tf, train=False) if splits.val else None,
        test=loader(splits.test, eval_tf, train=False) if splits.test else None,
        train_batch_transform=train_batch,
        eval_batch_transform=eval_batch,
        cache_build_seconds=cache.build_seconds if cache is not None else 0.0,
        cache_on_device=resident is not None,
        cache_upload_seconds=resident.upload_seconds if resident is not None else 0.0,
    )


def _data_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int, pin_memory: bool) -> DataLoader:
    """A loader whose items are (image, label, index)."""
    return DataLoader(
        IndexedDataset(dataset),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=pin_memory,
        # Starting an epoch's iterator draws the workers' base seed: from the loader's own
        # generator, so that the training's random stream (augmentation, dropout) is the same
        # whether the epoch began in this process or before a mid-epoch resume.
        generator=torch.Generator(),
        persistent_workers=workers > 0,
    )


def preview_augmentation(
    root: Path,
    samples: Sequence[Sample],
    data: DataConfig,
    augment: AugmentConfig,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """(original in [0, 1], augmented and normalized, label) of each sample, through the
    augmentation the run trains with: :class:`BatchAugment` on uint8 batches for the cached
    pipeline, the per-image torchvision transform for ``pil``. Seeded, and on its own RNG
    stream, so the figure neither varies between runs nor shifts training's randomness."""
    params = resolve_augment(augment)
    size, channels = data.image_size, data.channels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if data.pipeline == "cached":
            batch = torch.stack([decode_resized(root / s.path, size, channels) for s in samples])
            originals = list(batch.float() / 255)
            augmented = list(BatchAugment(params, size, mean, std, train=True)(batch))
        else:
            train_tf, plain = (
                build_train_transform(params, size, mean, std),
                build_eval_transform(size, [0.0] * channels, [1.0] * channels),
            )
            images = [load_image(root / s.path, channels) for s in samples]
            originals, augmented = [plain(im) for im in images], [train_tf(im) for im in images]
    return [(o, a, s.label) for o, a, s in zip(originals, augmented, samples)]
