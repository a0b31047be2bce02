"""The thin submitit layer shared by launch/submit.py and launch/sweep.py.

A SLURM job runs ``TrainJob``: one task per GPU (or per CPU process), each exporting the
torch.distributed environment and running the same entry point as ``launch/train.py``
in-process. On USR2 (time limit or preemption) or SIGTERM, every task sets a flag; the
training loop shares it with a collective so all ranks stop at the same step, then global
rank 0 hands over to submitit, which calls ``TrainJob.checkpoint`` and requeues the job.
The requeued job runs with ``resume=auto`` and continues from the newest complete epoch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import submitit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from brainmri.config import Config, SlurmConfig  # noqa: E402

log = logging.getLogger(__name__)


class TrainJob(submitit.helpers.Checkpointable):
    """``launch/train.py <args>`` as a checkpointable submitit job."""

    def __init__(self, args: Sequence[str], max_requeues: int, requeues: int = 0):
        self.args = list(args)
        self.max_requeues = max_requeues
        self.requeues = requeues

    def __call__(self) -> dict:
        from launch import train

        env = submitit.JobEnvironment()
        dist = submitit.helpers.TorchDistributedEnvironment()
        dist.export(set_cuda_visible_devices=False)  # Accelerate picks the GPU from LOCAL_RANK
        stop = threading.Event()
        received: list[int] = []
        submitit_handler = signal.getsignal(signal.SIGUSR2)

        def request_stop(signum: int, frame: Any) -> None:
            received.append(signum)
            stop.set()

        signal.signal(signal.SIGUSR2, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        print(
            f"[brainmri] job {env.job_id} task {dist.rank}/{dist.world_size} on {env.hostname} "
            f"(master {dist.master_addr}:{dist.master_port}), attempt {self.requeues + 1}",
            flush=True,
        )
        from brainmri.engine import TrainingInterrupted

        try:
            code = train.main([*self.args, "resume=auto"], stop_event=stop)
        except TrainingInterrupted:
            if dist.rank == 0 and signal.SIGUSR2 in received and callable(submitit_handler):
                # submitit's handler calls self.checkpoint(), requeues and exits.
                submitit_handler(signal.SIGUSR2, None)
            if dist.rank != 0 and signal.SIGUSR2 in received:
                # Rank 0 is requeueing the job; SLURM's SIGTERM then ends this task at once.
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                time.sleep(60)
            raise
        if code != 0:
            raise RuntimeError(f"launch/train.py exited with code {code}; see the job's stderr log")
        output_dir = next(a.split("=", 1)[1] for a in self.args if a.startswith("output_dir="))
        results = Path(output_dir) / "results.json"
        return {"output_dir": output_dir, "results": str(results)}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Optional[submitit.helpers.DelayedSubmission]:
        """Called by submitit on global rank 0: requeue with the same output_dir, or give up."""
        if self.requeues >= self.max_requeues:
            print(f"[brainmri] not requeued: slurm.max_requeues={self.max_requeues} reached", flush=True)
            return None
        return submitit.helpers.DelayedSubmission(TrainJob(self.args, self.max_requeues, self.requeues + 1))


def train_args(cfg_args: Sequence[str], output_dir: Path, slurm: SlurmConfig, data_workers: int) -> list[str]:
    """The overrides a job trains with: the user's, a fixed output_dir, workers from the CPUs."""
    args = [a for a in cfg_args if not a.startswith(("output_dir=", "resume=", "overwrite="))]
    args.append(f"output_dir={output_dir}")
    if data_workers < 0:
        args.append(f"data.num_workers={max(0, slurm.cpus_per_task - 1)}")
    return args


def make_executor(folder: Path, slurm: SlurmConfig, job_name: str) -> submitit.AutoExecutor:
    """A submitit executor with every ``slurm.*`` key applied."""
    # The job imports launch/ and brainmri/ from this checkout, installed or not.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    executor = submitit.AutoExecutor(folder=str(folder), cluster=slurm.cluster, slurm_max_num_timeout=slurm.max_requeues)
    params: dict[str, Any] = {
        "name": job_name,
        "timeout_min": slurm.timeout_min,
        "nodes": slurm.nodes,
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
        params["slurm_setup"] = [f"export PYTHONPATH={REPO}:${{PYTHONPATH:-}}", *slurm.setup]
        if slurm.additional:
            params["slurm_additional_parameters"] = dict(slurm.additional)
    executor.update_parameters(**params)
    return executor


def sbatch_preview(executor: submitit.AutoExecutor) -> str:
    """The sbatch script submitit would submit (its own writer; placeholder job folder)."""
    inner = executor._executor  # submitit's SlurmExecutor; no public accessor for the script
    if not hasattr(inner, "_make_submission_file_text"):
        return f"(cluster={executor.cluster}: no sbatch script, jobs run as local processes)"
    return inner._make_submission_file_text(inner._submitit_command_str, "<uid>")


def job_name(cfg: Config, suffix: str = "") -> str:
    return cfg.slurm.job_name or f"brainmri-{cfg.recipe or 'run'}{suffix}"


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


FLAGS = ("--dry-run", "--wait")


def cli(argv: Sequence[str], command: Callable[[list[str], bool, bool], int]) -> int:
    """Shared CLI shell of submit.py and sweep.py: ``--dry-run``/``--wait``, one-line errors, exit 2."""
    from brainmri.errors import BrainMRIError

    args = [a for a in argv if a not in FLAGS]
    try:
        unknown = [a for a in args if a.startswith("-")]
        if unknown:
            raise BrainMRIError(f"unknown option {unknown[0]} (options: {', '.join(FLAGS)}; everything else is key=value)")
        return command(args, "--dry-run" in argv, "--wait" in argv)
    except BrainMRIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
