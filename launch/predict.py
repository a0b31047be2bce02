"""Classify MRI slices with a trained model; optionally show where it looked (Grad-CAM).

    python launch/predict.py run=runs/sartaj_gpu-20261126 scans/patient7/ scan.png
    python launch/predict.py run=RUN_DIR scans/ --cam --out predictions/patient7
    python launch/predict.py checkpoint=best.safetensors scan.jpg tta=hflip
    python launch/predict.py run=runs/sweeps/demo_cv scans/       # the ensemble of a sweep's finished runs
    python launch/predict.py checkpoint=model.onnx scans/          # an exported model (pip install "brainmri[onnx]")

Inputs: images (JPEG, PNG, BMP, TIFF), DICOM files and series folders, NIfTI volumes (axial
slices; pip install "brainmri[dicom]" / "brainmri[nifti]"). Writes OUT/predictions.csv (file,
predicted class, confidence, one probability per class; calibrated by the run's temperature
when it has one; one row per slice) and, for volumes and series, OUT/volumes.csv (the most
likely tumour class, the slice that gave it, each class's votes), and prints the same;
with --cam, OUT/cam/<image>_cam.png overlays the Grad-CAM heat map on each slice at its own
resolution. OUT defaults to ./predictions. Several runs
(run=A,B or a sweep folder) predict as an ensemble: the mean of their probabilities.
Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

from brainmri import shell
from brainmri.errors import BrainMRIError

RECIPES = shell.recipes_beside(__file__)
FLAGS = [shell.Flag("--cam"), shell.Flag("--out", "DIR", Path, Path("predictions"))]


def command(args: shell.Args) -> int:
    from brainmri import config as config_lib
    from brainmri.data.scanner import find_slices
    from brainmri.evaluation import predict as p
    from brainmri.reporting.console import console

    if not args.positional:
        raise BrainMRIError(
            "no images given; usage: predict.py run=RUN_DIR|checkpoint=FILE IMAGE_OR_FOLDER ... "
            "[--cam] [--out DIR] [tta=hflip]"
        )
    cfg = config_lib.load_config(args.settings, RECIPES, schema=config_lib.EvalConfig)
    slices = find_slices(args.positional)  # every file is read before the model is even loaded
    models = p.load_predictors(cfg.run, cfg.checkpoint)
    want_cam, out = args["--cam"], args["--out"]
    if want_cam:
        p.check_cam(models)
    out.mkdir(parents=True, exist_ok=True)
    cam_dir = out / "cam"
    rows = p.predict_images(models, slices, cfg.batch_size, cfg.tta, cam_dir if want_cam else None)
    names = models[0].class_names
    if len(models) == 1:
        console.print(f"calibration: {models[0].temperature_note()}")
    p.show_table(rows, names, f"{len(rows)} image(s), {p.describe(models)}")
    written = p.save_predictions(rows, names, out)  # with volumes.csv (and its table) for volumes and series
    overlays = f" and {len(rows)} Grad-CAM overlay(s) in {cam_dir}" if want_cam else ""
    console.print(f"wrote {', '.join(map(str, written))}{overlays}")
    return 0


if __name__ == "__main__":
    sys.exit(shell.run(command, sys.argv[1:], FLAGS, positional=True))
