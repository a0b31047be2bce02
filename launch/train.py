"""Train a brain-MRI tumour classifier.

    accelerate launch launch/train.py recipe=resnet18_512 data.root=/data/brain-tumor-mri
    python launch/train.py recipe=demo                  # one process, bundled demo data
    python launch/train.py --dry-run recipe=cnn3_256    # resolved config + model summary

Every ``key=value`` overrides the recipe (see recipes/ and brainmri/config.py).
Exit codes: 0 done, 2 bad input (one-line message on stderr).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from brainmri.errors import BrainMRIError  # noqa: E402

RECIPES = REPO / "recipes"


def default_cache_dir(environ) -> Path:
    """Node-local scratch for the image cache: the job's tmp dir, TMPDIR, else ~/.cache."""
    for var in ("SLURM_TMPDIR", "TMPDIR"):
        if environ.get(var):
            return Path(environ[var]) / "brainmri-cache"
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "brainmri"


def run(args: Sequence[str], dry_run: bool = False, stop_event: Optional[threading.Event] = None) -> int:
    """Build the config, then dry-run or train; the SLURM job (launch/cluster.py) calls this too."""
    from brainmri import config as config_lib
    from brainmri.console import print_config, print_model_summary, print_results, setup_logging

    cfg = config_lib.load_config(args, RECIPES)
    if cfg.data.cache_dir is None:
        cfg.data.cache_dir = str(default_cache_dir(os.environ))
    if dry_run:
        from brainmri.models import build_model, count_parameters

        model = build_model(cfg.model, cfg.in_chans, cfg.data.image_size)
        print_config(config_lib.to_yaml(cfg))
        print_model_summary(cfg.model.name, count_parameters(model), cfg.in_chans, cfg.data.image_size)
        return 0
    from brainmri.engine import Trainer, distributed_state

    is_main = distributed_state().is_main_process
    setup_logging(is_main)
    if is_main:
        print_config(config_lib.to_yaml(cfg))
    from brainmri.tracking import resolve_mode

    wandb_mode = resolve_mode(cfg.tracking.wandb, os.environ)
    trainer = Trainer(cfg, show_progress=sys.stderr.isatty(), wandb_mode=wandb_mode, stop_event=stop_event)
    results = trainer.fit()
    if is_main:
        print_results(results)
    return 0


def main(argv: Sequence[str], stop_event: Optional[threading.Event] = None) -> int:
    dry_run = "--dry-run" in argv
    args = [a for a in argv if a != "--dry-run"]
    unknown_flags = [a for a in args if a.startswith("-")]
    try:
        if unknown_flags:
            raise BrainMRIError(f"unknown option {unknown_flags[0]} (options: --dry-run; everything else is key=value)")
        return run(args, dry_run, stop_event)
    except BrainMRIError as e:
        # Every rank fails alike; one line from the first is enough.
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
