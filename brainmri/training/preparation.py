"""Run preparation: the run folder checked, the data scanned and split, the run's files written.

Everything here happens once, on the main process, before any model exists: cheap checks
first, and nothing is written until the data scan has passed, so a bad image or a wrong
folder costs nothing and leaves no half-made run behind. Every rank then reads the same
``split.csv``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch.distributed as dist
from accelerate import Accelerator

from brainmri import config as config_lib
from brainmri.config import Config
from brainmri.data.dataset import ImageDataset
from brainmri.data.loaders import auto_workers
from brainmri.data.samples import CLASS_NAMES, DatasetSplits, class_counts, find_split_dir, resolve_root
from brainmri.data.scan import scan_dataset
from brainmri.data.splits import read_split, split_rule, write_split
from brainmri.data.transforms import compute_mean_std, fixed_normalization, resolve_augment, unnormalized_transform
from brainmri.errors import BrainMRIError
from brainmri.records import DatasetInfo
from brainmri.rundir import RunDir, atomic_write_json, atomic_write_text, check_output_dir, clear_run, default_run_dir
from brainmri.training.distributed import on_main

log = logging.getLogger(__name__)

# Keys whose change between the first run and a resume is expected, not suspicious.
RESUME_IGNORES = ("resume", "overwrite", "output_dir", "data.cache_dir")


@dataclass
class PreparedRun:
    """A run folder ready for training, and the data it trains on."""

    run: RunDir
    mode: str  # new | resume | overwrite
    splits: DatasetSplits
    info: DatasetInfo


def dataset_info(cfg: Config, splits: DatasetSplits, mean: list[float], std: list[float]) -> DatasetInfo:
    """The record of a split and its normalization, for ``dataset.json``."""
    return DatasetInfo(
        class_names=list(CLASS_NAMES),
        counts={
            "train": class_counts(splits.train),
            "val": class_counts(splits.val),
            "test": class_counts(splits.test) if splits.test is not None else None,
        },
        bad_images=len(splits.bad),
        dedup=cfg.data.dedup,
        train_test_leaks=len(splits.leaks),
        image_size=cfg.data.image_size,
        channels=cfg.data.channels,
        mean=list(mean),
        std=list(std),
    )


def measure_dataset(cfg: Config, splits: DatasetSplits) -> DatasetInfo:
    """Class counts and the normalization; with ``normalize=dataset`` this decodes every
    training image once to measure its mean and std (slow on large sets, done once per run)."""
    stats = fixed_normalization(resolve_augment(cfg.augment).normalize, cfg.data.channels)
    if stats is None:
        log.info("measuring mean/std of %d training images", len(splits.train))
        plain = ImageDataset(splits.root, splits.train, cfg.data.channels, unnormalized_transform(cfg.data.image_size))
        stats = compute_mean_std(plain, workers=min(4, auto_workers(1)))
    return dataset_info(cfg, splits, list(stats[0]), list(stats[1]))


def write_run_files(run: RunDir, cfg: Config, splits: DatasetSplits, info: DatasetInfo) -> None:
    """config.yaml, split.csv, bad_images.txt, test_leaks.tsv, then dataset.json: written last,
    it marks the data part of the run complete."""
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, config_lib.to_yaml(cfg))
    write_split(run.split, splits)
    if splits.bad:
        atomic_write_text(run.bad_images, "".join(f"{p}\t{r}\n" for p, r in sorted(splits.bad.items())))
    if splits.leaks:
        rows = "".join(f"{t}\t{tr}\n" for t, tr in sorted(splits.leaks.items()))
        atomic_write_text(run.leaks, "test\tsame pixels as\n" + rows)
    if splits.excluded:
        atomic_write_text(run.excluded, "".join(f"{p}\n" for p in splits.excluded))
    atomic_write_json(run.dataset, info.to_json())


def warn_config_changes(run: RunDir, cfg: Config) -> None:
    """A resumed run whose config differs from the one it started with says so, key by key."""
    try:
        old = config_lib.flat_dict(config_lib.to_dict(config_lib.config_from_yaml(run.config)))
    except BrainMRIError:
        return
    new = config_lib.flat_dict(config_lib.to_dict(cfg))
    changed = sorted(k for k in old.keys() | new.keys() if k not in RESUME_IGNORES and old.get(k) != new.get(k))
    if changed:
        log.warning("resuming with a config that differs from %s in: %s", run.config, ", ".join(changed))


def prepare_run(cfg: Config, accelerator: Accelerator, group: Optional[dist.ProcessGroup] = None) -> PreparedRun:
    """Decide the run folder, scan or reload the data, and write the run files (main process);
    every rank gets the same answer, or the same error (waiting in ``group``)."""
    output_dir = on_main(accelerator, lambda: str(Path(cfg.output_dir or default_run_dir(cfg.recipe)).resolve()), group)
    run = RunDir(Path(output_dir))
    mode = on_main(accelerator, lambda: check_output_dir(run.path, cfg.resume, cfg.overwrite), group)
    root = resolve_root(cfg.data.root)
    has_test = find_split_dir(root, "test") is not None
    resuming = mode == "resume" and run.dataset.exists()  # written last by write_run_files

    def prepare() -> dict:
        if resuming:
            warn_config_changes(run, cfg)
            return json.loads(run.dataset.read_text())
        exclude = Path(cfg.data.exclude).expanduser() if cfg.data.exclude else None
        splits = scan_dataset(
            root,
            split_rule(cfg.data, cfg.seed),
            cfg.data.on_bad_image,
            workers=auto_workers(1),
            dedup=cfg.data.dedup,
            exclude=exclude,
            cache_dir=Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else None,
        )
        info = measure_dataset(cfg, splits)
        if mode == "overwrite":
            clear_run(run.path)
        write_run_files(run, cfg, splits, info)
        return info.to_json()

    info = DatasetInfo.from_json(on_main(accelerator, prepare, group))
    splits = read_split(run.split, root, has_test)
    if splits.test is None:
        log.warning("no Testing/ folder in %s: there will be no test phase", root)
    return PreparedRun(run=run, mode=mode, splits=splits, info=info)
