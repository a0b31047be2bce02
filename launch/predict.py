"""Classify MRI slices with a trained model; optionally show where it looked (Grad-CAM).

    python launch/predict.py run=runs/sartaj_gpu-20261126 scans/patient7/ scan.png
    python launch/predict.py run=RUN_DIR scans/ --cam --out predictions/patient7
    python launch/predict.py checkpoint=best.safetensors scan.jpg tta=hflip
    python launch/predict.py run=runs/sweeps/demo_cv scans/       # the ensemble of a sweep's finished runs

Writes OUT/predictions.csv (file, predicted class, confidence, one probability per class;
calibrated by the run's temperature when it has one)
and prints the same as a table; with --cam, OUT/cam/<image>_cam.png overlays the Grad-CAM
heat map on each slice at its own resolution. OUT defaults to ./predictions. Several runs
(run=A,B or a sweep folder) predict as an ensemble: the mean of their probabilities.
Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import cli
from brainmri.errors import BrainMRIError

FLAGS = [cli.Flag("--cam"), cli.Flag("--out", "DIR", Path, Path("predictions"))]


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

    from brainmri.console import console

    table = Table(title=title)
    for column in ("file", "predicted", "confidence", *names):
        table.add_column(column, justify="left" if column in ("file", "predicted") else "right")
    for row in rows:
        table.add_row(str(row.path), f"[bold]{row.predicted}", f"{row.confidence:.1%}", *[f"{p:.3f}" for p in row.probs])
    console.print(table)


def command(args: cli.Args) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from brainmri import cam as cam_lib
    from brainmri import config as config_lib
    from brainmri.console import console
    from brainmri.data.datasets import load_image
    from brainmri.evaluation import find_images, load_models, predict_probs

    if not args.positional:
        raise BrainMRIError("no images given; usage: predict.py run=RUN_DIR|checkpoint=FILE IMAGE_OR_FOLDER ... [--cam] [--out DIR] [tta=hflip]")
    cfg = config_lib.load_config(args.settings, cli.RECIPES, schema=config_lib.EvalConfig)
    paths = find_images(args.positional)  # every image is checked before the model is even loaded
    models = load_models(cfg.run, cfg.checkpoint)
    trained = models[0]
    want_cam, out = args["--cam"], args["--out"]
    if want_cam and len(models) > 1:
        raise BrainMRIError("--cam shows one model's attention; give one run (not an ensemble of several)")
    if want_cam and cam_lib.target_layer(trained.model) is None:
        raise BrainMRIError(f"--cam needs a convolutional model; {trained.cfg.model.name} has none")
    out.mkdir(parents=True, exist_ok=True)
    transforms = [m.transform() for m in models]
    device = next(trained.model.parameters()).device
    names = trained.class_names
    rows = []
    cam_dir = out / "cam"
    used: set[str] = set()
    for start in range(0, len(paths), cfg.batch_size):
        batch = paths[start : start + cfg.batch_size]
        images = [load_image(p, trained.channels) for p in batch]
        x = torch.stack([transforms[0](im) for im in images])
        probs = predict_probs(trained, x, cfg.tta)
        for member, transform in zip(models[1:], transforms[1:]):  # each member sees the images as it was trained
            member_x = torch.stack([transform(load_image(p, member.channels)) for p in batch])
            probs = probs + predict_probs(member, member_x, cfg.tta)
        probs = probs / len(models)
        preds = probs.argmax(dim=1)
        maps = cam_lib.grad_cam(trained.model, x.to(device), preds.tolist()) if want_cam else None
        for i, (path, image) in enumerate(zip(batch, images)):
            rows.append(Prediction(path, names[int(preds[i])], float(probs[i, preds[i]]), [float(p) for p in probs[i]]))
            if maps is not None:
                cam_dir.mkdir(parents=True, exist_ok=True)
                stem = path.stem if path.stem not in used else f"{path.parent.name}_{path.stem}"
                used.add(stem)
                overlay = cam_lib.overlay(np.asarray(image.convert("RGB")), maps[i])
                Image.fromarray(overlay).save(cam_dir / f"{stem}_cam.png")
    csv_path = out / "predictions.csv"
    write_csv(csv_path, rows, names)
    calibrated = f", calibrated at temperature {trained.calibration.temperature:.2f}" if trained.calibration else ""
    what = f"the ensemble of {len(models)} runs" if len(models) > 1 else f"{trained.cfg.model.name} ({trained.weights}{calibrated})"
    show_table(rows, names, f"{len(rows)} image(s), {what}")
    console.print(f"wrote {csv_path}" + (f" and {len(rows)} Grad-CAM overlay(s) in {cam_dir}" if want_cam else ""))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(command, sys.argv[1:], FLAGS, positional=True))
