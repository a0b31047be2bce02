"""Run a sweep as ONE SLURM job array, and show how it is doing.

    python launch/sweep.py sweep=cnn_lr data.root=/data/sartaj      # submit (key=value apply to every trial)
    python launch/sweep.py sweep=demo slurm.cpus_per_task=1 --wait  # block until every trial ends
    python launch/sweep.py sweep=cnn_lr --dry-run                   # trials + sbatch script, nothing submitted
    python launch/sweep.py status runs/sweeps/cnn_lr                # table sorted by the sweep's metric

Re-running the same command skips finished and running trials and resubmits failed or
unfinished ones (they resume from their last checkpoint). Exit codes: 0 ok, 1 a trial
failed (with --wait), 2 bad input.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from rich.table import Table

import cli
from brainmri import cv_report
from brainmri.config import SlurmConfig, config_from_yaml, load_config, parse_overrides
from brainmri.console import console
from brainmri.errors import BrainMRIError, ConfigError
from brainmri.records import lower_is_better
from brainmri.rundir import default_sweep_dir
from brainmri.tracking import log_sweep_summary, resolve_mode
from brainmri.sweep import TrialRecord, check_cv, cv_settings, expand_trials, load_sweep, read_manifest, trial_result, write_manifest
from cluster import TrainJob, job_name, make_executor, quiet_submitit, sbatch_preview, submit_jobs, train_args
from partition import check_partition
from waiting import ACTIVE as QUEUE_ACTIVE
from waiting import QueueEntry, Watch, blocking_reason, read_queue, wait_jobs

FLAGS = [cli.Flag("--dry-run"), cli.Flag("--wait")]
ACTIVE = ("pending", "running")


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
        record.reason = f"{entry.reason}: cannot start ({why})" if why else entry.reason if entry.reason != "None" else ""
    else:
        record.state, record.reason = "failed", record.reason or f"ended {entry.state} without a result"


def trial_configs(spec, trials, common: list[str], sweep_dir: Path) -> list[tuple[list[str], object]]:
    """Every trial's override list and validated config; the first bad one stops everything."""
    out = []
    for trial in trials:
        args = [f"recipe={spec.recipe}", *trial.args(), *common]
        if not any(a.startswith("tracking.group=") for a in common):
            args.append(f"tracking.group={spec.name}")
        try:
            cfg = load_config([*args, f"output_dir={sweep_dir / trial.name}"], cli.RECIPES)
        except ConfigError as e:
            raise ConfigError(f"sweep {spec.name}, trial {trial.name}: {e}") from None
        out.append((args, cfg))
    return out


def trial_records(trials, known: dict[str, TrialRecord], sweep_dir: Path, cluster: str) -> list[TrialRecord]:
    """Each trial's record: as the manifest knew it, with its state brought up to date."""
    queue = read_queue() if known and cluster == "slurm" else None
    records = []
    for trial in trials:
        record = known.get(trial.name) or TrialRecord(trial.index, trial.name, trial.overrides, str(sweep_dir / trial.name),
                                                      base=trial.base, fold=trial.fold)
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


