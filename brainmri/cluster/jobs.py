"""The thin submitit layer of launch/submit.py and launch/sweep.py: the executor, TrainJob, submission.

A SLURM job runs ``TrainJob``: one task per GPU (or per CPU process), each exporting the
torch.distributed environment and running the same entry point as ``launch/train.py``
in-process. On USR2 (time limit or preemption) or SIGTERM, every task sets a flag; the
training loop shares it with a collective so all ranks stop at the same step, then global
rank 0 hands over to submitit, which calls ``TrainJob.checkpoint`` and requeues the job.
The requeued job runs with ``resume=auto`` and continues from the newest complete epoch.

A job imports ``brainmri`` like any program run by the same interpreter: it unpickles
:class:`TrainJob` from this module and runs :func:`brainmri.training.entry.main`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import submitit

from brainmri.cluster.binding import TaskBinding, bind_task, pick_gpu, visible_gpus
from brainmri.config import SlurmConfig
from brainmri.errors import BrainMRIError


def quiet_submitit() -> None:
    """On the submitting side: submitit warns on every poll when the cluster has no
    accounting (sacct), though it still learns each job's state. Jobs keep its log lines."""
    logging.getLogger("submitit").setLevel(logging.ERROR)


class TrainJob(submitit.helpers.Checkpointable):
    """``launch/train.py <args>`` as a checkpointable submitit job (``recipes``: the folder
    ``recipe=NAME`` is read from, the submitting checkout's)."""

    def __init__(
        self,
        args: Sequence[str],
        max_requeues: int,
        requeues: int = 0,
        gpus_per_node: int = 0,
        recipes: Optional[str] = None,
    ):
        self.args = list(args)
        self.max_requeues = max_requeues
        self.requeues = requeues
        self.gpus_per_node = gpus_per_node
        self.recipes = recipes

    def __call__(self) -> dict:
        import torch

        from brainmri.training import entry
        from brainmri.training.distributed import RankLost, TrainingInterrupted

        env = submitit.JobEnvironment()
        binding = task_binding(env, self.gpus_per_node)
        os.environ.update(binding.environment())
        if binding.threads:
            torch.set_num_threads(binding.threads)  # torch read the thread count at import
        stop = threading.Event()
        received: list[int] = []
        submitit_handler = signal.getsignal(signal.SIGUSR2)

        def request_stop(signum: int, frame: Any) -> None:
            received.append(signum)
            stop.set()

        signal.signal(signal.SIGUSR2, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        print(
            f"[brainmri] job {env.job_id} {binding.describe()}, host {env.hostname}, attempt {self.requeues + 1}",
            flush=True,
        )
        output_dir = next(a.split("=", 1)[1] for a in self.args if a.startswith("output_dir="))
        try:
            code = entry.main([*self.args, "resume=auto"], Path(self.recipes or "recipes"), os.environ, stop_event=stop)
        except RankLost as e:
            # A lost rank or node is not the user's error: rank 0 requeues the job (submitit
            # counts it against slurm.max_requeues) and the next attempt resumes.
            if binding.rank != 0:
                print(f"[brainmri] {e}; rank 0 requeues the job", flush=True)
                return {"output_dir": output_dir, "lost": str(e)}
            attempt = f"requeued, attempt {self.requeues + 2}" if self.requeues < self.max_requeues else "not requeued"
            print(f"[brainmri] {e}; {attempt}", flush=True)
            if callable(submitit_handler):
                submitit_handler(signal.SIGUSR2, None)  # requeues and exits; raises past max_requeues
            raise RuntimeError(str(e)) from None
        except TrainingInterrupted as e:
            print(f"[brainmri] rank {binding.rank} on node {binding.node}: {e}", flush=True)
            if signal.SIGUSR2 not in received:
                raise  # SIGTERM alone: the job is being cancelled, not preempted
            if binding.rank == 0 and callable(submitit_handler):
                submitit_handler(signal.SIGUSR2, None)  # calls self.checkpoint(), requeues, exits
            # Every rank stopped at the same step and the checkpoint on disk is complete;
            # rank 0 requeues the whole job, so this task's part of the attempt is done.
            return {"output_dir": output_dir, "requeued": True}
        if code != 0:
            raise RuntimeError(f"launch/train.py exited with code {code}; see the job's stderr log")
        return {"output_dir": output_dir, "results": str(Path(output_dir) / "results.json")}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Optional[submitit.helpers.DelayedSubmission]:
        """Called by submitit on global rank 0: requeue with the same output_dir, or give up."""
        if self.requeues >= self.max_requeues:
            print(f"[brainmri] not requeued: slurm.max_requeues={self.max_requeues} reached", flush=True)
            return None
        return submitit.helpers.DelayedSubmission(
            TrainJob(self.args, self.max_requeues, self.requeues + 1, self.gpus_per_node, self.recipes)
        )


def task_binding(env: submitit.JobEnvironment, gpus_per_node: int) -> TaskBinding:
    """This task's binding: from SLURM's variables on a cluster, from submitit's when local."""
    if env.cluster == "slurm":
        return bind_task(os.environ, env.hostnames, gpus_per_node)
    dist = submitit.helpers.TorchDistributedEnvironment()
    gpu = None
    if gpus_per_node:
        # submitit's local executor shows every task all of the job's GPUs (its visible_gpus).
        visible = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), gpus_per_node)
        gpu = pick_gpu(dist.local_rank, dist.local_world_size, visible, gpus_per_node, env.hostname)
    return TaskBinding(
        rank=dist.rank,
        world_size=dist.world_size,
        local_rank=dist.local_rank,
        local_world_size=dist.local_world_size,
        node_rank=env.node,
        num_nodes=env.num_nodes,
        node=env.hostname,
        master_addr=dist.master_addr,
        master_port=dist.master_port,
        gpu=gpu,
        threads=None,
    )


