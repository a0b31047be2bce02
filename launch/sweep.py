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

import logging
import subprocess
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import submitit  # noqa: E402
from rich.table import Table  # noqa: E402

from brainmri.config import load_config, parse_overrides  # noqa: E402
from brainmri.console import console  # noqa: E402
from brainmri.errors import BrainMRIError, ConfigError  # noqa: E402
from brainmri.sweep import TrialRecord, expand_trials, load_sweep, read_manifest, trial_result, write_manifest  # noqa: E402
from launch.cluster import REPO, TrainJob, cli, job_name, make_executor, sbatch_preview, sbatch_stderr, submit_error, train_args  # noqa: E402

logging.getLogger("submitit").setLevel(logging.ERROR)  # no sacct on small clusters: one warning per poll

SWEEPS = REPO / "recipes" / "sweeps"
ACTIVE = ("pending", "running")
SLURM_STATES = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending", "RESIZING": "pending", "SUSPENDED": "pending",
    "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running",
}


def slurm_states() -> dict[str, str]:
    """``{job_id: state}`` for every job squeue still knows (array tasks one by one)."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "--states=all", "-o", "%i %T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)


def refresh(record: TrialRecord, states: dict[str, str]) -> None:
    """A trial's state from its run directory first (results.json is the truth), then squeue."""
    if (Path(record.output_dir) / "results.json").exists():
        record.state = "completed"
    elif record.job_id and record.job_id in states:
        record.state = SLURM_STATES.get(states[record.job_id], "failed")
    elif record.job_id:
        record.state = "failed"


def trial_configs(spec, trials, cli: list[str], sweep_dir: Path) -> list[tuple[list[str], object]]:
    """Every trial's override list and validated config; the first bad one stops everything."""
    out = []
    for trial in trials:
        args = [f"recipe={spec.recipe}", *trial.args(), *cli]
        if not any(a.startswith("tracking.group=") for a in cli):
            args.append(f"tracking.group={spec.name}")
        try:
            cfg = load_config([*args, f"output_dir={sweep_dir / trial.name}"], REPO / "recipes")
        except ConfigError as e:
            raise ConfigError(f"sweep {spec.name}, trial {trial.name}: {e}") from None
        out.append((args, cfg))
    return out