def run_sweep(settings: list[str], dry_run: bool, wait: bool) -> int:
    quiet_submitit()
    overrides = parse_overrides(settings)
    name = overrides.pop("sweep", None)
    if not name:
        raise ConfigError("give the sweep: sweep=NAME (a file in recipes/sweeps/) or sweep=path/to/sweep.yaml")
    spec, source = load_sweep(name, cli.SWEEPS)
    cv = overrides.pop("cv", None)
    if cv is not None:
        spec.cv = check_cv(cv, "the command line")
    sweep_dir = Path(overrides.pop("output_dir", None) or default_sweep_dir(spec.name)).resolve()
    common = [f"{k}={v}" for k, v in overrides.items()]
    trials = expand_trials(spec)
    configs = trial_configs(spec, trials, common, sweep_dir)
    slurm = configs[0][1].slurm
    varying = list(spec.grid) + list(spec.random_axes)

    manifest_path = sweep_dir / "manifest.json"
    known = {t["name"]: TrialRecord(**t) for t in read_manifest(manifest_path).get("trials", [])}
    records = trial_records(trials, known, sweep_dir, slurm.cluster)
    todo = [(r, a, c) for r, (a, c) in zip(records, configs) if r.state not in ("completed", *ACTIVE)]
    what = f"{len(trials) // spec.cv} setting(s) x {spec.cv} folds = {len(trials)} runs" if spec.cv else f"{len(trials)} trial(s)"
    show_plan(f"sweep {spec.name}: {what} of recipe {spec.recipe}", records, varying)
    extra = {"recipe": spec.recipe, "metric": spec.metric, "varying": varying, "cli": common, "cv": spec.cv}
    if not todo:
        if known:
            write_manifest(manifest_path, spec.name, str(source), records, extra)
        done = sum(r.state == "completed" for r in records)
        console.print(f"nothing to submit: {done} completed, {len(records) - done} pending or running")
        return 0

    partition = check_partition(slurm)
    executor = make_executor(sweep_dir / "slurm", slurm, job_name(slurm, spec.recipe, "-sweep"))
    if dry_run:
        console.print(f"{partition.describe()}: every trial fits" if partition else "not checked against sinfo")
        console.rule("sbatch script (one array job)")
        console.print(sbatch_preview(executor), markup=False, highlight=False, soft_wrap=True)
        console.print(f"would submit {len(todo)} trial(s) into {sweep_dir}")
        return 0

    sweep_dir.mkdir(parents=True, exist_ok=True)
    trial_jobs = [
        TrainJob(train_args(trial_args, Path(record.output_dir), slurm.cpus_per_task, cfg.data.num_workers)[0],
                 slurm.max_requeues, gpus_per_node=slurm.gpus_per_node)
        for record, trial_args, cfg in todo
    ]
    jobs = submit_jobs(executor, trial_jobs, "sweep")
    for (record, _, _), job in zip(todo, jobs):
        record.job_id, record.state = str(job.job_id), "submitted"
        record.stdout, record.stderr = str(job.paths.stdout), str(job.paths.stderr)
    write_manifest(manifest_path, spec.name, str(source), records, extra)
    array_id = str(jobs[0].job_id).split("_")[0]
    console.print(f"submitted {len(jobs)} trial(s) as array job [bold]{array_id}[/bold] into {sweep_dir}")
    console.print(f"  status: python launch/sweep.py status {sweep_dir}")
    if not wait:
        return 0
    ok = wait_trials([record for record, _, _ in todo], jobs, slurm)
    write_manifest(manifest_path, spec.name, str(source), records, extra)
    show_status(sweep_dir)
    return 0 if ok else 1


def wait_trials(records: list[TrialRecord], jobs: list, slurm: SlurmConfig) -> bool:
    """Follow every submitted trial to its end and record how it ended; True if all finished."""
    watches = [Watch(job, f"trial {record.name} (job {job.job_id})", slurm.nodes * slurm.tasks) for record, job in zip(records, jobs)]
    outcomes = wait_jobs(watches, slurm.cluster)
    for record, outcome in zip(records, outcomes):
        record.state = "completed" if outcome.ok else "failed"
        record.reason = "" if outcome.ok else outcome.message
    return all(o.ok for o in outcomes)


