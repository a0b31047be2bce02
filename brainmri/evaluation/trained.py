"""Evaluation and inference of a trained model, from its run directory or a weights file.

:func:`load_trained` rebuilds the model exactly as it was trained (config, normalization,
channels, image size) and loads its weights safely; :func:`evaluate` scores one split with
every metric of :mod:`brainmri.scoring.metrics`, optionally with horizontal-flip test-time
augmentation, and, on the test split, again without the test images whose pixels equal a
Training image's (the leakage both public datasets ship with).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from brainmri import config as config_lib
from brainmri.config import Config
from brainmri.data.dataset import ImageDataset
from brainmri.data.intensity import input_normalization
from brainmri.data.loaders import auto_workers
from brainmri.data.samples import (
    CLASS_NAMES,
    DatasetSplits,
    Sample,
    find_split_dir,
    list_images,
    resolve_root,
)
from brainmri.data.scan import train_test_leaks, verify_images
from brainmri.data.splits import read_split
from brainmri.data.transforms import build_eval_transform, resolve_augment
from brainmri.errors import CheckpointError, DatasetError
from brainmri.evaluation.report import CalibratedScore, Evaluation
from brainmri.models import build_model
from brainmri.records import DatasetInfo
from brainmri.rundir import RunDir
from brainmri.scoring.calibration import Calibration, calibration_from_metadata, read_calibration
from brainmri.scoring.intervals import Comparison, bootstrap_intervals, compare
from brainmri.scoring.metrics import classification_metrics
from brainmri.scoring.tta import tta_logits
from brainmri.training.distributed import default_device, resolve_precision
from brainmri.weights import load_state_dict_file, read_metadata

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """A model ready for inference and what it needs to see images as in training."""

    model: nn.Module
    cfg: Config
    mean: list[float]
    std: list[float]
    weights: Path
    run_dir: Optional[Path]  # None when only a weights file was given
    precision: str = "no"  # autocast as in training, so evaluation reproduces results.json
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    calibration: Optional[Calibration] = None  # the run's temperature; None: uncalibrated
    calibration_origin: str = ""  # the file the temperature was read from (calibration.json or the weights)

    @property
    def name(self) -> str:
        return self.cfg.model.name

    @property
    def temperature(self) -> Optional[float]:
        return self.calibration.temperature if self.calibration is not None else None

    @property
    def image_size(self) -> int:
        return self.cfg.data.image_size

    @property
    def channels(self) -> int:
        return self.cfg.data.channels

    def temperature_note(self) -> str:
        """Which temperature predictions apply, in words (printed by evaluate.py and predict.py)."""
        cal = self.calibration
        if cal is None:
            return f"uncalibrated: {self.weights.name} carries no temperature and no calibration.json is beside it"
        fitted = "the CV folds' out-of-fold predictions" if cal.fitted_on == "cv" else f"the {cal.fitted_on} split"
        return f"temperature {cal.temperature:.3f} (fitted on {fitted}; read from {self.calibration_origin})"

    def transform(self):
        return build_eval_transform(self.image_size, self.mean, self.std, self.normalize)

    @property
    def normalize(self) -> str:
        """The run's ``augment.normalize``: fixed mean/std, or a per-image step before them."""
        return resolve_augment(self.cfg.augment).normalize

    def input_normalization(self) -> nn.Module:
        """[0, 1] pixels (B, C, H, W) to this model's input, as one traceable module: what an
        export puts in front of the model (:func:`brainmri.data.intensity.input_normalization`)."""
        return input_normalization(self.normalize, self.mean, self.std)

    def run(self, purpose: str) -> RunDir:
        """The run directory, for what needs more than the weights (its split.csv, say)."""
        if self.run_dir is None or not RunDir(self.run_dir).split.is_file():
            raise CheckpointError(f"{purpose} needs the run directory (its split.csv): give run=RUN_DIR")
        return RunDir(self.run_dir)


def _weights_in_run(run: Path) -> Path:
    best = RunDir(run).best_weights
    if not best.is_file():
        raise CheckpointError(f"{run} has no {best.name}: the run has not finished an epoch")
    return best


