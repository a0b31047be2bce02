"""brainmri/reporting/reporter.py and the augmentation preview it draws: silent off the main process,
and the augmentation grid shows the transform the run really trains with."""

from __future__ import annotations

import torch

from brainmri.config import AugmentConfig, Config, DataConfig, FiguresConfig, TrackingConfig
from brainmri.data.batch_augment import BatchAugment
from brainmri.data.cache import decode_resized
from brainmri.data.loaders import preview_augmentation
from brainmri.data.samples import first_per_class
from brainmri.data.scan import scan_dataset
from brainmri.data.splits import SplitRule
from brainmri.data.transforms import build_train_transform, resolve_augment
from brainmri.records import EpochRecord, RunResults
from brainmri.reporting.reporter import Reporter
from brainmri.rundir import RunDir
from brainmri.training.preparation import dataset_info


class Process:
    def __init__(self, main: bool):
        self.is_main_process = main
        self.num_processes = 2
        self.device = torch.device("cpu")


RECORD = EpochRecord(1, 1.0, 0.5, 0.4, 10.0, 1.0, 1.0, 0.5, 0.4, 1e-3, 1.0)


def start_and_epoch(tmp_path, dataset, main: bool) -> Reporter:
    """A Reporter of a 2-rank run on ``main`` or another rank, through its start and one epoch."""
    reporter = Reporter(
        Process(main),
        RunDir(tmp_path / "run"),
        TrackingConfig(wandb="disabled"),
        FiguresConfig(samples_per_class=1),
        "disabled",
        show_progress=False,
        select_metric="val/acc",
    )
    splits = scan_dataset(dataset, SplitRule(0.25, 0), "error", workers=1)
    reporter.start(
        splits, dataset_info(Config(), splits, [0.5] * 3, [0.5] * 3), DataConfig(image_size=32), AugmentConfig(), 0
    )
    reporter.epoch(RECORD, [RECORD], 1, 2)
    return reporter


def test_other_ranks_report_nothing(tmp_path, tiny_dataset):
    reporter = start_and_epoch(tmp_path, tiny_dataset, main=False)
    record = RECORD
    reporter.end(RunResults(1, "val/acc", 0.5, 2, "no", record.val_metrics()), [record])
    with reporter.epoch_progress(0, 2, 3) as meter:
        meter.add(4)
        reporter.step(meter, 1, True, torch.tensor(1.0), 1e-3)
    assert not (tmp_path / "run").exists()
    assert meter.seen == 8  # every rank's images count towards the rate


def test_main_process_draws_the_start_and_epoch_figures(tmp_path, tiny_dataset):
    start_and_epoch(tmp_path, tiny_dataset, main=True)
    names = sorted(p.name for p in (tmp_path / "run" / "figures").iterdir())
    assert names == ["augmentations.png", "class_distribution.png", "curves.png"]


def test_cached_preview_is_the_batch_augmentation(tiny_dataset):
    splits = scan_dataset(tiny_dataset, SplitRule(0.25, 0), "error", workers=1)
    chosen = first_per_class(splits.train, 2)
    augment = AugmentConfig(preset="cnn_study")
    mean, std = [0.2] * 3, [0.3] * 3
    pairs = preview_augmentation(
        splits.root, chosen, DataConfig(image_size=32, pipeline="cached"), augment, mean, std, seed=3
    )
    torch.manual_seed(3)
    batch = torch.stack([decode_resized(splits.root / s.path, 32, 3) for s in chosen])
    expected = BatchAugment(resolve_augment(augment), 32, mean, std, train=True)(batch)
    assert torch.equal(torch.stack([a for _, a, _ in pairs]), expected)
    assert torch.allclose(torch.stack([o for o, _, _ in pairs]), batch.float() / 255)
    assert [label for _, _, label in pairs] == [s.label for s in chosen]


def test_pil_preview_is_the_per_image_transform(tiny_dataset):
    from brainmri.data.scan import load_image

    splits = scan_dataset(tiny_dataset, SplitRule(0.25, 0), "error", workers=1)
    chosen = first_per_class(splits.train, 1)
    augment = AugmentConfig(preset="resnet_study")
    pairs = preview_augmentation(
        splits.root, chosen, DataConfig(image_size=32, pipeline="pil"), augment, [0.5] * 3, [0.5] * 3, seed=1
    )
    torch.manual_seed(1)
    transform = build_train_transform(resolve_augment(augment), 32, [0.5] * 3, [0.5] * 3)
    expected = [transform(load_image(splits.root / s.path, 3)) for s in chosen]
    assert all(torch.equal(a, e) for (_, a, _), e in zip(pairs, expected))
