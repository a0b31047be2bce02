"""Predictions for images outside any dataset (``launch/predict.py``): one typed row per image,
from one run, the mean probabilities of several, or an exported ONNX model, with optional
Grad-CAM overlays; the CSV and the printed table."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from brainmri.data.scan import load_image
from brainmri.errors import BrainMRIError, CheckpointError
from brainmri.evaluation.export import OnnxModel, load_onnx
from brainmri.evaluation.trained import TrainedModel, load_models, predict_probs
from brainmri.reporting import cam as cam_lib


@dataclass(frozen=True)
class Prediction:
    """One image's row of predictions.csv and of the printed table."""

    path: Path
    predicted: str
    confidence: float
    probs: list[float]


def write_csv(path: Path, rows: list[Prediction], names: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "predicted", "confidence", *[f"p_{n}" for n in names]])
        for row in rows:
            writer.writerow([str(row.path), row.predicted, f"{row.confidence:.4f}", *[f"{p:.4f}" for p in row.probs]])


def show_table(rows: list[Prediction], names: list[str], title: str) -> None:
    from rich.table import Table

    from brainmri.reporting.console import console

    table = Table(title=title)
    for column in ("file", "predicted", "confidence", *names):
        table.add_column(column, justify="left" if column in ("file", "predicted") else "right")
    for row in rows:
        table.add_row(
            str(row.path), f"[bold]{row.predicted}", f"{row.confidence:.1%}", *[f"{p:.3f}" for p in row.probs]
        )
    console.print(table)


Predictor = Union[TrainedModel, OnnxModel]


def member_probs(model: Predictor, x: torch.Tensor, tta: str) -> torch.Tensor:
    """Calibrated probabilities of a normalized batch, from PyTorch weights or an ONNX model."""
    return model.probabilities(x, tta) if isinstance(model, OnnxModel) else predict_probs(model, x, tta)


def load_predictors(run: Optional[str], checkpoint: Optional[str]) -> list[Predictor]:
    """``load_models``, or the exported model when ``checkpoint`` is an ``.onnx`` file."""
    if checkpoint is not None and Path(checkpoint).suffix == ".onnx":
        if run is not None:
            raise CheckpointError("an .onnx model stands alone: give checkpoint=MODEL.onnx without run=")
        return [load_onnx(Path(checkpoint))]
    return list(load_models(run, checkpoint))


def check_cam(models: Sequence[Predictor]) -> None:
    """Grad-CAM needs one PyTorch model with a convolution to look at."""
    if len(models) > 1:
        raise BrainMRIError("--cam shows one model's attention; give one run (not an ensemble of several)")
    if isinstance(models[0], OnnxModel):
        raise BrainMRIError("--cam needs the PyTorch weights (checkpoint=best.safetensors), not an ONNX model")
    if cam_lib.target_layer(models[0].model) is None:
        raise BrainMRIError(f"--cam needs a convolutional model; {models[0].name} has none")


def describe(models: Sequence[Predictor]) -> str:
    """What predicted, for the table's title."""
    if len(models) > 1:
        return f"the ensemble of {len(models)} runs"
    model = models[0]
    calibrated = f", calibrated at temperature {model.temperature:.2f}" if model.temperature is not None else ""
    return f"{model.name} ({model.weights}{calibrated})"


def predict_images(
    models: Sequence[Predictor], paths: Sequence[Path], batch_size: int, tta: str, cam_dir: Optional[Path] = None
) -> list[Prediction]:
    """Every image's prediction (the members' mean probability), in ``paths`` order; with
    ``cam_dir``, the first model's Grad-CAM overlay of each image is written there."""
    trained = models[0]
    transforms = [m.transform() for m in models]
    names = trained.class_names
    rows: list[Prediction] = []
    used: set[str] = set()
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        images = [load_image(p, trained.channels) for p in batch]
        x = torch.stack([transforms[0](im) for im in images])
        probs = member_probs(trained, x, tta)
        for member, transform in zip(models[1:], transforms[1:]):  # each member sees the images as it was trained
            member_x = torch.stack([transform(load_image(p, member.channels)) for p in batch])
            probs = probs + member_probs(member, member_x, tta)
        probs = probs / len(models)
        preds = probs.argmax(dim=1)
        maps = None
        if cam_dir is not None:
            maps = cam_lib.grad_cam(trained.model, x.to(next(trained.model.parameters()).device), preds.tolist())
        for i, (path, image) in enumerate(zip(batch, images)):
            rows.append(Prediction(path, names[int(preds[i])], float(probs[i, preds[i]]), [float(p) for p in probs[i]]))
            if maps is not None:
                cam_dir.mkdir(parents=True, exist_ok=True)
                stem = path.stem if path.stem not in used else f"{path.parent.name}_{path.stem}"
                used.add(stem)
                overlay = cam_lib.overlay(np.asarray(image.convert("RGB")), maps[i])
                Image.fromarray(overlay).save(cam_dir / f"{stem}_cam.png")
    return rows
