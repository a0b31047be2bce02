"""Test-time augmentation: the one rule training's test phase, evaluation and prediction share."""

from __future__ import annotations

import torch
from torch import nn


def tta_logits(model: nn.Module, images: torch.Tensor, tta: str) -> torch.Tensor:
    """fp32 logits of a normalized NCHW batch; ``hflip`` averages the logits of each image and
    its mirror, so a temperature fitted on them applies unchanged."""
    logits = model(images).float()
    if tta == "hflip":
        logits = (logits + model(images.flip(-1)).float()) / 2
    return logits