def locate(run: Optional[str], checkpoint: Optional[str]) -> tuple[Optional[Path], Path]:
    """(run directory or None, weights file) from ``run=`` and/or ``checkpoint=``.

    ``checkpoint`` may be a weights file (``best.safetensors``, a ``.pth``) or a checkpoint
    folder (``checkpoints/epoch_0007``); its run directory is found next to it when there.
    """
    if run is None and checkpoint is None:
        raise CheckpointError("give run=RUN_DIR or checkpoint=FILE")
    run_dir = Path(run).expanduser() if run else None
    if run_dir is not None and not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    if checkpoint is None:
        return run_dir, _weights_in_run(run_dir)  # type: ignore[arg-type]
    weights = Path(checkpoint).expanduser()
    if weights.is_dir():
        inside = weights / "model.safetensors"
        if not inside.is_file():
            raise CheckpointError(f"{weights} holds no model.safetensors")
        run_dir = run_dir or weights.parent.parent
        weights = inside
    elif not weights.is_file():
        raise CheckpointError(f"checkpoint not found: {weights}")
    if run_dir is None and (weights.parent / "config.yaml").is_file():
        run_dir = weights.parent
    return run_dir, weights


def run_dirs(run: str) -> list[Path]:
    """The runs ``run=`` names: one run directory, several joined by commas, or a sweep
    folder (its finished trials, e.g. the folds of a cross-validation sweep)."""
    parts = [p.strip() for p in run.split(",") if p.strip()]
    if len(parts) > 1:
        return [Path(p).expanduser() for p in parts]
    folder = Path(run).expanduser()
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return [folder]
    trials = json.loads(manifest.read_text()).get("trials", [])
    done = [Path(t["output_dir"]) for t in trials if (Path(t["output_dir"]) / "results.json").is_file()]
    if not done:
        raise CheckpointError(f"sweep {folder} has no finished trial yet ({len(trials)} trial(s) in its manifest)")
    return done


def load_models(
    run: Optional[str] = None, checkpoint: Optional[str] = None, device: Optional[torch.device] = None
) -> list[TrainedModel]:
    """One trained model, or the members of an ensemble (several runs, or a sweep folder)."""
    if run is None:
        return [load_trained(None, checkpoint, device)]
    dirs = run_dirs(run)
    if len(dirs) > 1 and checkpoint is not None:
        raise CheckpointError("checkpoint= picks the weights of one run; an ensemble uses each run's best weights")
    models = [load_trained(str(d), checkpoint, device) for d in dirs]
    sizes = {(m.image_size, m.channels) for m in models}
    if len(sizes) > 1:
        log.info("ensemble members see the images differently (size, channels): %s", sorted(sizes))
    return models