def show_status(sweep_dir: Path) -> int:
    manifest = read_manifest(sweep_dir / "manifest.json")
    if not manifest:
        raise BrainMRIError(f"no sweep manifest in {sweep_dir} (expected manifest.json written by launch/sweep.py)")
    metric, varying = manifest.get("metric", "val/macro_f1"), manifest.get("varying", [])
    records = [TrialRecord(**t) for t in manifest["trials"]]
    queue = read_queue()
    rows = []
    for r in records:
        refresh(r, queue)
        rows.append((r, trial_result(Path(r.output_dir), metric)))
    lower = lower_is_better(metric)

    def key(item) -> tuple:
        best = item[1]["best"]
        return (best is None, (best if lower else -best) if best is not None else 0.0)

    table = Table(title=f"sweep {manifest['sweep']}: {sweep_dir} (sorted by best {metric})")
    table.add_column("trial", no_wrap=True)
    table.add_column("overrides", overflow="fold")
    table.add_column("state")
    table.add_column("reason", overflow="fold")
    table.add_column(f"best {metric}", justify="right")
    table.add_column("test acc", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("job")
    table.add_column("log", overflow="fold")
    for r, res in sorted(rows, key=key):
        log_path = Path(r.stderr) if r.stderr else None
        table.add_row(
            r.name,
            " ".join(f"{k.rsplit('.', 1)[-1]}={r.overrides.get(k)}" for k in varying),
            r.state,
            r.reason or "",
            f"{res['best']:.4f}" if res["best"] is not None else "-",
            f"{res['test_acc']:.4f}" if res["test_acc"] is not None else "-",
            str(res["epochs"]),
            r.job_id or "-",
            str(log_path.relative_to(sweep_dir)) if log_path and log_path.is_relative_to(sweep_dir) else str(log_path or "-"),
        )
    extra = {k: v for k, v in manifest.items() if k not in ("sweep", "file", "trials")}
    write_manifest(sweep_dir / "manifest.json", manifest["sweep"], manifest["file"], records, extra)
    console.print(table)
    if manifest.get("cv"):
        show_cv(sweep_dir, manifest, records)
    return 0


def show_cv(sweep_dir: Path, manifest: dict, records: list[TrialRecord]) -> None:
    """Each setting's mean ± std over its folds, the spread and every fold's number; the
    figures (cv_<metric>.png, and the dropout illustrations for a dropout sweep); and, once
    every fold is done, one W&B summary run in the trials' group."""
    metric, varying, folds = manifest.get("metric", "val/macro_f1"), manifest.get("varying", []), int(manifest["cv"])
    settings = cv_settings(records, metric, folds)
    lower = lower_is_better(metric)
    settings.sort(key=lambda c: (c.mean is None, (c.mean if lower else -c.mean) if c.mean is not None else 0.0))
    table = Table(title=f"{folds}-fold cross-validation: best {metric} per fold, sorted by the mean")
    for column in cv_report.COLUMNS:
        table.add_column(column, overflow="fold", justify="left" if column in ("setting", "overrides", "per fold") else "right")
    rows = cv_report.table_rows(settings, varying, folds)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    first = next((Path(r.output_dir) for r in records if (Path(r.output_dir) / "config.yaml").is_file()), None)
    cfg = config_from_yaml(first / "config.yaml") if first else None
    example = cv_report.example_image(cfg.data.root, first / "split.csv") if cfg and cfg.data.root else None
    images = cv_report.write_figures(sweep_dir, manifest["sweep"], metric, folds, settings, varying, example)
    for png in images.values():
        console.print(f"wrote {png}")
    if cfg is not None and cv_report.complete(settings, folds):
        upload = log_sweep_summary(cfg.tracking, resolve_mode(cfg.tracking.wandb, os.environ), sweep_dir, images,
                                   cv_report.COLUMNS, rows, cv_report.summary(settings, metric))
        if upload:
            console.print(f"W&B summary run (offline); upload with: {upload}")


def command(args: cli.Args) -> int:
    if args.positional[:1] == ["status"]:
        if len(args.positional) != 2:
            raise BrainMRIError("usage: python launch/sweep.py status SWEEP_DIR")
        return show_status(Path(args.positional[1]))
    if args.positional:
        raise BrainMRIError(f"expected key=value, got '{args.positional[0]}' (or: sweep.py status SWEEP_DIR)")
    return run_sweep(args.settings, args["--dry-run"], args["--wait"])


if __name__ == "__main__":
    sys.exit(cli.run(command, sys.argv[1:], FLAGS, positional=True))
