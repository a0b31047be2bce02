"""Export a trained model to ONNX, checked against PyTorch before it is written.

    python launch/export.py run=runs/demo-20261126                 # writes RUN_DIR/best.onnx
    python launch/export.py checkpoint=best.safetensors data.root=/data/sartaj --out model.onnx

Dynamic batch, opset 18; the preprocessing (size, channels, mean/std), class names, TTA and
temperature are in the model's metadata_props. On up to 32 of the run's test images ONNX
Runtime must match PyTorch within 1e-4 and give the same class, or nothing is written.
Needs pip install "brainmri[onnx]". Exit codes: 0 written, 2 bad input or a failed check.
"""

from __future__ import annotations

import sys
from pathlib import Path

from brainmri import shell

RECIPES = shell.recipes_beside(__file__)
FLAGS = [shell.Flag("--out", "FILE", Path, None)]


def command(args: shell.Args) -> int:
    from brainmri import config as config_lib
    from brainmri.evaluation.export import PARITY_TOLERANCE, export_run
    from brainmri.reporting.console import console

    cfg = config_lib.load_config(args.settings, RECIPES, schema=config_lib.EvalConfig)
    done = export_run(cfg.run, cfg.checkpoint, args["--out"], cfg.data.root, cfg.tta)
    p = done.parity
    console.print(
        f"wrote {done.path} (opset {done.opset}, {done.seconds:.1f} s); parity on {p.images} test images: "
        f"max |p_onnx - p_torch| {p.max_abs_diff:.1e} <= {PARITY_TOLERANCE:.0e}, the same class for every image"
    )
    return 0


if __name__ == "__main__":
    sys.exit(shell.run(command, sys.argv[1:], FLAGS))