def load_trained(
    run: Optional[str] = None, checkpoint: Optional[str] = None, device: Optional[torch.device] = None
) -> TrainedModel:
    """The trained model of a run (or of a weights file that carries its config), in eval mode."""
    run_dir, weights = locate(run, checkpoint)
    meta = read_metadata(weights)
    run_files = RunDir(run_dir) if run_dir is not None else None
    if run_files is not None and run_files.config.is_file():
        cfg = config_lib.config_from_yaml(run_files.config)
        info = run_files.dataset.read_text() if run_files.dataset.is_file() else meta.get("dataset")
    elif "config" in meta:
        cfg = config_lib.config_from_text(meta["config"], str(weights))
        info = meta.get("dataset")
    else:
        raise CheckpointError(f"{weights} carries no config and has no run directory beside it: give run=RUN_DIR too")
    recorded = json.loads(info) if info else {}
    if "mean" not in recorded:
        raise CheckpointError(f"no normalization statistics for {weights} (dataset.json missing)")
    stats = DatasetInfo.from_json(recorded)
    # Never fetch pretrained weights at evaluation: the trained weights replace them anyway.
    model_cfg = dataclasses.replace(cfg.model, pretrained=False, pretrained_file=None)
    model = build_model(model_cfg, cfg.in_chans, cfg.data.image_size, len(CLASS_NAMES))
    state = load_state_dict_file(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{weights} does not fit model {cfg.model.name}: {str(e).splitlines()[0]}") from None
    device = device or default_device()
    model.to(device).eval()
    precision = resolve_precision(cfg.train.mixed_precision, device)
    calibration, origin = run_calibration(run_files, meta, weights)
    trained = TrainedModel(model, cfg, list(stats.mean), list(stats.std), weights, run_dir, precision)
    trained.class_names, trained.calibration, trained.calibration_origin = list(stats.class_names), calibration, origin
    return trained


def run_calibration(run: Optional[RunDir], meta: dict[str, str], weights: Path) -> tuple[Optional[Calibration], str]:
    """The temperature to apply and where it was read: the run's ``calibration.json`` (which
    ``calibrate.py`` may have rewritten) or else the one the weights file carries."""
    if run is not None and run.calibration.is_file():
        return read_calibration(run.calibration), str(run.calibration)
    carried = calibration_from_metadata(meta)
    if carried is not None:
        return carried, f"{weights.name}'s metadata"
    return None, ""


def resolve_tta(trained: TrainedModel, tta: str) -> str:
    """``auto``: the test-time augmentation the run scored itself with (its ``train.tta``)."""
    return trained.cfg.train.tta if tta == "auto" else tta


@torch.no_grad()
def predict_probs(
    trained: TrainedModel, images: torch.Tensor, tta: str = "auto", calibrated: bool = True
) -> torch.Tensor:
    """Class probabilities of a normalized batch; ``tta="hflip"`` averages the logits of the
    image and its mirror (as training's own test phase does); ``calibrated`` divides the
    logits by the run's temperature, when it has one."""
    device = next(trained.model.parameters()).device
    x = images.to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(trained.precision)
    scale = trained.calibration.temperature if calibrated and trained.calibration is not None else 1.0
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = tta_logits(trained.model, x, resolve_tta(trained, tta))
    return (logits / scale).softmax(dim=1).cpu()


def predict_samples(
    trained: TrainedModel,
    root: Path,
    samples: Sequence[Sample],
    tta: str = "auto",
    batch_size: int = 64,
    workers: int = -1,
    calibrated: bool = True,
) -> torch.Tensor:
    """(N, C) probabilities of the samples, in their order."""
    workers = auto_workers(1) if workers < 0 else workers
    loader = DataLoader(
        ImageDataset(root, samples, trained.channels, trained.transform()), batch_size=batch_size, num_workers=workers
    )
    if not samples:
        return torch.zeros(0, len(CLASS_NAMES))
    return torch.cat([predict_probs(trained, x, tta, calibrated) for x, _ in loader])


def split_samples(trained: TrainedModel, data_root: Optional[str], split: str) -> DatasetSplits:
    """The run's own split (``split.csv``), read against ``data_root`` or the run's data.root.

    A bare weights file has no ``split.csv``: its test split is the dataset's whole Testing/
    folder (the run's test split, unless it trained with ``data.dedup=train_test``), with the
    Training/ images listed for the leakage check; its validation split is unknown."""
    root = resolve_root(data_root or trained.cfg.data.root)
    if trained.run_dir is None or not RunDir(trained.run_dir).split.is_file():
        return bare_splits(trained, root, split)
    run = trained.run("evaluating a split")
    has_test = find_split_dir(root, "test") is not None
    splits = read_split(run.split, root, has_test)
    if split == "test" and not splits.test:
        raise DatasetError(f"no test split for this run in {root} (no Testing/ folder)")
    if split == "val" and not splits.val:
        raise DatasetError(f"{run.path} has no validation split: it trained on all of Training (data.val_fraction=0)")
    return splits


def bare_splits(trained: TrainedModel, root: Path, split: str) -> DatasetSplits:
    """The test split of a weights file without its run directory (see :func:`split_samples`)."""
    if split != "test":
        raise CheckpointError(f"split={split} of {trained.weights.name} needs its run directory (split.csv): give run=")
    test_dir, train_dir = find_split_dir(root, "test"), find_split_dir(root, "train")
    if test_dir is None:
        raise DatasetError(f"no Testing/ folder in {root} to evaluate {trained.weights.name} on")
    train = list_images(train_dir, root) if train_dir is not None else []
    return DatasetSplits(root, train, [], list_images(test_dir, root), {})


def recorded_leaks(trained: TrainedModel, samples: Sequence[Sample]) -> Optional[dict[str, str]]:
    """The train/test leaks the training scan found (``test_leaks.tsv``), limited to ``samples``;
    None when the run predates that record."""
    run = RunDir(trained.run_dir) if trained.run_dir is not None else None
    if run is None or not run.dataset.is_file() or "train_test_leaks" not in json.loads(run.dataset.read_text()):
        return None
    if not run.leaks.is_file():
        return {}
    rows = [line.split("\t") for line in run.leaks.read_text().splitlines()[1:] if line.strip()]
    wanted = {s.path for s in samples}
    return {test: train for test, train in rows if test in wanted}


def ensemble_probs(
    models: Sequence[TrainedModel],
    root: Path,
    samples: Sequence[Sample],
    tta: str,
    batch_size: int,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Mean probabilities of the members, raw and (when every member has a temperature)
    calibrated: each member's softmax(log p / T), then the mean."""
    raw = [predict_samples(m, root, samples, tta, batch_size, calibrated=False) for m in models]
    calibrated = None
    if all(m.calibration is not None for m in models):
        calibrated = torch.stack(
            [m.calibration.apply(p.clamp_min(1e-12).log()).softmax(dim=1) for m, p in zip(models, raw)]
        ).mean(0)
    return torch.stack(raw).mean(0), calibrated


def evaluate(
    models: TrainedModel | Sequence[TrainedModel],
    splits: DatasetSplits,
    split: str,
    tta: str = "auto",
    batch_size: int = 64,
) -> Evaluation:
    """Every metric of one split, for one model or the mean probabilities of several; on the
    test split, also without train/test leaks; with the runs' temperatures, calibrated too."""
    models = [models] if isinstance(models, TrainedModel) else list(models)
    trained = models[0]
    samples = splits.test if split == "test" else splits.val
    if samples is None:
        raise DatasetError(f"this run has no {split} split in {splits.root}")
    missing = [s.path for s in samples if not (splits.root / s.path).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) of the {split} split are not in {splits.root}, e.g. {missing[0]}")
    probs, cal_probs = ensemble_probs(models, splits.root, samples, tta, batch_size)
    targets = torch.tensor([s.label for s in samples])
    logits = probs.clamp_min(1e-12).log()  # softmax(log p) = p: the metrics take logits
    metrics = classification_metrics(logits, targets, trained.class_names, split)
    metrics[f"{split}/loss"] = float(torch.nn.functional.nll_loss(logits, targets)) if len(samples) else float("nan")
    out = Evaluation(split=split, metrics=metrics, probs=probs, targets=targets)
    out.intervals = bootstrap_intervals(targets.numpy(), probs.argmax(dim=1).numpy(), len(trained.class_names))
    if cal_probs is not None:  # log p / T is exactly the calibrated softmax (TTA averages logits)
        cal_logits = cal_probs.clamp_min(1e-12).log()
        cal = classification_metrics(cal_logits, targets, trained.class_names, split)
        cal[f"{split}/loss"] = float(torch.nn.functional.nll_loss(cal_logits, targets))
        out.calibrated = CalibratedScore(
            [m.calibration.temperature for m in models], trained.calibration.fitted_on, cal, cal_probs
        )
    if split == "test":
        leaks = recorded_leaks(trained, samples)
        if leaks is None:  # a run from before leaks were recorded: find them now
            training = splits.train + splits.val
            _, hashes, _ = verify_images(splits.root, training + list(samples), auto_workers(1))
            leaks = train_test_leaks(training, samples, hashes)
        out.leaks = leaks
        if leaks:
            keep = torch.tensor([s.path not in leaks for s in samples])
            out.leakage_free = classification_metrics(logits[keep], targets[keep], trained.class_names, split)
            out.leakage_free["size"] = int(keep.sum())
    return out


def compare_on_same_images(
    result: Evaluation, others: Sequence[TrainedModel], splits: DatasetSplits, tta: str, batch_size: int
) -> Comparison:
    """Model A (``result``) against model B (``others``: one run or an ensemble) on exactly the
    images A was scored on: the paired bootstrap of each difference and McNemar's test."""
    names = others[0].class_names
    if names != result.metrics["class_names"]:
        raise CheckpointError(f"compare=: the models' classes differ ({names} vs {result.metrics['class_names']})")
    samples = splits.test if result.split == "test" else splits.val
    probs_b, _ = ensemble_probs(others, splits.root, samples or [], tta, batch_size)
    return compare(
        result.targets.numpy(), result.probs.argmax(dim=1).numpy(), probs_b.argmax(dim=1).numpy(), len(names)
    )
