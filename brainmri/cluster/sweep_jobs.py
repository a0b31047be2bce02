"""Submitting a sweep as one SLURM job array, and each trial's state (from its run directory
first, then squeue). ``launch/sweep.py`` runs it; the trials' table and the CV report are
:mod:`brainmri.evaluation.sweep_report`'s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from rich.table import Table

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
from brainmri.cluster.partition import check_partition, max_array_size
from brainmri.cluster.sweep import TrialRecord, check_cv, expand_trials, load_sweep, read_manifest, write_manifest
from brainmri.cluster.waiting import ACTIVE as QUEUE_ACTIVE
from brainmri.cluster.waiting import QueueEntry, Watch, blocking_reason, last_event, read_queue, wait_jobs
from brainmri.config import SlurmConfig, load_config, parse_overrides
from brainmri.errors import ConfigError
from brainmri.reporting.console import console
from brainmri.rundir import default_sweep_dir

ACTIVE = ("pending", "running")


@dataclass(frozen=True)
class SweepRun:
    """What one submission did: how many trials went out, and (with waiting) whether all finished."""

    sweep_dir: Path
    submitted: int
    waited: bool
    ok: bool


def refresh(record: TrialRecord, queue: Optional[dict[str, QueueEntry]]) -> None:
    """A trial's state from its run directory first (results.json is the truth), then squeue.

    A job squeue no longer lists, or lists as ended, without results is a failed trial (a
    re-run resubmits it); ``queue`` None (squeue did not answer) changes nothing."""
    if (Path(record.output_dir) / "results.json").exists():
        record.state, record.reason = "completed", ""
        return
    if not record.job_id or queue is None:
        return
    entry = queue.get(record.job_id)
    if entry is None:
        record.state, record.reason = "failed", record.reason or "left the queue without a result"
    elif entry.state in QUEUE_ACTIVE:
        record.state = "running" if entry.state in ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING") else "pending"
        why = blocking_reason(entry.reason) if record.state == "pending" else None
        record.reason = (
            f"{entry.reason}: cannot start ({why})" if why else entry.reason if entry.reason != "None" else ""
        )
        event = last_event(Path(record.stdout)) if record.stdout else None
        if event:  # an earlier attempt ended on a lost rank or a stop: say so beside the state
            record.reason = f"{event}; {record.reason}" if record.reason else event
    else:
        record.state, record.reason = "failed", record.reason or f"ended {entry.state} without a result"


def trial_configs(spec, trials, common: list[str], sweep_dir: Path, recipes: Path) -> list[tuple[list[str], object]]:
    """Every trial's override list and validated config; the first bad one stops everything."""
    out = []
    for trial in trials:
        args = [f"recipe={spec.recipe}", *trial.args(), *common]
        if not any(a.startswith("tracking.group=") for a in common):
            args.append(f"tracking.group={spec.name}")
        try:
            cfg = load_config([*args, f"output_dir={sweep_dir / trial.name}"], recipes)
        except ConfigError as e:
            raise ConfigError(f"sweep {spec.name}, trial {trial.name}: {e}") from None
        out.append((args, cfg))
    return out


def trial_records(trials, known: dict[str, TrialRecord], sweep_dir: Path, cluster: str) -> list[TrialRecord]:
    """Each trial's record: as the manifest knew it, with its state brought up to date."""
    queue = read_queue() if known and cluster == "slurm" else None
    records = []
    for trial in trials:
        record = known.get(trial.name) or TrialRecord(
            trial.index, trial.name, trial.overrides, str(sweep_dir / trial.name), base=trial.base, fold=trial.fold
        )
        refresh(record, queue)
        records.append(record)
    return records


