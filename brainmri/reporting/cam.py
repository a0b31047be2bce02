"""Grad-CAM: where in the slice the model looked for its decision (pytorch-grad-cam).

The original study promised tumour localisation; Grad-CAM gives it without any box labels.
The map is the last convolutional stage's activations weighted by the gradient of the
chosen class score, kept positive, scaled to [0, 1] and resized to the input image.
The layer: ``cam_layer()`` where a model defines it (the study CNNs: the last conv block),
else the last stage that timm's ``feature_info`` names (ResNet's ``layer4``), else the last
``Conv2d``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from brainmri.data.samples import Sample
from brainmri.data.scan import load_image
from brainmri.data.transforms import build_eval_transform
from brainmri.errors import ConfigError


def target_layer(model: nn.Module) -> Optional[nn.Module]:
    """The layer whose activations Grad-CAM weighs; None for models without convolutions."""
    if hasattr(model, "cam_layer"):
        return model.cam_layer()
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, (list, tuple)) else info.get_dicts()[-1]
        name = last.get("module") if isinstance(last, dict) else None
        if name:
            try:
                layer = model.get_submodule(name)
            except AttributeError:
                layer = None
            if layer is not None and any(isinstance(m, nn.Conv2d) for m in layer.modules()):
                return layer
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def grad_cam(model: nn.Module, images: torch.Tensor, classes: Optional[Sequence[int]] = None) -> np.ndarray:
    """Grad-CAM maps (B, H, W) in [0, 1] at the input's size, for ``classes`` (default: the
    predicted class of each image). ``images`` are normalized model inputs on the model's device."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = target_layer(model)
    if layer is None:
        raise ConfigError(f"Grad-CAM needs a convolutional model; {type(model).__name__} has no Conv2d layer")
    was_training = model.training
    model.eval()
    try:
        targets = [ClassifierOutputTarget(int(c)) for c in classes] if classes is not None else None
        with torch.enable_grad(), GradCAM(model=model, target_layers=[layer]) as cam:
            maps = cam(input_tensor=images.float(), targets=targets)
    finally:
        model.train(was_training)
    return np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)


def overlay(image: np.ndarray, heat: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """The map as a jet heat map over an (H, W, 3) uint8 slice; the map is resized to the slice."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if heat.shape != image.shape[:2]:
        heat = (
            np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize(image.shape[1::-1], Image.BILINEAR))
            / 255.0
        )
    return show_cam_on_image(
        image.astype(np.float32) / 255.0, heat.astype(np.float32), use_rgb=True, image_weight=image_weight
    )


@dataclass
class CamTile:
    """One explained image: the slice as seen by the model, its map, truth and prediction."""

    image: np.ndarray  # (S, S, 3) uint8, resized to the model's input
    heat: np.ndarray  # (S, S) in [0, 1]
    label: Optional[int]
    pred: int
    prob: float


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(x).float().softmax(dim=1)


def explain_samples(
    model: nn.Module,
    root: Path,
    samples: Sequence[Sample],
    channels: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    normalize: Optional[str] = None,
) -> list[CamTile]:
    """Grad-CAM of each sample for its predicted class, with the evaluation transform
    (``normalize``: the run's ``augment.normalize``)."""
    transform = build_eval_transform(image_size, mean, std, normalize)
    images = [load_image(root / s.path, channels) for s in samples]
    x = torch.stack([transform(im) for im in images]).to(device)
    probs = _predict(model, x)
    preds = probs.argmax(dim=1)
    maps = grad_cam(model, x, preds.tolist())
    tiles = []
    for i, (image, sample) in enumerate(zip(images, samples)):
        shown = np.asarray(image.convert("RGB").resize((image_size, image_size), Image.BILINEAR))
        tiles.append(CamTile(shown, maps[i], sample.label, int(preds[i]), float(probs[i, preds[i]])))
    return tiles
