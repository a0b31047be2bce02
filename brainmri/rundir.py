"""The run directory: what a run writes, and how it is written so a kill loses nothing.

Layout (a contract other tools rely on)::

    config.yaml        fully resolved config
    split.csv          file, class, split for every image used
    dataset.json       class names, counts, normalization mean/std, image size, channels
    metrics.jsonl      one JSON object per finished epoch
    results.json       test metrics of the best model
    best.safetensors   weights of the best epoch (metadata: epoch, metric, config, dataset, inference spec, temperature)
    checkpoints/epoch_NNNN/   full training state (Accelerate save_state)
    bad_images.txt     images left out with data.on_bad_image=skip
    test_leaks.tsv     test images with the same pixels as a Training image (dropped with data.dedup=train_test)
    figures/           PNGs: class balance, augmentations, curves, confusion matrix, Grad-CAM
    eval_<split>.json  launch/evaluate.py's report (with its PNGs in figures/)
    calibration.json   the temperature fitted after training (also inside best.safetensors)
    MODEL_CARD.md      data, metrics with intervals, calibration, recipe, what not to use it for
    robustness_<split>.json  launch/evaluate.py robustness=true: accuracy per corruption and severity

Every file is written to a temporary name and renamed into place; a checkpoint folder
only gets its final name once all of it is on disk, so a folder named ``epoch_NNNN`` is
always complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Optional

from brainmri.errors import RunDirError

CHECKPOINT_RE = re.compile(r"^epoch_(\d{4,})(?:_batch_(\d{6,}))?$")
RUN_MARKERS = ("config.yaml", "checkpoints", "metrics.jsonl", "results.json")
LAUNCHER_ENTRIES = frozenset({"slurm"})  # job logs the SLURM launcher writes before training starts


RUNS_ROOT = Path("runs")  # where runs and sweeps go when no output_dir is given


def default_run_dir(recipe: Optional[str], now: Optional[datetime] = None) -> Path:
    """``runs/<recipe>-<timestamp>``: the one rule for a run folder nobody named."""
    return RUNS_ROOT / f"{recipe or 'run'}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def default_sweep_dir(sweep: str) -> Path:
    return RUNS_ROOT / "sweeps" / sweep


def atomic_replace(tmp: Path, final: Path) -> None:
    """Rename a finished file or folder into place and make the rename itself durable.

    The rename is the commit point: readers see the old thing or the whole new one.
    Syncing the folder keeps a power cut from undoing the rename after we reported it.
    """
    os.replace(tmp, final)
    try:
        fd = os.open(final.parent, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name, flush it to disk, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    atomic_replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _Entry:
    """A file or folder of the run directory, named once: ``RunDir(p).config`` is ``p / "config.yaml"``."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, run: Optional["RunDir"], owner: type) -> Any:
        return self if run is None else run.path / self.name


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    path: Path

    config = _Entry("config.yaml")
    split = _Entry("split.csv")
    dataset = _Entry("dataset.json")
    metrics = _Entry("metrics.jsonl")
    results = _Entry("results.json")
    best_weights = _Entry("best.safetensors")
    checkpoints = _Entry("checkpoints")
    bad_images = _Entry("bad_images.txt")
    leaks = _Entry("test_leaks.tsv")
    calibration = _Entry("calibration.json")
    excluded = _Entry("excluded.txt")
    val_predictions = _Entry("val_predictions.csv")

    def checkpoint(self, epoch: int, batch: int = 0) -> Path:
        """``epoch_NNNN`` after ``epoch`` whole epochs; ``epoch_NNNN_batch_NNNNNN`` when the
        next epoch had trained ``batch`` batches (a mid-epoch checkpoint)."""
        return self.checkpoints / (f"epoch_{epoch:04d}_batch_{batch:06d}" if batch else f"epoch_{epoch:04d}")

    def temp_checkpoint(self, epoch: int, batch: int = 0) -> Path:
        return self.checkpoints / f".tmp-{self.checkpoint(epoch, batch).name}"

    def holds_run(self) -> bool:
        return any((self.path / m).exists() for m in RUN_MARKERS)

    def all_checkpoints(self) -> list[tuple[tuple[int, int], Path]]:
        """((epoch, batch), folder) of every complete checkpoint, epoch-end and mid-epoch, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir():
                found.append(((int(m.group(1)), int(m.group(2) or 0)), p))
        return sorted(found)

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(epoch, folder) of every complete epoch-end checkpoint, oldest first."""
        return [(epoch, p) for (epoch, batch), p in self.all_checkpoints() if batch == 0]

    def latest_checkpoint(self) -> Optional[tuple[int, Path]]:
        """The newest complete checkpoint, mid-epoch ones included: (completed epochs, folder)."""
        found = self.all_checkpoints()
        return (found[-1][0][0], found[-1][1]) if found else None

    def remove_temp_checkpoints(self) -> None:
        """Folders a killed run left half-written; never complete, always safe to delete."""
        if self.checkpoints.is_dir():
            for p in self.checkpoints.glob(".tmp-*"):
                shutil.rmtree(p, ignore_errors=True)

    def prune_checkpoints(self, keep: int, best_epoch: Optional[int]) -> None:
        """Keep the newest ``keep`` epoch-end checkpoints, the best one, and a mid-epoch one
        only while it is the newest of all (it is worth nothing once a later one exists)."""
        found = self.complete_checkpoints()
        for epoch, path in found[:-keep]:
            if epoch != best_epoch:
                shutil.rmtree(path, ignore_errors=True)
        everything = self.all_checkpoints()
        for (_, batch), path in everything[:-1]:
            if batch:
                shutil.rmtree(path, ignore_errors=True)


def check_output_dir(path: Path, resume: str, overwrite: bool) -> str:
    """Decide what a run may do with ``path``: "new", "resume" or "overwrite".

    Refuses to start a new run into a folder that already holds one, so nothing is
    clobbered by a repeated command; ``resume=auto`` continues it, ``overwrite=true``
    replaces it deliberately.
    """
    run = RunDir(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"output_dir {path} exists and is not a folder")
    if not path.exists() or not [p for p in path.iterdir() if p.name not in LAUNCHER_ENTRIES]:
        return "new"
    if not run.holds_run():
        raise RunDirError(f"output_dir {path} is not empty and holds no brainmri run; choose another output_dir")
    if resume == "auto":
        return "resume"
    if overwrite:
        return "overwrite"
    raise RunDirError(
        f"output_dir {path} already holds a run: add resume=auto to continue it, or overwrite=true to replace it"
    )


def clear_run(path: Path) -> None:
    """Remove the artefacts of a previous run (``overwrite=true``); other files stay."""
    run = RunDir(path)
    for p in (
        run.config,
        run.split,
        run.dataset,
        run.metrics,
        run.results,
        run.best_weights,
        run.bad_images,
        run.leaks,
    ):
        p.unlink(missing_ok=True)
    for p in (run.checkpoints, path / "figures"):
        shutil.rmtree(p, ignore_errors=True)
