"""The Dataset of the ``pil`` pipeline: each image decoded on demand and transformed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from torch.utils.data import Dataset

from brainmri.data.samples import Sample
from brainmri.data.scan import load_image


class ImageDataset(Dataset):
    """Samples decoded on demand with PIL and passed through ``transform``."""

    def __init__(self, root: Path, samples: Sequence[Sample], channels: int, transform: Optional[Callable] = None):
        self.root = root
        self.samples = list(samples)
        self.channels = channels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = load_image(self.root / sample.path, self.channels)
        return (self.transform(image) if self.transform else image), sample.label
