"""Predictions for images outside any dataset (``launch/predict.py``): one typed row per image,
from one run or the mean probabilities of several, with optional Grad-CAM overlays; the CSV
and the printed table."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from brainmri.data.scan import load_image
from brainmri.evaluation.trained import TrainedModel, predict_probs
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


def predict_images(
    models: Sequence[TrainedModel], paths: Sequence[Path], batch_size: int, tta: str, cam_dir: Optional[Path] = None
) -> list[Prediction]:
    """Every image's prediction (the members' mean probability), in ``paths`` order; with
    ``cam_dir``, the first model's Grad-CAM overlay of each image is written there."""
    trained = models[0]
    transforms = [m.transform() for m in models]
    device = next(trained.model.parameters()).device
    names = trained.class_names
    rows: list[Prediction] = []
    used: set[str] = set()
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        images = [load_image(p, trained.channels) for p in batch]
        x = torch.stack([transforms[0](im) for im in images])
        probs = predict_probs(trained, x, tta)
        for member, transform in zip(models[1:], transforms[1:]):  # each member sees the images as it was trained
            member_x = torch.stack([transform(load_image(p, member.channels)) for p in batch])
            probs = probs + predict_probs(member, member_x, tta)
        probs = probs / len(models)
        preds = probs.argmax(dim=1)
        maps = cam_lib.grad_cam(trained.model, x.to(device), preds.tolist()) if cam_dir is not None else None
        for i, (path, image) in enumerate(zip(batch, images)):
            rows.append(Prediction(path, names[int(preds[i])], float(probs[i, preds[i]]), [float(p) for p in probs[i]]))
            if maps is not None:
                cam_dir.mkdir(parents=True, exist_ok=True)
                stem = path.stem if path.stem not in used else f"{path.parent.name}_{path.stem}"
                used.add(stem)
                overlay = cam_lib.overlay(np.asarray(image.convert("RGB")), maps[i])
                Image.fromarray(overlay).save(cam_dir / f"{stem}_cam.png")
    return rows
