"""The custom CNN family of the original brain-MRI study.

Each block is a 3x3 convolution (padding 1), ReLU and 2x2 max-pool; no batch norm. The
head flattens, then dropout, fc, ReLU, dropout, fc to the classes. With the study's
3x256x256 input the four published configurations have exactly 33,488 / 266,364 /
146,860 / 9,369,668 parameters. ``batch_norm`` and ``global_pool`` are extensions beyond
the study, off by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class StudyCNNSpec:
    """One published configuration: channel width per block, hidden fc width, dropout."""

    widths: tuple[int, ...]
    fc: int
    dropout: float
    input_size: int = 256


STUDY_CNNS: dict[str, StudyCNNSpec] = {
    "cnn0": StudyCNNSpec(widths=(4, 4, 4, 4), fc=32, dropout=0.3),
    "cnn1": StudyCNNSpec(widths=(4, 8, 16, 16), fc=64, dropout=0.3),
    "cnn2": StudyCNNSpec(widths=(4, 8, 16, 32, 32), fc=64, dropout=0.3),
    "cnn3": StudyCNNSpec(widths=(32, 64, 128, 256, 256), fc=512, dropout=0.5),
}


class StudyCNN(nn.Module):
    """Plain conv/ReLU/max-pool blocks and a two-layer classifier head."""

    def __init__(
        self,
        widths: Sequence[int],
        fc: int,
        num_classes: int = 4,
        in_chans: int = 3,
        dropout: float = 0.3,
        input_size: int = 256,
        batch_norm: bool = False,
        global_pool: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for width in widths:
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        if global_pool:
            self.pool: nn.Module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            flat = channels
        else:
            # Flatten fixes the input size: the fc layer is sized for it.
            side = input_size // (2 ** len(widths))
            if side < 1:
                raise ValueError(f"input_size {input_size} is too small for {len(widths)} pooling blocks")
            self.pool = nn.Flatten()
            flat = channels * side * side
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(flat, fc),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, num_classes),
        )
        self.input_size = None if global_pool else input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))

    def cam_layer(self) -> nn.Module:
        """The output of the last conv block (conv, ReLU, pool): where Grad-CAM looks.

        Not the conv itself: the in-place ReLU after it would rewrite the activations
        Grad-CAM keeps."""
        return self.features[-1]