def train_args(
    cfg_args: Sequence[str],
    output_dir: Path,
    cpus_per_task: int,
    data_workers: int,
    world_size: Optional[int] = None,
) -> tuple[list[str], int]:
    """The overrides a job trains with (the user's, a fixed output_dir, workers from the
    task's CPUs, and for an elastic job the ranks its global batch is planned for), and that
    worker count."""
    args = [a for a in cfg_args if not a.startswith(("output_dir=", "resume=", "overwrite="))]
    args.append(f"output_dir={output_dir}")
    if world_size is not None and not any(a.startswith("train.world_size=") for a in args):
        args.append(f"train.world_size={world_size}")
    workers = data_workers if data_workers >= 0 else max(0, cpus_per_task - 1)
    if data_workers < 0:
        args.append(f"data.num_workers={workers}")
    return args, workers


def make_executor(folder: Path, slurm: SlurmConfig, job_name: str) -> submitit.AutoExecutor:
    """A submitit executor with every ``slurm.*`` key applied."""
    executor = submitit.AutoExecutor(
        folder=str(folder), cluster=slurm.cluster, slurm_max_num_timeout=slurm.max_requeues
    )
    params: dict[str, Any] = {
        "name": job_name,
        "timeout_min": slurm.timeout_min,
        "nodes": slurm.max_nodes,
        "tasks_per_node": slurm.tasks,
        "cpus_per_task": slurm.cpus_per_task,
    }
    if slurm.gpus_per_node:
        params["gpus_per_node"] = slurm.gpus_per_node
    if slurm.mem_gb is not None:
        params["mem_gb"] = slurm.mem_gb
    if slurm.cluster == "slurm":
        optional = {
            "slurm_partition": slurm.partition,
            "slurm_account": slurm.account,
            "slurm_qos": slurm.qos,
            "slurm_constraint": slurm.constraint,
        }
        params.update({k: v for k, v in optional.items() if v})
        params["slurm_array_parallelism"] = slurm.array_parallelism
        params["slurm_setup"] = list(slurm.setup)
        additional = dict(slurm.additional)
        if slurm.elastic:
            params.update(elastic_parameters(slurm))
            additional["nodes"] = f"{slurm.min_nodes}-{slurm.max_nodes}"
        if additional:
            params["slurm_additional_parameters"] = additional
    executor.update_parameters(**params)
    return executor


