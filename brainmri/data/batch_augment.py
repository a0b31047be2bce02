"""Augmentation of whole uint8 batches on the training device, for the cached pipeline.

Each sample gets its own random parameters, as with the per-image torchvision presets, and
the steps follow the same order and formulas: reflect-pad + random crop, horizontal flip,
affine (rotation about the centre and whole-pixel translation, nearest resampling, zero
fill, as torchvision's RandomAffine), brightness (multiplicative, clamped), then
normalization: the per-image step of ``augment.normalize`` if it has one
(:mod:`brainmri.data.intensity`), then the fixed mean and std.

Why not kornia.augmentation: measured on an H200 (ResNet18, 224 px, batch 64, bf16), its
per-batch parameter sampling and host-device traffic cost as much time as the training
step itself (train/model ratio 0.49). Here every step is one or two batched tensor ops with
parameters drawn on the device, so nothing waits for the host and the work queues behind
the model's kernels; on a CPU it is cheaper than decoding again by two orders of magnitude.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from brainmri.data.intensity import per_image_steps
from brainmri.data.transforms import AugmentParams


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (hi - lo) + lo


def random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad by ``pad`` then crop back to the input size at a random offset per sample.

    On a GPU one gather does the whole batch with no host round trip; on a CPU, plain
    slices of the (uint8) batch are several times cheaper than that gather.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    if x.device.type == "cpu":
        return torch.stack(
            [padded[i, :, y : y + h, z : z + w] for i, (y, z) in enumerate(zip(oy[:, 0].tolist(), ox[:, 0].tolist()))]
        )
    rows = (oy + torch.arange(h, device=x.device)).unsqueeze(2)  # (B, H, 1)
    cols = (ox + torch.arange(w, device=x.device)).unsqueeze(1)  # (B, 1, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # gather (B, H, W, C)


def random_hflip(x: torch.Tensor, p: float) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < p
    if x.device.type == "cpu":  # flip only the chosen samples (no host sync to avoid on a CPU)
        chosen = flip.nonzero().squeeze(1)
        x = x.clone()
        x[chosen] = x[chosen].flip(-1)
        return x
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_affine(x: torch.Tensor, degrees: float, translate: float) -> torch.Tensor:
    """Rotation in [-degrees, degrees] and translation up to ``translate`` of the size (whole
    pixels, as torchvision rounds them), nearest neighbour, zeros outside."""
    b, _, h, w = x.shape
    angle = _uniform(b, -degrees, degrees, x.device) * (math.pi / 180)
    tx = torch.round(_uniform(b, -translate * w, translate * w, x.device))
    ty = torch.round(_uniform(b, -translate * h, translate * h, x.device))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # grid_sample maps each output pixel to its source: the inverse of "rotate, then shift",
    # in normalized coordinates ([-1, 1] across each axis; the images are square).
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos, sin
    theta[:, 1, 0], theta[:, 1, 1] = -sin, cos
    shift = torch.stack([2 * tx / w, 2 * ty / h], dim=1)  # (B, 2)
    theta[:, :, 2] = -(theta[:, :, :2] @ shift.unsqueeze(2)).squeeze(2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def random_brightness(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return (x * _uniform(x.shape[0], lo, hi, x.device).view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


class BatchAugment(nn.Module):
    """uint8 (B, C, S, S) -> normalized float (B, C, S, S); random steps only when ``train``."""

    def __init__(
        self, params: AugmentParams, image_size: int, mean: Sequence[float], std: Sequence[float], train: bool
    ):
        super().__init__()
        self.params = params
        self.train_mode = train
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)
        self.per_image = nn.Sequential(*per_image_steps(params.normalize))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.params
        x = images
        # Crop and flip move pixels without changing them: on a CPU they run on uint8, a
        # quarter of the bytes of float32 (CUDA's reflection pad wants floats).
        if x.device.type != "cpu":
            x = x.float()
        if self.train_mode:
            if p.pad > 0:
                x = random_crop(x, p.pad)
            if p.hflip > 0:
                x = random_hflip(x, p.hflip)
        x = x.float() if x.dtype == torch.uint8 else (x.clone() if x is images else x)  # never edit the caller's batch
        if self.train_mode and (p.translate > 0 or p.degrees > 0):
            x = random_affine(x, p.degrees, p.translate)
        if self.train_mode and p.brightness is not None and tuple(p.brightness) != (1.0, 1.0):
            x = random_brightness(x.div_(255.0), *p.brightness).mul_(255.0)
        if len(self.per_image):
            return (self.per_image(x.div_(255.0)) - self.mean) / self.std
        # (x / 255 - mean) / std as one multiply and one subtract
        return x.mul_(1.0 / (255.0 * self.std)).sub_(self.mean / self.std)
