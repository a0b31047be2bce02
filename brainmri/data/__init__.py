"""Datasets and transforms."""

from brainmri.data.datasets import CLASS_NAMES, DatasetSplits, ImageDataset, Sample, resolve_root, scan_dataset

__all__ = ["CLASS_NAMES", "DatasetSplits", "ImageDataset", "Sample", "resolve_root", "scan_dataset"]
