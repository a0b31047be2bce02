"""Augmentation of whole uint8 batches on the training device (kornia), for the cached pipeline.

Each sample gets its own random parameters, as with the per-image torchvision presets,
and the steps follow the same order: reflect-pad + random crop, horizontal flip, affine
(nearest resampling, zero fill, as torchvision's RandomAffine), brightness (multiplicative,
torchvision's formula), then normalization. On a GPU this costs the CPU nothing; on a CPU
it runs in the training process on already-decoded pixels, which is far cheaper than
decoding JPEGs again.
"""

from __future__ import annotations

from typing import Sequence

import kornia.augmentation as K
import torch
from torch import nn

from brainmri.data.transforms import AugmentParams


class BatchAugment(nn.Module):
    """uint8 (B, C, S, S) -> normalized float (B, C, S, S); random steps only when ``train``."""

    def __init__(self, params: AugmentParams, image_size: int, mean: Sequence[float], std: Sequence[float], train: bool):
        super().__init__()
        steps: list[nn.Module] = []
        if train:
            if params.pad > 0:
                steps.append(K.RandomCrop((image_size, image_size), padding=params.pad, padding_mode="reflect"))
            if params.hflip > 0:
                steps.append(K.RandomHorizontalFlip(p=params.hflip))
            if params.translate > 0 or params.degrees > 0:
                translate = (params.translate, params.translate) if params.translate > 0 else None
                steps.append(K.RandomAffine(degrees=params.degrees, translate=translate, resample="nearest", padding_mode="zeros", p=1.0))
            if params.brightness is not None and tuple(params.brightness) != (1.0, 1.0):
                steps.append(K.ColorJitter(brightness=tuple(params.brightness), p=1.0))
        self.steps = nn.Sequential(*steps)
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if len(self.steps):
            x = self.steps(x).clamp_(0.0, 1.0)
        return (x - self.mean) / self.std