def elastic_parameters(slurm: SlurmConfig) -> dict[str, Any]:
    """An elastic job's allocation and step: ``--nodes=MIN-MAX`` alone gets the most nodes
    free, but with ``--ntasks-per-node`` SLURM counts MIN x tasks and takes MIN nodes. So the
    allocation asks, per node, one task with every task's CPUs, and srun starts the tasks."""
    return {
        "tasks_per_node": None,  # submitit writes no --ntasks-per-node
        "cpus_per_task": slurm.cpus_per_task * slurm.tasks,
        "slurm_srun_args": [f"--ntasks-per-node={slurm.tasks}", f"--cpus-per-task={slurm.cpus_per_task}"],
    }


def result_tasks(slurm: SlurmConfig) -> int:
    """The tasks whose result files end a job: all of them, or for an elastic job (whose last
    attempt may have had fewer) global rank 0's, which carries the run's outcome."""
    return 1 if slurm.elastic else slurm.max_nodes * slurm.tasks


def sbatch_preview(executor: submitit.AutoExecutor) -> str:
    """The sbatch script submitit would submit (its own writer; placeholder job folder)."""
    if executor.cluster != "slurm":
        return f"(cluster={executor.cluster}: no sbatch script, jobs run as local processes)"
    # submitit has no public accessor for the script: its private writer, pinned by setup.cfg's
    # submitit bound and by tests/unit/cluster/test_jobs.py, which fails loudly if it changes.
    inner = getattr(executor, "_executor", None)
    writer = getattr(inner, "_make_submission_file_text", None)
    command = getattr(inner, "_submitit_command_str", None)
    if writer is None or command is None:
        raise BrainMRIError(
            f"submitit {submitit.__version__} no longer has the sbatch writer brainmri previews with "
            "(SlurmExecutor._make_submission_file_text); install the submitit version setup.cfg allows"
        )
    return writer(command, "<uid>")


def job_name(slurm: SlurmConfig, recipe: Optional[str], suffix: str = "") -> str:
    return slurm.job_name or f"brainmri-{recipe or 'run'}{suffix}"


def submit_jobs(executor: submitit.AutoExecutor, jobs: Sequence[TrainJob], what: str) -> list[submitit.Job]:
    """Submit ``jobs`` in one sbatch call (a job array when several); sbatch's refusal is one line."""
    try:
        with sbatch_stderr() as sbatch_lines, executor.batch():
            submitted = [executor.submit(job) for job in jobs]
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as e:
        raise BrainMRIError(f"sbatch refused the {what}: {submit_error(e, sbatch_lines)}") from None
    for line in sbatch_lines:  # warnings of a job that was accepted
        print(line, file=sys.stderr)
    return submitted


def job_error(stderr: Path) -> str:
    """The most telling line of a failed job's log: brainmri's own error line, else the last exception."""
    try:
        lines = stderr.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    ours = [line for line in lines if line.startswith("error:")]
    exceptions = [line.split("]: ", 1)[-1] for line in lines if "Error" in line and ":" in line]
    return (ours or exceptions or ["(see log)"])[-1]


@contextlib.contextmanager
def sbatch_stderr():
    """Capture what sbatch writes to stderr during submission (submitit lets it through).

    Yields a list that holds the captured lines afterwards; on success they are written
    back to stderr unchanged, on failure :func:`submit_error` folds them into one line.
    """
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.extend(tmp.read().decode(errors="replace").splitlines())


def submit_error(error: BaseException, stderr_lines: Sequence[str]) -> str:
    """sbatch's own words when it refuses a job (bad partition, account, ...), on one line."""
    text = getattr(error, "output", None) or getattr(error, "stderr", None) or str(error)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in [*stderr_lines, *str(text).splitlines()] if line.strip()]
    sbatch = [line.split("error:", 1)[-1].strip() for line in lines if line.startswith("sbatch:")]
    unique = list(dict.fromkeys(sbatch))
    return "; ".join(unique) if unique else (lines[-1] if lines else type(error).__name__)
