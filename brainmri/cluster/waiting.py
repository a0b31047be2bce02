"""Waiting on submitted SLURM jobs without waiting blind.

submitit learns a job's fate from its result file or from ``sacct``; without accounting, a
job that left the queue without a result (cancelled before it started, a failed node) is
never noticed, and a job that cannot start (``PartitionConfig``) is waited on forever. This
module watches ``squeue`` itself: it says each job's state and pending reason as it
changes, ends the wait on a reason that cannot clear by itself, and gives up on a job that
left the queue without writing its result.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import submitit
from submitit.core.utils import JobPaths

from brainmri.cluster.jobs import job_error
from brainmri.reporting.console import console

ACTIVE = {
    "PENDING",
    "CONFIGURING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "RUNNING",
    "COMPLETING",
    "STAGE_OUT",
    "SIGNALING",
    "STOPPED",
}
# Pending reasons no amount of waiting clears: the request exceeds what the partition,
# account or QOS allows, or it names something that does not exist.
BLOCKING = {
    "PartitionConfig": "the request exceeds what partition's nodes offer",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionTimeLimit": "a longer time limit than the partition allows",
    "BadConstraints": "no node has the requested features",
    "DependencyNeverSatisfied": "a job it depends on failed",
    "InvalidAccount": "the account does not exist",
    "InvalidQOS": "the QOS does not exist",
}
BLOCKING_PATTERNS = [
    (re.compile(r"^AssocGrp\w*Limit$"), "an association limit of the account"),
    (re.compile(r"^QOSMax\w*$"), "a QOS maximum"),
]


@dataclass(frozen=True)
class QueueEntry:
    """One job (or array task) as squeue lists it."""

    job_id: str
    state: str
    reason: str
    nodes: str

    def describe(self) -> str:
        reason = f" ({self.reason})" if self.reason not in ("", "None") else ""
        where = f" on {self.nodes}" if self.state == "RUNNING" and self.nodes else ""
        return f"{self.state}{reason}{where}"


def parse_squeue(text: str) -> dict[str, QueueEntry]:
    entries = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) == 4:
            entries[fields[0]] = QueueEntry(*fields)
    return entries


def read_queue() -> Optional[dict[str, QueueEntry]]:
    """Every job squeue knows (array tasks one by one, finished ones while SLURM keeps them);
    None when squeue cannot answer, which is not the same as an empty queue."""
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-r", "--states=all", "-o", "%i|%T|%r|%N"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_squeue(proc.stdout) if proc.returncode == 0 else None


def down_nodes() -> set[str]:
    """Nodes that are down, drained or failing (they clear only when an admin acts)."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {
        name
        for name, state in (line.split()[:2] for line in proc.stdout.splitlines() if len(line.split()) >= 2)
        if state.rstrip("*~#!%$@^-").startswith(("down", "drain", "drng", "fail"))
    }


def expand_hostlist(nodelist: str) -> list[str]:
    """SLURM's node-list syntax (``node[1-3,5],gpu07``) as names, by SLURM's own parser."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.split() if out.returncode == 0 else []


def blocking_reason(reason: str, down: Callable[[], set[str]] = down_nodes) -> Optional[str]:
    """Why a pending job can never start, or None when its reason may clear by itself."""
    head = reason.split(",")[0].strip()
    if head in BLOCKING:
        return BLOCKING[head]
    for pattern, why in BLOCKING_PATTERNS:
        if pattern.match(head):
            return why
    if head == "ReqNodeNotAvail":
        match = re.search(r"UnavailableNodes:(\S+)", reason)
        unavailable = set(expand_hostlist(match.group(1))) if match else set()
        dead = sorted(unavailable & down())
        if dead:
            return f"required node(s) {','.join(dead)} are down or drained"
    return None


@dataclass
class Watch:
    """One submitted job as the wait follows it."""

    job: submitit.Job
    label: str
    num_tasks: int  # the tasks whose result files end the job (brainmri.cluster.jobs.result_tasks)
    seen: str = ""  # the last state line shown
    started: bool = False
    event: Optional[str] = None  # the last attempt-ending line of its log already shown
    gone_since: Optional[float] = None
    outcome: Optional["Outcome"] = None


@dataclass(frozen=True)
class Outcome:
    job_id: str
    label: str
    ok: bool
    message: str
    results: list = field(default_factory=list)


EVENTS = ("lost at step", "stop requested at step")


def last_event(log: Path) -> Optional[str]:
    """The job's own word on why its last attempt ended (a lost rank, a stop), from its log:
    ``rank 1 on node2 lost at step 412 (...); noticed by rank 0; requeued, attempt 2``."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    events = [line.removeprefix("[brainmri] ") for line in lines if line.startswith("[brainmri]")]
    events = [line for line in events if any(e in line for e in EVENTS)]
    return events[-1] if events else None


