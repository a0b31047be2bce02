"""brainmri: brain-MRI tumour classifiers trained with Accelerate, on one CPU or many GPUs."""

__version__ = "0.1.0"