def run_sweep(args: Sequence[str], dry_run: bool, wait: bool) -> int:
    overrides = parse_overrides(args)
    name = overrides.pop("sweep", None)
    if not name:
        raise ConfigError("give the sweep: sweep=NAME (a file in recipes/sweeps/) or sweep=path/to/sweep.yaml")
    spec, source = load_sweep(name, SWEEPS)
    sweep_dir = Path(overrides.pop("output_dir", None) or Path("runs") / "sweeps" / spec.name).resolve()
    cli = [f"{k}={v}" for k, v in overrides.items()]
    trials = expand_trials(spec)
    configs = trial_configs(spec, trials, cli, sweep_dir)
    slurm = configs[0][1].slurm
    varying = list(spec.grid) + list(spec.random_axes)

    manifest_path = sweep_dir / "manifest.json"
    known = {t["name"]: TrialRecord(**t) for t in read_manifest(manifest_path).get("trials", [])}
    states = slurm_states() if known and slurm.cluster == "slurm" else {}
    records = []
    for trial in trials:
        record = known.get(trial.name) or TrialRecord(trial.index, trial.name, trial.overrides, str(sweep_dir / trial.name))
        refresh(record, states)
        records.append(record)
    todo = [(r, a, c) for r, (a, c) in zip(records, configs) if r.state not in ("completed", *ACTIVE)]

    table = Table(title=f"sweep {spec.name}: {len(trials)} trial(s) of recipe {spec.recipe}")
    for column in ("trial", *varying, "state"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(r.name, *[str(r.overrides.get(k)) for k in varying], r.state if r.state != "new" else "to submit")
    console.print(table)
    extra = {"recipe": spec.recipe, "metric": spec.metric, "varying": varying, "cli": cli}
    if not todo:
        if known:
            write_manifest(manifest_path, spec.name, str(source), records, extra)
        done = sum(r.state == "completed" for r in records)
        console.print(f"nothing to submit: {done} completed, {len(records) - done} pending or running")
        return 0

    executor = make_executor(sweep_dir / "slurm", slurm, job_name(configs[0][1], "-sweep"))
    if dry_run:
        console.rule("sbatch script (one array job)")
        console.print(sbatch_preview(executor), markup=False, highlight=False, soft_wrap=True)
        console.print(f"would submit {len(todo)} trial(s) into {sweep_dir}")
        return 0

    sweep_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    try:
        with sbatch_stderr() as sbatch_lines, executor.batch():
            for record, trial_args, cfg in todo:
                job_args = train_args(trial_args, Path(record.output_dir), slurm, cfg.data.num_workers)
                jobs.append(executor.submit(TrainJob(job_args, slurm.max_requeues)))
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as e:
        raise BrainMRIError(f"sbatch refused the sweep: {submit_error(e, sbatch_lines)}") from None
    for line in sbatch_lines:
        print(line, file=sys.stderr)
    for (record, _, _), job in zip(todo, jobs):
        record.job_id, record.state = str(job.job_id), "submitted"
        record.stdout, record.stderr = str(job.paths.stdout), str(job.paths.stderr)
    write_manifest(manifest_path, spec.name, str(source), records, extra)
    array_id = str(jobs[0].job_id).split("_")[0]
    console.print(f"submitted {len(jobs)} trial(s) as array job [bold]{array_id}[/bold] into {sweep_dir}")
    console.print(f"  status: python launch/sweep.py status {sweep_dir}")
    if not wait:
        return 0
    failed = 0
    for job in jobs:
        try:
            job.results()
        except Exception:
            failed += 1
    show_status(sweep_dir)
    return 1 if failed else 0


def show_status(sweep_dir: Path) -> int:
    manifest = read_manifest(sweep_dir / "manifest.json")
    if not manifest:
        raise BrainMRIError(f"no sweep manifest in {sweep_dir} (expected manifest.json written by launch/sweep.py)")
    metric, varying = manifest.get("metric", "val/macro_f1"), manifest.get("varying", [])
    records = [TrialRecord(**t) for t in manifest["trials"]]
    states = slurm_states()
    rows = []
    for r in records:
        refresh(r, states)
        rows.append((r, trial_result(Path(r.output_dir), metric)))
    lower_is_better = metric.endswith("loss")

    def key(item) -> tuple:
        best = item[1]["best"]
        return (best is None, (best if lower_is_better else -best) if best is not None else 0.0)

    table = Table(title=f"sweep {manifest['sweep']}: {sweep_dir} (sorted by best {metric})")
    table.add_column("trial", no_wrap=True)
    table.add_column("overrides", overflow="fold")
    table.add_column("state")
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
            f"{res['best']:.4f}" if res["best"] is not None else "-",
            f"{res['test_acc']:.4f}" if res["test_acc"] is not None else "-",
            str(res["epochs"]),
            r.job_id or "-",
            str(log_path.relative_to(sweep_dir)) if log_path and log_path.is_relative_to(sweep_dir) else str(log_path or "-"),
        )
    extra = {k: v for k, v in manifest.items() if k not in ("sweep", "file", "trials")}
    write_manifest(sweep_dir / "manifest.json", manifest["sweep"], manifest["file"], records, extra)
    console.print(table)
    return 0


def command(args: list[str], dry_run: bool, wait: bool) -> int:
    if args and args[0] == "status":
        if len(args) != 2:
            raise BrainMRIError("usage: python launch/sweep.py status SWEEP_DIR")
        return show_status(Path(args[1]))
    return run_sweep(args, dry_run, wait)


def main(argv: Sequence[str]) -> int:
    return cli(argv, command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
