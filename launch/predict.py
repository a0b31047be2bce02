"""Classify MRI slices with a trained model; optionally show where it looked (Grad-CAM).

    python launch/predict.py run=runs/sartaj_gpu-20261126 scans/patient7/ scan.png
    python launch/predict.py run=RUN_DIR scans/ --cam --out predictions/patient7
    python launch/predict.py checkpoint=best.safetensors scan.jpg tta=hflip
    python launch/predict.py run=runs/sweeps/demo_cv scans/       # the ensemble of a sweep's finished runs
    python launch/predict.py checkpoint=model.onnx scans/          # an exported model (pip install "brainmri[onnx]")

Writes OUT/predictions.csv (file, predicted class, confidence, one probability per class;
calibrated by the run's temperature when it has one)
and prints the same as a table; with --cam, OUT/cam/<image>_cam.png overlays the Grad-CAM
heat map on each slice at its own resolution. OUT defaults to ./predictions. Several runs
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
    from brainmri.evaluation.predict import check_cam, describe, load_predictors, predict_images, show_table, write_csv
    from brainmri.evaluation.trained import find_images
    from brainmri.reporting.console import console

    if not args.positional:
        raise BrainMRIError(
            "no images given; usage: predict.py run=RUN_DIR|checkpoint=FILE IMAGE_OR_FOLDER ... "
            "[--cam] [--out DIR] [tta=hflip]"
        )
    cfg = config_lib.load_config(args.settings, RECIPES, schema=config_lib.EvalConfig)
    paths = find_images(args.positional)  # every image is checked before the model is even loaded
    models = load_predictors(cfg.run, cfg.checkpoint)
    want_cam, out = args["--cam"], args["--out"]
    if want_cam:
        check_cam(models)
    out.mkdir(parents=True, exist_ok=True)
    cam_dir = out / "cam"
    rows = predict_images(models, paths, cfg.batch_size, cfg.tta, cam_dir if want_cam else None)
    csv_path = out / "predictions.csv"
    write_csv(csv_path, rows, models[0].class_names)
    if len(models) == 1:
        console.print(f"calibration: {models[0].temperature_note()}")
    show_table(rows, models[0].class_names, f"{len(rows)} image(s), {describe(models)}")
    console.print(f"wrote {csv_path}" + (f" and {len(rows)} Grad-CAM overlay(s) in {cam_dir}" if want_cam else ""))
    return 0


if __name__ == "__main__":
    sys.exit(shell.run(command, sys.argv[1:], FLAGS, positional=True))
