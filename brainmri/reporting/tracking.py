"""Weights & Biases through Accelerate's tracker API, offline-first and never fatal.

One W&B run per training run, started by the main process only, with the config passed
to ``wandb.init`` itself (not a later ``config.update``, which Accelerate issues have seen
lost offline). The run id is kept in ``output_dir/wandb_id.txt`` so a resumed or requeued
run continues the same W&B run. If W&B cannot start online, the run goes on offline after
one warning; if any later W&B call fails, tracking stops with one warning and training
goes on: ``metrics.jsonl`` stays the record of truth.
"""

from __future__ import annotations

import hashlib
import json
import logging
import netrc
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlparse

from brainmri.config import TrackingConfig
from brainmri.rundir import RunDir, atomic_write_text

log = logging.getLogger(__name__)


def wandb_credentials_present(environ: Mapping[str, str], home: Optional[Path] = None) -> bool:
    """Whether W&B could authenticate: an API key in the environment or a netrc entry."""
    if environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(environ.get("NETRC") or (home or Path.home()) / ".netrc")
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_mode(requested: str, environ: Mapping[str, str], home: Optional[Path] = None) -> str:
    """``auto`` becomes online with credentials, offline without; others stay as asked."""
    if requested != "auto":
        return requested
    return "online" if wandb_credentials_present(environ, home) else "offline"


def stored_run_id(id_file: Path) -> str:
    """The W&B run id kept in ``id_file``, made (in W&B's own format) and kept on first use,
    so a resumed or requeued run, or a re-logged summary, continues the same W&B run."""
    if id_file.exists():
        return id_file.read_text().strip()
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    atomic_write_text(id_file, run_id + "\n")
    return run_id