def show_plan(title: str, records: list[TrialRecord], varying: list[str]) -> None:
    table = Table(title=title)
    for column in ("trial", *varying, "state"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(r.name, *[str(r.overrides.get(k)) for k in varying], r.state if r.state != "new" else "to submit")
    console.print(table)


def run_sweep(settings: list[str], recipes: Path, dry_run: bool, wait: bool) -> Optional[SweepRun]:
    """Submit every unfinished trial of ``sweep=NAME`` as one job array, or several past the
    cluster's ``MaxArraySize`` (``--dry-run``: show the plan and the sbatch script); with
    ``wait``, follow them to their end. None when nothing was submitted."""
    quiet_submitit()
    spec, source, sweep_dir, common = sweep_request(settings, recipes)
    trials = expand_trials(spec)
    configs = trial_configs(spec, trials, common, sweep_dir, recipes)
    slurm = configs[0][1].slurm
    varying = list(spec.grid) + list(spec.random_axes)

    manifest_path = sweep_dir / "manifest.json"
    known = {t["name"]: TrialRecord(**t) for t in read_manifest(manifest_path).get("trials", [])}
    records = trial_records(trials, known, sweep_dir, slurm.cluster)
    todo = [(r, a, c) for r, (a, c) in zip(records, configs) if r.state not in ("completed", *ACTIVE)]
    what = (
        f"{len(trials) // spec.cv} setting(s) x {spec.cv} folds = {len(trials)} runs"
        if spec.cv
        else f"{len(trials)} trial(s)"
    )
    show_plan(f"sweep {spec.name}: {what} of recipe {spec.recipe}", records, varying)
    extra = {"recipe": spec.recipe, "metric": spec.metric, "varying": varying, "cli": common, "cv": spec.cv}
    if not todo:
        if known:
            write_manifest(manifest_path, spec.name, str(source), records, extra)
        done = sum(r.state == "completed" for r in records)
        console.print(f"nothing to submit: {done} completed, {len(records) - done} pending or running")
        return None

    partition = check_partition(slurm)
    executor = make_executor(sweep_dir / "slurm", slurm, job_name(slurm, spec.recipe, "-sweep"))
    if dry_run:
        console.print(f"{partition.describe()}: every trial fits" if partition else "not checked against sinfo")
        console.rule("sbatch script (one array job per MaxArraySize trials)")
        console.print(sbatch_preview(executor), markup=False, highlight=False, soft_wrap=True)
        console.print(f"would submit {len(todo)} trial(s) into {sweep_dir}")
        return None

    sweep_dir.mkdir(parents=True, exist_ok=True)
    limit = max_array_size() if slurm.cluster == "slurm" else len(todo)
    jobs = submit_in_arrays(
        executor,
        todo,
        slurm,
        recipes,
        limit,
        lambda: write_manifest(manifest_path, spec.name, str(source), records, extra),
    )
    arrays = list(dict.fromkeys(str(job.job_id).split("_")[0] for job in jobs))
    how = (
        f"array job [bold]{arrays[0]}[/bold]"
        if len(arrays) == 1
        else (f"{len(arrays)} array jobs [bold]{', '.join(arrays)}[/bold] (the cluster's MaxArraySize is {limit})")
    )
    console.print(f"submitted {len(jobs)} trial(s) as {how} into {sweep_dir}")
    console.print(f"  status: python launch/sweep.py status {sweep_dir}")
    if not wait:
        return SweepRun(sweep_dir, len(jobs), waited=False, ok=True)
    ok = wait_trials([record for record, _, _ in todo], jobs, slurm)
    write_manifest(manifest_path, spec.name, str(source), records, extra)
    return SweepRun(sweep_dir, len(jobs), waited=True, ok=ok)


def sweep_request(settings: list[str], recipes: Path) -> tuple:
    """(the sweep file's spec, its path, the sweep folder, the settings every trial gets) of
    ``sweep=NAME [cv=K] [output_dir=DIR] key=value ...``."""
    overrides = parse_overrides(settings)
    name = overrides.pop("sweep", None)
    if not name:
        raise ConfigError("give the sweep: sweep=NAME (a file in recipes/sweeps/) or sweep=path/to/sweep.yaml")
    spec, source = load_sweep(name, recipes / "sweeps")
    cv = overrides.pop("cv", None)
    if cv is not None:
        spec.cv = check_cv(cv, "the command line")
    sweep_dir = Path(overrides.pop("output_dir", None) or default_sweep_dir(spec.name)).resolve()
    return spec, source, sweep_dir, [f"{k}={v}" for k, v in overrides.items()]


def wait_trials(records: list[TrialRecord], jobs: list, slurm: SlurmConfig) -> bool:
    """Follow every submitted trial to its end and record how it ended; True if all finished."""
    watches = [
        Watch(job, f"trial {record.name} (job {job.job_id})", result_tasks(slurm)) for record, job in zip(records, jobs)
    ]
    outcomes = wait_jobs(watches, slurm.cluster)
    for record, outcome in zip(records, outcomes):
        record.state = "completed" if outcome.ok else "failed"
        record.reason = "" if outcome.ok else outcome.message
    return all(o.ok for o in outcomes)


def submit_in_arrays(
    executor, todo: list, slurm: SlurmConfig, recipes: Path, limit: int, save_manifest: Callable[[], None]
) -> list:
    """One job array per ``limit`` trials (the cluster's ``MaxArraySize``: sbatch refuses a
    larger array, submitit#1624), the manifest saved after each: a refusal part-way leaves every
    submitted trial recorded, and a re-run submits only the rest."""
    jobs = []
    for start in range(0, len(todo), limit):
        part = todo[start : start + limit]
        trial_jobs = [
            TrainJob(
                train_args(
                    trial_args, Path(record.output_dir), slurm.cpus_per_task, cfg.data.num_workers, slurm.planned_world
                )[0],
                slurm.max_requeues,
                gpus_per_node=slurm.gpus_per_node,
                recipes=str(recipes),
            )
            for record, trial_args, cfg in part
        ]
        submitted = submit_jobs(executor, trial_jobs, "sweep")
        for (record, _, _), job in zip(part, submitted):
            record.job_id, record.state = str(job.job_id), "submitted"
            record.stdout, record.stderr = str(job.paths.stdout), str(job.paths.stderr)
        save_manifest()
        jobs += submitted
    return jobs
