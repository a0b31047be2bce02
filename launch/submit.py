"""Submit one training run to SLURM (or run it locally) through submitit.

    python launch/submit.py recipe=resnet18_512 data.root=/data/mri slurm.nodes=2 slurm.gpus_per_node=4
    python launch/submit.py recipe=demo slurm.gpus_per_node=0 slurm.tasks_per_node=2 slurm.cpus_per_task=1 --wait
    python launch/submit.py recipe=resnet18_512 data.root=... --dry-run     # sbatch script + config, nothing submitted

Every task runs launch/train.py's entry point in-process with the torch.distributed
environment exported; preempted or timed-out jobs requeue themselves and resume.
Exit codes: 0 submitted (or, with --wait, finished), 1 the job failed, 2 bad input.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import cli
from brainmri import config as config_lib
from brainmri.console import console, print_config
from brainmri.rundir import check_output_dir, default_run_dir
from cluster import TrainJob, job_error, job_name, make_executor, quiet_submitit, sbatch_preview, submit_jobs, train_args

FLAGS = [cli.Flag("--dry-run"), cli.Flag("--wait")]


def submit(args: cli.Args) -> int:
    quiet_submitit()
    # No machine defaults here: the node-local cache folder is the compute node's to choose.
    cfg = config_lib.load_config(args.settings, cli.RECIPES)
    output_dir = Path(cfg.output_dir or default_run_dir(cfg.recipe)).resolve()
    check_output_dir(output_dir, cfg.resume, cfg.overwrite)
    job_args, workers = train_args(args.settings, output_dir, cfg.slurm.cpus_per_task, cfg.data.num_workers)
    executor = make_executor(output_dir / "slurm", cfg.slurm, job_name(cfg.slurm, cfg.recipe))
    if args["--dry-run"]:
        job_cfg = dataclasses.replace(cfg, output_dir=str(output_dir), data=dataclasses.replace(cfg.data, num_workers=workers))
        print_config(config_lib.to_yaml(job_cfg))
        console.rule("sbatch script")
        console.print(sbatch_preview(executor), markup=False, highlight=False, soft_wrap=True)
        return 0
    (job,) = submit_jobs(executor, [TrainJob(job_args, cfg.slurm.max_requeues)], "job")
    console.print(f"submitted job [bold]{job.job_id}[/bold] ({cfg.slurm.cluster})")
    console.print(f"  output_dir: {output_dir}")
    console.print(f"  stdout:     {job.paths.stdout}")
    console.print(f"  stderr:     {job.paths.stderr}")
    if not args["--wait"]:
        return 0
    try:
        job.results()
    except Exception:  # the job's own exception, raised again here by submitit
        console.print(f"[red]job {job.job_id} failed[/red]: {job_error(job.paths.stderr)}", soft_wrap=True)
        console.print(f"  see {job.paths.stderr}")
        return 1
    console.print(f"job {job.job_id} finished: {output_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(submit, sys.argv[1:], FLAGS))
