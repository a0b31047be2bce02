"""The corruption family of the robustness report: what another scanner or export does to an
image, at five severities each (as ImageNet-C reports corruption robustness).

Every corruption is a deterministic function of a [0, 1] float batch (B, C, H, W) at the
model's resolution, its severity's parameter and a seeded generator (for noise), returning
[0, 1] values. They share the arithmetic of :mod:`brainmri.data.batch_augment`, so a model
can be trained on the same changes it is scored on. Nothing is read from or written to disk:
JPEG is encoded and decoded in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torchvision.io import decode_jpeg, encode_jpeg

from brainmri.data.batch_augment import contrast, down_up, gamma, gaussian_blur


def _per_batch(x: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=x.dtype)


def jpeg(x: torch.Tensor, quality: float) -> torch.Tensor:
    """Each image quantized to uint8, JPEG-encoded at ``quality`` and decoded, in memory."""
    images = [im for im in (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()]
    decoded = [decode_jpeg(data) for data in encode_jpeg(images, quality=int(quality))]
    return torch.stack(decoded).to(x.device, x.dtype) / 255.0


def noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise of ``std``, from ``generator`` (the same noise every time)."""
    drawn = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return (x + std * drawn).clamp(0.0, 1.0)


@dataclass(frozen=True)
class Corruption:
    """One kind of change: its parameter's name and value at severities 1..5."""

    name: str
    parameter: str
    levels: tuple[float, ...]
    description: str
    fn: Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]

    def apply(self, x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
        """``x`` changed at ``severity`` (1 = mildest)."""
        return self.fn(x, self.levels[severity - 1], generator)


CORRUPTIONS: tuple[Corruption, ...] = (
    Corruption(
        "gamma_up",
        "gamma",
        (0.8, 0.67, 0.57, 0.5, 0.4),
        "x ** gamma, gamma < 1: mid-tones brighter",
        lambda x, g, _: gamma(x, _per_batch(x, g)),
    ),
    Corruption(
        "gamma_down",
        "gamma",
        (1.25, 1.5, 1.75, 2.0, 2.5),
        "x ** gamma, gamma > 1: mid-tones darker",
        lambda x, g, _: gamma(x, _per_batch(x, g)),
    ),
    Corruption(
        "contrast",
        "factor",
        (0.8, 0.65, 0.5, 0.4, 0.3),
        "m + factor * (x - m), m the image's own mean: lower contrast",
        lambda x, c, _: contrast(x, _per_batch(x, c)),
    ),
    Corruption(
        "brightness",
        "shift",
        (0.05, 0.1, 0.15, 0.2, 0.3),
        "x + shift, clipped: every pixel brighter, the background too",
        lambda x, b, _: (x + b).clamp(0.0, 1.0),
    ),
    Corruption(
        "noise",
        "std",
        (0.02, 0.04, 0.06, 0.08, 0.1),
        "additive Gaussian noise of std (fixed seed), clipped",
        lambda x, s, g: noise(x, s, g),
    ),
    Corruption(
        "jpeg",
        "quality",
        (80, 60, 40, 25, 10),
        "JPEG recompression at quality, in memory",
        lambda x, q, _: jpeg(x, q),
    ),
    Corruption(
        "resolution",
        "factor",
        (1.5, 2.0, 2.5, 3.0, 4.0),
        "resampled to 1/factor of the size and back, bilinear with Gaussian anti-aliasing",
        lambda x, f, _: down_up(x, _per_batch(x, f), f),
    ),
    Corruption(
        "blur",
        "sigma",
        (0.5, 1.0, 1.5, 2.0, 3.0),
        "Gaussian blur of sigma pixels",
        lambda x, s, _: gaussian_blur(x, _per_batch(x, s), s),
    ),
)

SEVERITIES = (1, 2, 3, 4, 5)
