"""A sweep's report: every trial's state and best score sorted by the sweep's metric, and for a
cross-validated sweep each setting's mean and spread over its folds, its figures and one W&B
summary run (``launch/sweep.py status``)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from rich.table import Table

from brainmri.cluster.sweep import TrialRecord, cv_settings, read_manifest, trial_result, write_manifest
from brainmri.cluster.sweep_jobs import refresh
from brainmri.cluster.waiting import read_queue
from brainmri.config import config_from_yaml
from brainmri.errors import BrainMRIError
from brainmri.evaluation import cv_report
from brainmri.records import lower_is_better
from brainmri.reporting.console import console
from brainmri.reporting.tracking import log_sweep_summary, resolve_mode


def show_status(sweep_dir: Path, environ: Mapping[str, str]) -> int:
    """Print the trials' table (and the CV report); the manifest is rewritten with the states found."""
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
            str(log_path.relative_to(sweep_dir))
            if log_path and log_path.is_relative_to(sweep_dir)
            else str(log_path or "-"),
        )
    extra = {k: v for k, v in manifest.items() if k not in ("sweep", "file", "trials")}
    write_manifest(sweep_dir / "manifest.json", manifest["sweep"], manifest["file"], records, extra)
    console.print(table)
    if manifest.get("cv"):
        show_cv(sweep_dir, manifest, records, environ)
    return 0


def show_cv(sweep_dir: Path, manifest: dict, records: list[TrialRecord], environ: Mapping[str, str]) -> None:
    """Each setting's mean ± std over its folds, the spread and every fold's number; the
    figures (cv_<metric>.png, and the dropout illustrations for a dropout sweep); and, once
    every fold is done, one W&B summary run in the trials' group."""
    metric, varying, folds = manifest.get("metric", "val/macro_f1"), manifest.get("varying", []), int(manifest["cv"])
    settings = cv_settings(records, metric, folds)
    lower = lower_is_better(metric)
    settings.sort(key=lambda c: (c.mean is None, (c.mean if lower else -c.mean) if c.mean is not None else 0.0))
    table = Table(title=f"{folds}-fold cross-validation: best {metric} per fold, sorted by the mean")
    for column in cv_report.COLUMNS:
        table.add_column(
            column, overflow="fold", justify="left" if column in ("setting", "overrides", "per fold") else "right"
        )
    oof = cv_report.out_of_fold_intervals(sweep_dir, settings, folds)
    rows = cv_report.table_rows(settings, varying, folds, oof)
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
        upload = log_sweep_summary(
            cfg.tracking,
            resolve_mode(cfg.tracking.wandb, environ),
            sweep_dir,
            images,
            cv_report.COLUMNS,
            rows,
            cv_report.summary(settings, metric, oof),
        )
        if upload:
            console.print(f"W&B summary run (offline); upload with: {upload}")