def results_written(watch: Watch) -> bool:
    folder, job_id = watch.job.paths.folder, str(watch.job.job_id)
    return all(JobPaths(folder, job_id, task).result_pickle.exists() for task in range(watch.num_tasks))


def collect(watch: Watch) -> Outcome:
    """The job's own results, or its error line, once every task has written its result."""
    job_id = str(watch.job.job_id)
    try:
        results = [watch.job.task(task).result() for task in range(watch.num_tasks)]
        return Outcome(job_id, watch.label, True, "finished", results)
    except Exception:  # the job's own exception, raised again here by submitit
        return Outcome(
            job_id, watch.label, False, f"failed: {job_error(watch.job.paths.stderr)}; see {watch.job.paths.stderr}"
        )


def step(
    watch: Watch,
    queue: Optional[dict[str, QueueEntry]],
    now: float,
    grace: float,
    blocking: Callable[[str], Optional[str]],
) -> Optional[Outcome]:
    """Look at one job once; its outcome when its wait is over."""
    job_id = str(watch.job.job_id)
    entry = queue.get(job_id) if queue is not None else None
    if entry is not None and entry.state in ACTIVE:
        watch.gone_since = None
        watch.started = watch.started or entry.state == "RUNNING"
        if entry.state == "PENDING" and (why := blocking(entry.reason)):
            return Outcome(
                job_id,
                watch.label,
                False,
                f"cannot start: {entry.reason} ({why}); it is still queued: scancel {job_id}",
            )
        return None
    if results_written(watch):
        return collect(watch)
    if queue is None:
        return None  # squeue did not answer: no conclusion
    watch.gone_since = watch.gone_since or now
    if now - watch.gone_since < grace:
        return None  # result files may trail the job's end on a network filesystem
    when = "after it started" if watch.started else "before it started"
    if entry is None:
        what = f"left the queue without a result ({when}: cancelled, or its node failed)"
    else:
        what = f"ended {entry.state} {when}, without a result"
    log = Path(watch.job.paths.stderr)
    return Outcome(job_id, watch.label, False, f"{what}; see {log}" if log.exists() else what)


def wait_for(
    watches: Sequence[Watch],
    poll: float = 2.0,
    grace: float = 10.0,
    blocking: Callable[[str], Optional[str]] = blocking_reason,
) -> list[Outcome]:
    """Follow every job to its end; each state change is one printed line, and on a
    terminal a status line shows where things stand."""
    with console.status("waiting for SLURM") as status:
        while True:
            queue = read_queue()
            now = time.time()
            for watch in watches:
                if watch.outcome is not None:
                    continue
                entry = queue.get(str(watch.job.job_id)) if queue else None
                line = entry.describe() if entry else ""
                if line and line != watch.seen:
                    console.print(f"{watch.label}: {line}", highlight=False)
                    watch.seen = line
                event = last_event(Path(watch.job.paths.stdout)) if watch.started else None
                if event and event != watch.event:  # an attempt ended: a lost rank, a stop
                    console.print(f"{watch.label}: {event}", highlight=False, soft_wrap=True)
                    watch.event = event
                watch.outcome = step(watch, queue, now, grace, blocking)
                if watch.outcome is not None:
                    style = "green" if watch.outcome.ok else "red"
                    console.print(f"{watch.label}: [{style}]{watch.outcome.message}[/{style}]", soft_wrap=True)
            pending = [w for w in watches if w.outcome is None]
            if not pending:
                return [w.outcome for w in watches]
            status.update(summary(pending, queue))
            time.sleep(poll)


def wait_jobs(watches: Sequence[Watch], cluster: str) -> list[Outcome]:
    """:func:`wait_for` on SLURM; for submitit's local executors, their own wait."""
    if cluster == "slurm":
        return wait_for(watches)
    outcomes = [collect(w) for w in watches]  # local processes: submitit itself knows when they end
    for watch, outcome in zip(watches, outcomes):
        console.print(f"{watch.label}: {outcome.message}", highlight=False, soft_wrap=True)
    return outcomes


def summary(pending: Sequence[Watch], queue: Optional[dict[str, QueueEntry]]) -> str:
    """The status line: how many jobs are in each state, with the pending reasons."""
    if queue is None:
        return "waiting for SLURM (squeue does not answer)"
    counts: dict[str, int] = {}
    for watch in pending:
        entry = queue.get(str(watch.job.job_id))
        key = entry.describe() if entry else "leaving the queue"
        counts[key] = counts.get(key, 0) + 1
    if len(pending) == 1:
        return f"{pending[0].label}: {next(iter(counts))}"
    return "; ".join(f"{n} {state}" for state, n in counts.items())
