"""Training and evaluation transforms (torchvision.transforms.v2), from named presets.

``resnet_study``: the ResNet18 study at 512: resize, reflect-pad 8 and random-crop back,
horizontal flip, normalize with mean = std = 0.5 (values in [-1, 1]).
``cnn_study``: the CNN study at 256: resize, horizontal flip, translate up to 10%, rotate up
to 10 degrees, brightness x0.8..1.2, normalize with the training split's own mean and std.
Evaluation is always resize and normalize, nothing random.

``augment.normalize`` picks the normalization: a fixed mean and std (``half``, ``imagenet``,
or the training split's own, ``dataset``), or a per-image step first (``zscore``,
``percentile``; :mod:`brainmri.data.intensity`) followed by a fixed mean and std that puts
its output where the model expects it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from brainmri.config import AugmentConfig
from brainmri.data.intensity import per_image_steps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentParams:
    """A preset with every override applied: exactly what the training transform does."""

    pad: int
    hflip: float
    translate: float
    degrees: float
    brightness: Optional[tuple[float, float]]
    normalize: str
    # intensity and resolution (the batched path only; brainmri.data.batch_augment): off in every preset
    gamma: Optional[tuple[float, float]] = None
    contrast: Optional[tuple[float, float]] = None
    bias_field: float = 0.0
    noise: float = 0.0
    blur: Optional[tuple[float, float]] = None
    downsample: float = 1.0
    intensity_p: float = 1.0  # probability that each of those steps applies to a sample


PRESETS: dict[str, AugmentParams] = {
    "resnet_study": AugmentParams(pad=8, hflip=0.5, translate=0.0, degrees=0.0, brightness=None, normalize="half"),
    "cnn_study": AugmentParams(
        pad=0, hflip=0.5, translate=0.1, degrees=10.0, brightness=(0.8, 1.2), normalize="dataset"
    ),
    "none": AugmentParams(pad=0, hflip=0.0, translate=0.0, degrees=0.0, brightness=None, normalize="half"),
}


def resolve_augment(cfg: AugmentConfig) -> AugmentParams:
    """The preset named by ``cfg.preset`` with the explicitly set fields replacing its values."""
    base = asdict(PRESETS[cfg.preset])
    for key in base:
        value = getattr(cfg, key)
        if value is not None:
            base[key] = tuple(value) if key in ("brightness", "gamma", "contrast", "blur") else value
    return AugmentParams(**base)


def fixed_normalization(kind: str, channels: int) -> Optional[tuple[tuple[float, ...], tuple[float, ...]]]:
    """Mean and std for the dataset-independent choices; None for "dataset".

    After the per-image steps: a z-score is already centred (mean 0, std 1), and percentile
    scaling's [0, 1] and rank's (0, 1) become [-1, 1] as with ``half``."""
    if kind == "zscore":
        return (0.0,) * channels, (1.0,) * channels
    if kind in ("half", "percentile", "rank"):
        return (0.5,) * channels, (0.5,) * channels
    if kind == "imagenet":
        if channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return None


def _to_tensor(image_size: int) -> list:
    return [v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True)]


def build_train_transform(
    params: AugmentParams, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    steps = _to_tensor(image_size)
    if params.pad > 0:
        steps += [v2.Pad(params.pad, padding_mode="reflect"), v2.RandomCrop(image_size)]
    if params.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=params.hflip))
    if params.translate > 0 or params.degrees > 0:
        translate = (params.translate, params.translate) if params.translate > 0 else None
        steps.append(v2.RandomAffine(degrees=params.degrees, translate=translate))
    if params.brightness is not None and params.brightness != (1.0, 1.0):
        steps.append(v2.ColorJitter(brightness=params.brightness))
    return v2.Compose(steps + _normalize(params.normalize, mean, std))


def _normalize(kind: Optional[str], mean: Sequence[float], std: Sequence[float]) -> list:
    """[0, 1] floats, the per-image step of ``kind`` if it has one, then the fixed mean and std."""
    steps = [v2.ToDtype(torch.float32, scale=True)] + (per_image_steps(kind) if kind else [])
    return steps + [v2.Normalize(list(mean), list(std))]


def build_eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], normalize: Optional[str] = None
) -> v2.Compose:
    """Resize and normalize; ``normalize`` is the run's ``augment.normalize`` (None: fixed mean/std only)."""
    return v2.Compose(_to_tensor(image_size) + _normalize(normalize, mean, std))


def resized_transform(image_size: int) -> v2.Compose:
    """Resize only, uint8: the evaluation transform's first half (the rest is :func:`to_float`
    and the normalization), for images decoded once and changed in memory before scoring."""
    return v2.Compose(_to_tensor(image_size))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 to [0, 1] floats exactly as the evaluation transform does it."""
    return v2.ToDtype(torch.float32, scale=True)(images)


def unnormalized_transform(image_size: int) -> v2.Compose:
    """Resize only, values in [0, 1]: what dataset statistics are measured on."""
    return v2.Compose(_to_tensor(image_size) + [v2.ToDtype(torch.float32, scale=True)])


def compute_mean_std(dataset, batch_size: int = 32, workers: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a dataset whose items are [0, 1] tensors of equal size."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    total = sum_ = sum_sq = None
    for images, _ in loader:
        x = images.double()
        s, sq, n = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), x.numel() / x.shape[1]
        sum_ = s if sum_ is None else sum_ + s
        sum_sq = sq if sum_sq is None else sum_sq + sq
        total = n if total is None else total + n
    if total is None:
        raise ValueError("cannot compute statistics of an empty dataset")
    mean = sum_ / total
    std = (sum_sq / total - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)
