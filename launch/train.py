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
from typing import Optional, Sequence

import cli
from brainmri import config as config_lib
from brainmri.config import Config
from brainmri.console import print_config, print_model_summary, print_results, setup_logging

FLAGS = [cli.Flag("--dry-run")]


def dry_run(cfg: Config) -> int:
    """The resolved config and the model's size, without reading any data."""
    import dataclasses

    from brainmri.console import console
    from brainmri.errors import ConfigError
    from brainmri.models import build_model, check_pretrained_source, count_parameters

    try:
        source = check_pretrained_source(cfg.model)
        weights = f"pretrained, from {source}" if source else "pretrained" if cfg.model.pretrained else "random init"
    except ConfigError as e:
        weights = f"[red]training would stop here: {e}[/red]"
    # The architecture only: a dry run downloads nothing.
    model = build_model(dataclasses.replace(cfg.model, pretrained=False, pretrained_file=None), cfg.in_chans, cfg.data.image_size)
    print_config(config_lib.to_yaml(cfg))
    print_model_summary(cfg.model.name, count_parameters(model), cfg.in_chans, cfg.data.image_size)
    console.print(f"weights: {weights}", soft_wrap=True)
    return 0


def train(cfg: Config, stop_event: Optional[threading.Event] = None) -> int:
    from brainmri.distributed import distributed_state
    from brainmri.engine import Trainer
    from brainmri.tracking import resolve_mode

    is_main = distributed_state(cfg.train.collective_timeout).is_main_process
    setup_logging(is_main)
    if is_main:
        print_config(config_lib.to_yaml(cfg))
    trainer = Trainer(cfg, show_progress=sys.stderr.isatty(), wandb_mode=resolve_mode(cfg.tracking.wandb, os.environ), stop_event=stop_event)
    results = trainer.fit()
    if is_main:
        print_results(results.to_json())
    return 0


def main(argv: Sequence[str], stop_event: Optional[threading.Event] = None) -> int:
    """The entry point of this script and of every SLURM task (launch/cluster.py)."""

    def command(args: cli.Args) -> int:
        cfg = cli.load_run_config(args.settings)
        return dry_run(cfg) if args["--dry-run"] else train(cfg, stop_event)

    # Every rank fails alike; one line from the first is enough.
    return cli.run(command, argv, FLAGS, quiet=os.environ.get("RANK", "0") != "0")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
