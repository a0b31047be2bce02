"""Run a sweep as ONE SLURM job array, and show how it is doing.

    python launch/sweep.py sweep=cnn_lr data.root=/data/sartaj      # submit (key=value apply to every trial)
    python launch/sweep.py sweep=demo slurm.cpus_per_task=1 --wait  # block until every trial ends
    python launch/sweep.py sweep=cnn_lr --dry-run                   # trials + sbatch script, nothing submitted
    python launch/sweep.py status runs/sweeps/cnn_lr                # table sorted by the sweep's metric

Re-running the same command skips finished and running trials and resubmits failed or
unfinished ones (they resume from their last checkpoint). Exit codes: 0 ok, 1 a trial
failed (with --wait), 2 bad input.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from brainmri import shell
from brainmri.cluster.sweep_jobs import run_sweep
from brainmri.errors import BrainMRIError
from brainmri.evaluation.sweep_report import show_status

RECIPES = shell.recipes_beside(__file__)
FLAGS = [shell.Flag("--dry-run"), shell.Flag("--wait")]


def command(args: shell.Args) -> int:
    if args.positional[:1] == ["status"]:
        if len(args.positional) != 2:
            raise BrainMRIError("usage: python launch/sweep.py status SWEEP_DIR")
        return show_status(Path(args.positional[1]), os.environ)
    if args.positional:
        raise BrainMRIError(f"expected key=value, got '{args.positional[0]}' (or: sweep.py status SWEEP_DIR)")
    submitted = run_sweep(args.settings, RECIPES, args["--dry-run"], args["--wait"])
    if submitted is None or not submitted.waited:
        return 0
    show_status(submitted.sweep_dir, os.environ)
    return 0 if submitted.ok else 1


if __name__ == "__main__":
    sys.exit(shell.run(command, sys.argv[1:], FLAGS, positional=True))
