"""Submit one training run to SLURM (or run it locally) through submitit.

    python launch/submit.py recipe=resnet18_512 data.root=/data/mri slurm.nodes=2 slurm.gpus_per_node=4
    python launch/submit.py recipe=demo slurm.gpus_per_node=0 slurm.tasks_per_node=2 slurm.cpus_per_task=1 --wait
    python launch/submit.py recipe=resnet18_512 data.root=... --dry-run     # sbatch script + config, nothing submitted

Every task runs launch/train.py's entry point in-process with the torch.distributed
environment exported; preempted or timed-out jobs requeue themselves and resume.
Exit codes: 0 submitted (or, with --wait, finished), 1 the job failed, 2 bad input.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import logging  # noqa: E402

import submitit  # noqa: E402

# submitit warns on every poll when the cluster has no accounting (sacct); its state still works.
logging.getLogger("submitit").setLevel(logging.ERROR)

from launch.cluster import REPO, TrainJob, cli, job_name, make_executor, sbatch_preview, sbatch_stderr, submit_error, train_args  # noqa: E402
from brainmri import config as config_lib  # noqa: E402
from brainmri.console import console, print_config  # noqa: E402
from brainmri.engine import default_output_dir  # noqa: E402
from brainmri.errors import BrainMRIError  # noqa: E402
from brainmri.rundir import check_output_dir  # noqa: E402



def submit(args: Sequence[str], dry_run: bool, wait: bool) -> int:
    cfg = config_lib.load_config(args, REPO / "recipes")
    output_dir = Path(cfg.output_dir or default_output_dir(cfg.recipe)).resolve()
    check_output_dir(output_dir, cfg.resume, cfg.overwrite)
    job_args = train_args(args, output_dir, cfg.slurm, cfg.data.num_workers)
    config_lib.load_config(job_args, REPO / "recipes")  # what the job will run must load too
    executor = make_executor(output_dir / "slurm", cfg.slurm, job_name(cfg))
    if dry_run:
        print_config(config_lib.to_yaml(config_lib.load_config(job_args, REPO / "recipes")))
        console.rule("sbatch script")
        console.print(sbatch_preview(executor), markup=False, highlight=False, soft_wrap=True)
        return 0
    try:
        with sbatch_stderr() as sbatch_lines:
            job = executor.submit(TrainJob(job_args, cfg.slurm.max_requeues))
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as e:
        raise BrainMRIError(f"sbatch refused the job: {submit_error(e, sbatch_lines)}") from None
    for line in sbatch_lines:  # warnings of a job that was accepted
        print(line, file=sys.stderr)
    console.print(f"submitted job [bold]{job.job_id}[/bold] ({cfg.slurm.cluster})")
    console.print(f"  output_dir: {output_dir}")
    console.print(f"  stdout:     {job.paths.stdout}")
    console.print(f"  stderr:     {job.paths.stderr}")
    if not wait:
        return 0
    try:
        job.results()
    except Exception:  # the job's own exception, raised again here by submitit
        console.print(f"[red]job {job.job_id} failed[/red]: {job_error(job.paths.stderr)}", soft_wrap=True)
        console.print(f"  see {job.paths.stderr}")
        return 1
    console.print(f"job {job.job_id} finished: {output_dir / 'results.json'}")
    return 0


def job_error(stderr: Path) -> str:
    """The most telling line of a failed job's log: brainmri's own error line, else the last exception."""
    try:
        lines = stderr.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    ours = [line for line in lines if line.startswith("error:")]
    exceptions = [line.split("]: ", 1)[-1] for line in lines if "Error" in line and ":" in line]
    return (ours or exceptions or ["(see log)"])[-1]


def main(argv: Sequence[str]) -> int:
    return cli(argv, submit)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
