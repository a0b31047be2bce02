"""Submit one training run to SLURM (or run it locally) through submitit.

    python launch/submit.py recipe=resnet18_512 data.root=/data/mri slurm.nodes=2 slurm.gpus_per_node=4
    python launch/submit.py recipe=demo slurm.nodes=2 slurm.tasks_per_node=1 slurm.gpus_per_node=0 --wait
    python launch/submit.py recipe=resnet18_512 data.root=... --dry-run     # check, ranks, sbatch script; no job

The request is checked against the partition's nodes first (a request no node can run is
a one-line error). Every task runs launch/train.py's entry point in-process with the
torch.distributed environment exported; preempted or timed-out jobs requeue themselves
and resume. --wait follows the job's state and pending reason until it ends.
Exit codes: 0 submitted (or, with --wait, finished), 1 the job failed or cannot start, 2 bad input.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from rich.table import Table

from brainmri import config as config_lib
from brainmri import shell
from brainmri.cluster.binding import rank_plan
from brainmri.cluster.jobs import (
    TrainJob,
    job_name,
    make_executor,
    quiet_submitit,
    result_tasks,
    sbatch_preview,
    submit_jobs,
    train_args,
)
from brainmri.cluster.partition import check_partition
from brainmri.cluster.waiting import Watch, wait_jobs
from brainmri.config import SlurmConfig
from brainmri.reporting.console import console, print_config
from brainmri.rundir import check_output_dir, default_run_dir

RECIPES = shell.recipes_beside(__file__)
FLAGS = [shell.Flag("--dry-run"), shell.Flag("--wait")]


def show_rank_plan(slurm: SlurmConfig) -> None:
    """What each task will do, worked out by the same code the tasks run (brainmri/cluster/binding.py)."""
    table = Table(title=f"{slurm.nodes} node(s) x {slurm.tasks} task(s); port = 20000 + job id % 12000")
    for column in ("rank", "node", "local rank", "GPU", "device", "threads", "master"):
        table.add_column(column)
    for b in rank_plan(slurm):
        table.add_row(
            str(b.rank), b.node, str(b.local_rank), b.gpu or "-", b.device, str(b.threads or "-"), b.master_addr
        )
    console.print(table)


def submit(args: shell.Args) -> int:
    quiet_submitit()
    # No machine defaults here: the node-local cache folder is the compute node's to choose.
    cfg = config_lib.load_config(args.settings, RECIPES)
    output_dir = Path(cfg.output_dir or default_run_dir(cfg.recipe)).resolve()
    check_output_dir(output_dir, cfg.resume, cfg.overwrite)
    partition = check_partition(cfg.slurm)
    job_args, workers = train_args(
        args.settings, output_dir, cfg.slurm.cpus_per_task, cfg.data.num_workers, cfg.slurm.planned_world
    )
    executor = make_executor(output_dir / "slurm", cfg.slurm, job_name(cfg.slurm, cfg.recipe))
    if args["--dry-run"]:
        job_cfg = dataclasses.replace(
            cfg, output_dir=str(output_dir), data=dataclasses.replace(cfg.data, num_workers=workers)
        )
        print_config(config_lib.to_yaml(job_cfg))
        console.rule("check")
        console.print(f"{partition.describe()}: the request fits" if partition else "not checked against sinfo")
        show_rank_plan(cfg.slurm)
        console.rule("sbatch script")
        console.print(sbatch_preview(executor), markup=False, highlight=False, soft_wrap=True)
        return 0
    (job,) = submit_jobs(
        executor,
        [TrainJob(job_args, cfg.slurm.max_requeues, gpus_per_node=cfg.slurm.gpus_per_node, recipes=str(RECIPES))],
        "job",
    )
    console.print(f"submitted job [bold]{job.job_id}[/bold] ({cfg.slurm.cluster})")
    console.print(f"  output_dir: {output_dir}")
    console.print(f"  stdout:     {job.paths.stdout}")
    console.print(f"  stderr:     {job.paths.stderr}")
    if not args["--wait"]:
        return 0
    (outcome,) = wait_jobs([Watch(job, f"job {job.job_id}", result_tasks(cfg.slurm))], cfg.slurm.cluster)
    if not outcome.ok:
        return 1
    console.print(f"job {job.job_id} finished: {output_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(shell.run(submit, sys.argv[1:], FLAGS))