class Tracker:
    """What a run reports to W&B. All methods are no-ops off the main process or when disabled."""

    def __init__(self, accelerator, cfg: TrackingConfig, run: RunDir, mode: str):
        if mode == "auto":
            raise ValueError("resolve tracking.wandb=auto with resolve_mode() before building a Tracker")
        self.accelerator = accelerator
        self.cfg = cfg
        self.run_dir = run
        self.mode = mode  # the mode actually in use; becomes offline after a failed online start
        self.enabled = mode != "disabled" and accelerator.is_main_process
        self.wandb_run = None

    @property
    def id_file(self) -> Path:
        return self.run_dir.path / "wandb_id.txt"

    def start(self, config: dict) -> None:
        if not self.enabled:
            return
        import wandb

        run_id = stored_run_id(self.id_file)
        init = {
            "id": run_id,
            "resume": "allow",
            "dir": str(self.run_dir.path),
            "name": self.cfg.name or self.run_dir.path.name,
            "entity": self.cfg.entity,
            "group": self.cfg.group,
            "tags": list(self.cfg.tags) or None,
            "config": config,
            "settings": wandb.Settings(init_timeout=self.cfg.init_timeout, console="off"),
        }
        try:
            self._init(init, self.mode)
        except Exception as e:  # no network, bad key, service down: carry on offline
            if self.mode != "online":
                log.warning(
                    "W&B could not start (%s); tracking disabled, metrics.jsonl still has everything", _short(e)
                )
                self._give_up()
                return
            log.warning("W&B could not start online (%s); continuing offline", _short(e))
            self.mode = "offline"
            try:
                self._init(init, "offline")
            except Exception as e2:
                log.warning("W&B could not start offline either (%s); tracking disabled", _short(e2))
                self._give_up()
                return
        self.wandb_run = self.accelerator.get_tracker("wandb", unwrap=True)
        self.wandb_run.define_metric("step")
        self.wandb_run.define_metric("epoch")
        self.wandb_run.define_metric("step/*", step_metric="step")
        for prefix in ("train/*", "val/*", "lr", "throughput", "epoch_time", "train_time", "gpu_mem_peak_gb"):
            self.wandb_run.define_metric(prefix, step_metric="epoch")

    def _drop_wandb(self) -> None:
        """Forget Accelerate's W&B tracker: a failed start leaves a half-made one behind, and
        a finished one must not be finished again by ``end_training``."""
        self.accelerator.trackers = [t for t in self.accelerator.trackers if t.name != "wandb"]

    def _give_up(self) -> None:
        self._drop_wandb()
        self.enabled = False

    def _init(self, init: dict, mode: str) -> None:
        self._drop_wandb()  # a failed start leaves its tracker in the list
        if "wandb" not in [str(t) for t in self.accelerator.log_with]:
            from accelerate.utils import LoggerType

            self.accelerator.log_with.append(LoggerType.WANDB)
        self.accelerator.init_trackers(self.cfg.project, init_kwargs={"wandb": {**init, "mode": mode}})

    @property
    def live(self) -> bool:
        """A W&B run is open here (main process, tracking on, started)."""
        return self.enabled and self.wandb_run is not None

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if not self.live:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:
            log.warning("W&B failed while logging %s (%s); tracking stops, training goes on", what, _short(e))
            self._give_up()

    def log(self, values: dict) -> None:
        """Scalars; the x-axis comes from the ``step`` or ``epoch`` value inside."""
        if self.live:
            self._call("metrics", self.accelerator.log, values)

    def log_figure(self, key: str, path: Path) -> None:
        if not self.live:
            return
        import wandb

        self._call(key, self.accelerator.log, {key: wandb.Image(str(path))})

    def log_class_distribution(self, counts: dict, class_names: Sequence[str]) -> None:
        """One native W&B bar chart per split (train, val, test)."""
        if not self.live:
            return
        import wandb

        charts = {}
        for split, values in counts.items():
            if values is None:
                continue
            table = wandb.Table(data=[[c, int(n)] for c, n in zip(class_names, values)], columns=["class", "images"])
            charts[f"data/classes_{split}"] = wandb.plot.bar(
                table, "class", "images", title=f"{split}: images per class"
            )
        self._call("class distribution", self.accelerator.log, charts)

    def log_results(self, results: dict) -> None:
        """Confusion-matrix plot, per-class table and test metrics in the run summary."""
        if not self.live or "confusion_matrix" not in results:
            return
        import wandb

        names = results["class_names"]
        y_true, y_pred = [], []
        for i, row in enumerate(results["confusion_matrix"]):
            for j, count in enumerate(row):
                y_true += [i] * count
                y_pred += [j] * count
        table = wandb.Table(columns=["class", "precision", "recall", "specificity", "f1", "auroc", "support"])
        for name, m in results["per_class"].items():
            table.add_data(
                name, m["precision"], m["recall"], m.get("specificity"), m["f1"], m.get("auroc"), m["support"]
            )
        plot = wandb.plot.confusion_matrix(
            y_true=y_true, preds=y_pred, class_names=names, title="test confusion matrix"
        )
        self._call("results", self.accelerator.log, {"test/confusion_matrix": plot, "test/per_class": table})
        summary = {k: v for k, v in results.items() if isinstance(v, (int, float)) and v is not None}
        self._call("summary", self.wandb_run.summary.update, summary)

    def log_model(self, path: Path, metadata: dict) -> None:
        if not self.cfg.log_model:
            return
        import wandb

        def upload() -> None:
            artifact = wandb.Artifact(f"model-{self.wandb_run.id}", type="model", metadata=metadata)
            artifact.add_file(str(path))
            self.wandb_run.log_artifact(artifact)

        self._call("model artifact", upload)

    def finish(self) -> Optional[str]:
        """End the W&B run; for offline runs, the command that uploads them later."""
        if self.wandb_run is None:
            return None
        try:
            for tracker in self.accelerator.trackers:
                if tracker.name == "wandb":
                    tracker.finish()
        except Exception as e:
            log.warning("W&B did not finish cleanly (%s)", _short(e))
        self._drop_wandb()
        self.wandb_run = None
        if self.mode == "offline":
            return f"wandb sync {self.run_dir.path / 'wandb'}/offline-run-*"
        return None


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def log_sweep_summary(
    cfg: TrackingConfig,
    mode: str,
    sweep_dir: Path,
    images: Mapping[str, Path],
    columns: Sequence[str],
    rows: Sequence[Sequence],
    summary: Mapping[str, float],
) -> Optional[str]:
    """One W&B run for a finished cross-validated sweep, in the trials' group (job type
    ``cv-summary``): its figures, the per-setting table and the best setting's numbers.

    The run id lives in ``sweep_dir/wandb_id.txt``, and what was logged is fingerprinted in
    ``sweep_dir/wandb_summary.json``: asking again with the same numbers and figures logs
    nothing (an offline resume would start a second run folder), asking with new ones updates
    the same run. Never fatal, like the training runs' tracking. Returns the upload command
    for an offline run.
    """
    group = cfg.group or sweep_dir.name
    what = SummaryRun(f"{group}-cv", group, "cv-summary", "cv/settings", "wandb_summary.json", "the sweep summary")
    return log_summary(cfg, mode, sweep_dir, what, images, columns, rows, summary)


