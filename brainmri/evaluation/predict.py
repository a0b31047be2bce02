"""Predictions for images outside any dataset (``launch/predict.py``): one typed row per slice
(of an image, a DICOM file or series, a NIfTI volume), from one run, the mean probabilities of
several, or an exported ONNX model, with optional Grad-CAM overlays; a summary per volume;
the CSVs and the printed tables."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from brainmri.data.scanner import Slice
from brainmri.errors import BrainMRIError, CheckpointError
from brainmri.evaluation.export import OnnxModel, load_onnx
from brainmri.evaluation.trained import TrainedModel, load_models, predict_probs
from brainmri.reporting import cam as cam_lib


@dataclass(frozen=True)
class Prediction:
    """One slice's row of predictions.csv and of the printed table."""

    file: str  # the slice's name: its path, with #frameK or #zKKK inside a multi-slice file
    predicted: str
    confidence: float
    probs: list[float]
    volume: Optional[str] = None  # the NIfTI volume, DICOM series or multi-frame file it belongs to


NO_TUMOUR = "notumor"


@dataclass(frozen=True)
class VolumeSummary:
    """A volume's verdict from its slices: the most likely tumour class (the highest tumour
    probability of any slice), the slice that gave it, and each class's votes (slices where it
    was the most likely class)."""

    volume: str
    slices: int
    tumour: str
    probability: float
    slice: str
    votes: dict[str, int]


def summarize_volumes(rows: Sequence[Prediction], names: Sequence[str]) -> list[VolumeSummary]:
    """One summary per volume, in the order the volumes first appear."""
    tumours = [k for k, name in enumerate(names) if name != NO_TUMOUR] or list(range(len(names)))
    out = []
    for volume in dict.fromkeys(r.volume for r in rows if r.volume is not None):
        members = [r for r in rows if r.volume == volume]
        best = max(members, key=lambda r: max(r.probs[k] for k in tumours))
        k = max(tumours, key=lambda j: best.probs[j])
        votes = {name: sum(r.predicted == name for r in members) for name in names}
        out.append(VolumeSummary(volume, len(members), names[k], best.probs[k], best.file, votes))
    return out


def write_csv(path: Path, rows: list[Prediction], names: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "predicted", "confidence", *[f"p_{n}" for n in names]])
        for row in rows:
            writer.writerow([row.file, row.predicted, f"{row.confidence:.4f}", *[f"{p:.4f}" for p in row.probs]])


def write_volumes_csv(path: Path, summaries: list[VolumeSummary], names: list[str]) -> None:
    """``volumes.csv``: volume, slices, most likely tumour class, its probability, the slice, votes per class."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["volume", "slices", "tumour", "probability", "slice", *[f"votes_{n}" for n in names]])
        for s in summaries:
            writer.writerow(
                [s.volume, s.slices, s.tumour, f"{s.probability:.4f}", s.slice, *[s.votes[n] for n in names]]
            )


def save_predictions(rows: list[Prediction], names: list[str], out: Path) -> list[Path]:
    """``predictions.csv``, and for volumes and series ``volumes.csv`` (with its table printed)."""
    written = [out / "predictions.csv"]
    write_csv(written[0], rows, names)
    volumes = summarize_volumes(rows, names)
    if volumes:
        show_volumes(volumes, names)
        written.append(out / "volumes.csv")
        write_volumes_csv(written[-1], volumes, names)
    return written


def show_table(rows: list[Prediction], names: list[str], title: str) -> None:
    from rich.table import Table

    from brainmri.reporting.console import console

    table = Table(title=title)
    for column in ("file", "predicted", "confidence", *names):
        table.add_column(column, justify="left" if column in ("file", "predicted") else "right")
    for row in rows:
        table.add_row(row.file, f"[bold]{row.predicted}", f"{row.confidence:.1%}", *[f"{p:.3f}" for p in row.probs])
    console.print(table)


def show_volumes(summaries: list[VolumeSummary], names: list[str]) -> None:
    from rich.table import Table

    from brainmri.reporting.console import console

    table = Table(title=f"{len(summaries)} volume(s): the most likely tumour class over their slices")
    for column in ("volume", "slices", "tumour", "p", "from slice", *[f"votes {n}" for n in names]):
        table.add_column(column, overflow="fold")
    for s in summaries:
        table.add_row(
            s.volume, str(s.slices), f"[bold]{s.tumour}", f"{s.probability:.3f}", s.slice, *map(str, s.votes.values())
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
    models: Sequence[Predictor], slices: Sequence[Slice], batch_size: int, tta: str, cam_dir: Optional[Path] = None
) -> list[Prediction]:
    """Every slice's prediction (the members' mean probability), in ``slices`` order; with
    ``cam_dir``, the first model's Grad-CAM overlay of each slice is written there."""
    trained = models[0]
    transforms = [m.transform() for m in models]
    names = trained.class_names
    rows: list[Prediction] = []
    used: set[str] = set()
    for start in range(0, len(slices), batch_size):
        batch = slices[start : start + batch_size]
        images = [s.load(trained.channels) for s in batch]
        x = torch.stack([transforms[0](im) for im in images])
        probs = member_probs(trained, x, tta)
        for member, transform in zip(models[1:], transforms[1:]):  # each member sees the images as it was trained
            member_x = torch.stack([transform(s.load(member.channels)) for s in batch])
            probs = probs + member_probs(member, member_x, tta)
        probs = probs / len(models)
        preds = probs.argmax(dim=1)
        maps = None
        if cam_dir is not None:
            maps = cam_lib.grad_cam(trained.model, x.to(next(trained.model.parameters()).device), preds.tolist())
        for i, (item, image) in enumerate(zip(batch, images)):
            k = int(preds[i])
            rows.append(Prediction(item.name, names[k], float(probs[i, k]), [float(p) for p in probs[i]], item.volume))
            if maps is not None:
                cam_dir.mkdir(parents=True, exist_ok=True)
                stem = item.stem if item.stem not in used else f"{item.path.parent.name}_{item.stem}"
                used.add(stem)
                overlay = cam_lib.overlay(np.asarray(image.convert("RGB")), maps[i])
                Image.fromarray(overlay).save(cam_dir / f"{stem}_cam.png")
    return rows
