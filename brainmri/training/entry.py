"""The train command: what ``launch/train.py`` and every SLURM task (:class:`~brainmri.cluster.jobs.TrainJob`) run.

``main(argv, recipes, environ)`` parses ``key=value`` settings with the shell, then either
prints the resolved config and the model's size (``--dry-run``, no data read) or trains.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

from brainmri import config as config_lib
from brainmri import shell
from brainmri.config import Config
from brainmri.reporting.console import console, print_config, print_model_summary, print_results, setup_logging

FLAGS = [shell.Flag("--dry-run")]


def dry_run(cfg: Config) -> int:
    """The resolved config and the model's size, without reading any data."""
    from brainmri.errors import ConfigError
    from brainmri.models import build_model, check_pretrained_source, count_parameters

    try:
        source = check_pretrained_source(cfg.model)
        weights = f"pretrained, from {source}" if source else "pretrained" if cfg.model.pretrained else "random init"
    except ConfigError as e:
        weights = f"[red]training would stop here: {e}[/red]"
    # The architecture only: a dry run downloads nothing.
    model = build_model(
        dataclasses.replace(cfg.model, pretrained=False, pretrained_file=None), cfg.in_chans, cfg.data.image_size
    )
    print_config(config_lib.to_yaml(cfg))
    print_model_summary(cfg.model.name, count_parameters(model), cfg.in_chans, cfg.data.image_size)
    console.print(f"weights: {weights}", soft_wrap=True)
    return 0


def train(
    cfg: Config,
    wandb_mode: str,
    show_progress: bool,
    stop_event: Optional[threading.Event] = None,
    node: Optional[str] = None,
    nodes: Optional[int] = None,
    started: Optional[float] = None,
    slurm_seconds_left: Optional[float] = None,
) -> int:
    """Train ``cfg`` into its run directory; the main process prints the config and the results."""
    from brainmri.training.distributed import distributed_state
    from brainmri.training.engine import Trainer

    is_main = distributed_state(cfg.train.collective_timeout).is_main_process
    setup_logging(is_main)
    if is_main:
        print_config(config_lib.to_yaml(cfg))
    trainer = Trainer(
        cfg,
        show_progress=show_progress,
        wandb_mode=wandb_mode,
        stop_event=stop_event,
        node=node,
        nodes=nodes,
        started=started,
        slurm_seconds_left=slurm_seconds_left,
    )
    results = trainer.fit()
    if is_main:
        print_results(results.to_json())
    return 0


def main(
    argv: Sequence[str],
    recipes: Path,
    environ: Mapping[str, str],
    show_progress: bool = False,
    stop_event: Optional[threading.Event] = None,
) -> int:
    """Parse ``argv`` and dry-run or train; a toolkit error is one line (from rank 0 only) and exit code 2."""
    from brainmri.reporting.tracking import resolve_mode
    from brainmri.training.budget import slurm_time_left

    started = time.time()  # train.budget counts from here: start to results

    def command(args: shell.Args) -> int:
        cfg = shell.load_run_config(args.settings, recipes, environ)
        if args["--dry-run"]:
            return dry_run(cfg)
        node = environ.get("SLURMD_NODENAME")  # the heartbeat names a lost rank by its SLURM node
        nodes = int(environ.get("SLURM_JOB_NUM_NODES", "0")) or None  # an elastic attempt says how many it got
        left = slurm_time_left(environ) if cfg.train.budget == "slurm" else None
        mode = resolve_mode(cfg.tracking.wandb, environ)
        return train(cfg, mode, show_progress, stop_event, node, nodes, started, left)

    # Every rank fails alike; one line from the first is enough.
    return shell.run(command, argv, FLAGS, quiet=environ.get("RANK", "0") != "0")