@dataclass(frozen=True)
class SummaryRun:
    """Which W&B run a summary goes to, and under which keys."""

    name: str
    group: Optional[str]
    job_type: Optional[str]
    table_key: str
    marker: str  # file in the folder that fingerprints what was logged
    what: str  # for the log lines


def _content_digest(
    images: Mapping[str, Path], columns: Sequence[str], rows: Sequence[Sequence], summary: Mapping[str, float]
) -> str:
    """What a summary holds, as one hash: logging the same content twice is a no-op."""
    content = [
        list(columns),
        [list(map(str, r)) for r in rows],
        dict(summary),
        {k: hashlib.sha256(Path(p).read_bytes()).hexdigest() for k, p in images.items()},
    ]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _start_summary_run(cfg: TrackingConfig, mode: str, folder: Path, run: SummaryRun) -> tuple[Any, str]:
    """The folder's W&B run resumed in ``mode`` (online falls back to offline); (None, mode) if neither starts."""
    import wandb

    init = {
        "project": cfg.project,
        "entity": cfg.entity,
        "group": run.group,
        "job_type": run.job_type,
        "name": run.name,
        "id": stored_run_id(folder / "wandb_id.txt"),
        "resume": "allow",
        "dir": str(folder),
        "tags": list(cfg.tags) or None,
        "settings": wandb.Settings(init_timeout=cfg.init_timeout, console="off", silent=True),
    }
    for attempt in [mode, "offline"] if mode == "online" else [mode]:
        try:
            return wandb.init(**init, mode=attempt), attempt
        except Exception as e:
            log.warning("W&B could not start %s for %s (%s)", attempt, run.what, _short(e))
    return None, mode


def log_summary(
    cfg: TrackingConfig,
    mode: str,
    folder: Path,
    run: SummaryRun,
    images: Mapping[str, Path],
    columns: Sequence[str],
    rows: Sequence[Sequence],
    summary: Mapping[str, float],
) -> Optional[str]:
    """Figures, one table and summary numbers into the W&B run whose id is in
    ``folder/wandb_id.txt`` (a training run's own W&B run when ``folder`` is its run
    directory), logged once per content (``run.marker``); see :func:`log_sweep_summary`."""
    if mode == "auto":
        raise ValueError("resolve tracking.wandb=auto with resolve_mode() first")
    if mode == "disabled":
        return None
    digest = _content_digest(images, columns, rows, summary)
    marker = folder / run.marker
    sync = f"wandb sync {folder / 'wandb'}/offline-run-*"
    try:
        logged = json.loads(marker.read_text()) if marker.is_file() else {}
    except (OSError, ValueError):
        logged = {}
    if logged.get("digest") == digest:
        log.info("%s is already in W&B (%s)", run.what, logged.get("mode"))
        return sync if logged.get("mode") == "offline" else None
    import wandb

    wandb_run, mode = _start_summary_run(cfg, mode, folder, run)
    if wandb_run is None:
        return None
    try:
        wandb_run.log(
            {
                **{key: wandb.Image(str(path)) for key, path in images.items()},
                run.table_key: wandb.Table(columns=list(columns), data=[list(r) for r in rows]),
            }
        )
        wandb_run.summary.update(dict(summary))
        atomic_write_text(marker, json.dumps({"digest": digest, "mode": mode}) + "\n")
    except Exception as e:
        log.warning("W&B did not take %s (%s)", run.what, _short(e))
    finally:
        wandb_run.finish()
    return sync if mode == "offline" else None
