"""Per-image intensity normalization: what makes a model's input independent of the scanner.

A fixed mean and std (``augment.normalize=half|dataset|imagenet``) maps every image with
the same affine map, so an image that came out brighter or with less contrast reaches the
model brighter or with less contrast. The per-image choices measure each image first:

``zscore``
    z-score over the image's foreground: pixels above ``min + 0.1 * (max - min)`` of that
    image (the black background of a slice left out, as MONAI's
    ``NormalizeIntensity(nonzero=True)`` leaves out zeros, but with a threshold that moves
    with the image). Mean and std are taken over every channel of the image together, so a
    grey image stays grey. Invariant to ``a * x + b`` for any a > 0.
``percentile``
    the image's 1st and 99th percentiles mapped to 0 and 1, clipped to [0, 1] (MONAI's
    ``ScaleIntensityRangePercentiles(1, 99, 0, 1, clip=True)`` over the whole image).
    Invariant to ``a * x + b`` for any a > 0, up to the clipping of values that leave [0, 1].
``rank``
    histogram equalization: each pixel replaced by its mid-rank in the image, the share of
    the image's pixels darker than it plus half of those as bright, in (0, 1). Ranks are
    counted in 4,096 equal bins between the image's minimum and maximum. Invariant to any
    increasing change of the pixels (gamma, contrast, brightness without clipping), up to
    levels that the change merges into one bin.

All run on the batch tensor (B, C, H, W) or one image (C, H, W), with values in [0, 1], as
plain torch ops: the training batch on the device, the per-image evaluation transform and an
exported model's first layer (:func:`input_normalization`) do the same arithmetic. The
percentiles use ``torch.quantile`` when run eagerly and an equal sort-and-interpolate while
traced (``torch.jit.trace``, ONNX export), which has no quantile operator.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.transforms import v2

PER_IMAGE = ("zscore", "percentile", "rank")
FOREGROUND_FRACTION = 0.1  # of each image's range, above its minimum
PERCENTILES = (1.0, 99.0)
RANK_BINS = 4096  # fine enough that gamma 1.5 of an 8-bit image merges none of its levels


def _per_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C*H*W) view of a batch, one row per image."""
    return x.reshape(x.shape[0], -1)


def _shape(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (x.dim() - 1)))


def foreground_zscore(x: torch.Tensor, fraction: float = FOREGROUND_FRACTION, eps: float = 1e-6) -> torch.Tensor:
    """Each image minus its foreground mean, over its foreground std (see the module docstring).

    An image without a foreground (constant) is taken whole; a zero std becomes ``eps``.
    """
    one = x.dim() == 3
    x = x.unsqueeze(0) if one else x
    flat = _per_image(x)
    lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    mask = (flat > lo + fraction * (hi - lo)).to(flat.dtype)
    count = mask.sum(dim=1, keepdim=True)
    mask = torch.where(count > 0, mask, torch.ones_like(mask))
    count = mask.sum(dim=1, keepdim=True)
    mean = (flat * mask).sum(dim=1, keepdim=True) / count
    var = (((flat - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
    out = (x - _shape(mean, x)) / _shape(var.sqrt().clamp_min(eps), x)
    return out[0] if one else out


def _sorted_quantiles(flat: torch.Tensor, q: Sequence[float]) -> torch.Tensor:
    """(len(q), B) quantiles with torch.quantile's linear interpolation, from a sort (exportable)."""
    n = flat.shape[1]
    ordered = flat.sort(dim=1).values
    rows = []
    for p in q:
        pos = p * (n - 1)
        below = int(pos)
        above = min(below + 1, n - 1)
        rows.append(ordered[:, below] + (pos - below) * (ordered[:, above] - ordered[:, below]))
    return torch.stack(rows)


def percentile_scale(x: torch.Tensor, percentiles: Sequence[float] = PERCENTILES, eps: float = 1e-6) -> torch.Tensor:
    """Each image's ``percentiles`` (in %) mapped to 0 and 1, clipped to [0, 1]."""
    one = x.dim() == 3
    x = x.unsqueeze(0) if one else x
    flat = _per_image(x)
    q = [p / 100.0 for p in percentiles]
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        lo, hi = _sorted_quantiles(flat, q)
    else:
        lo, hi = torch.quantile(flat, torch.tensor(q, dtype=flat.dtype, device=flat.device), dim=1)
    out = ((x - _shape(lo, x)) / _shape((hi - lo).clamp_min(eps), x)).clamp(0.0, 1.0)
    return out[0] if one else out


def rank_equalize(x: torch.Tensor, bins: int = RANK_BINS, eps: float = 1e-6) -> torch.Tensor:
    """Each pixel's mid-rank among its image's pixels (histogram equalization), in (0, 1).

    Plain scatter, cumulative sum and gather on a (B, bins) histogram: no sort (a few
    milliseconds for a batch of 128 px images on a CPU), and it traces and exports as it is.
    """
    one = x.dim() == 3
    x = x.unsqueeze(0) if one else x
    flat = _per_image(x)
    lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    index = ((flat - lo) / (hi - lo).clamp_min(eps) * (bins - 1)).round().long().clamp(0, bins - 1)
    # (B, bins) zeros whose batch size follows the input's when traced (no Python int baked in)
    counts = torch.zeros_like(flat[:, :1]).repeat(1, bins).scatter_add(1, index, torch.ones_like(flat))
    mid = counts.cumsum(dim=1) - 0.5 * counts
    out = (mid.gather(1, index) / flat.shape[1]).view_as(x)
    return out[0] if one else out


_STEPS = {"zscore": foreground_zscore, "percentile": percentile_scale, "rank": rank_equalize}


class PerImageNormalize(nn.Module):
    """``zscore``, ``percentile`` or ``rank`` of each image (a torchvision transform or a batch module)."""

    def __init__(self, kind: str):
        super().__init__()
        if kind not in PER_IMAGE:
            raise ValueError(f"unknown per-image normalization {kind!r}: expected one of {'|'.join(PER_IMAGE)}")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _STEPS[self.kind](x)

    def extra_repr(self) -> str:
        return self.kind


def per_image_steps(kind: str) -> list[nn.Module]:
    """The per-image step that comes before the fixed mean/std, or none for the fixed kinds."""
    return [PerImageNormalize(kind)] if kind in PER_IMAGE else []


def input_normalization(kind: str, mean: Sequence[float], std: Sequence[float]) -> nn.Sequential:
    """[0, 1] images (B, C, H, W) to the model's input: the per-image step of ``kind`` (if
    any), then ``(x - mean) / std``. Put it in front of the model to export one graph that
    takes [0, 1] pixels (``nn.Sequential(input_normalization(...), model)``)."""
    return nn.Sequential(*per_image_steps(kind), v2.Normalize(list(mean), list(std)))
