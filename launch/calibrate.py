"""Give a refit run (trained on all of Training, no validation) the temperature of its cross-validation.

    python launch/sweep.py sweep=masoud_cpu30_cv data.root=/data/masoud output_dir=runs/masoud_cpu30_cv --wait
    python launch/calibrate.py runs/masoud_cpu30 runs/masoud_cpu30_cv [--setting NAME]
    python launch/evaluate.py run=runs/masoud_cpu30     # ECE before and after the temperature

Fits one temperature on the out-of-fold predictions of the sweep's best setting (or --setting):
every Training image scored by the fold that did not train on it, the same recipe as the refit
(resolution, augmentation, model, epochs and TTA are checked). Writes RUN_DIR/calibration.json,
which evaluate.py and predict.py then apply. Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

from brainmri import shell
from brainmri.errors import BrainMRIError

FLAGS = [shell.Flag("--setting", "NAME", str, None)]


def command(args: shell.Args) -> int:
    from brainmri.evaluation.refit import calibrate_refit
    from brainmri.reporting.console import console

    if args.settings or len(args.positional) != 2:
        raise BrainMRIError("usage: python launch/calibrate.py RUN_DIR CV_SWEEP_DIR [--setting NAME]")
    run_dir, sweep_dir = map(Path, args.positional)
    c = calibrate_refit(run_dir, sweep_dir, args["--setting"])
    console.print(
        f"temperature [bold]{c.temperature:.3f}[/bold] from {c.size} out-of-fold predictions of {c.source}: "
        f"their NLL {c.nll_before:.3f} -> {c.nll_after:.3f}; wrote {run_dir / 'calibration.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(shell.run(command, sys.argv[1:], FLAGS, positional=True))
