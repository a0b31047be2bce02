"""Sweep files: a base recipe, fixed overrides, grid axes and random-search axes.

A sweep file (``recipes/sweeps/NAME.yaml``)::

    recipe: cnn1_256              # base recipe
    metric: val/acc               # what `sweep.py status` sorts by (default: val/macro_f1)
    overrides:                    # applied to every trial
      train.epochs: 10
    grid:                         # Cartesian product
      optim.lr: [1.0e-4, 3.0e-4, 1.0e-3]
    cv: 5                         # optional: every trial as 5 cross-validation folds (data.folds/data.fold)
    random:                       # seeded random search, combined with every grid point
      trials: 4
      seed: 0
      axes:
        optim.weight_decay: {loguniform: [1.0e-6, 1.0e-3]}
        model.dropout: {uniform: [0.1, 0.5]}
        optim.name: {choice: [adam, adamw]}

:func:`expand_trials` turns it into named trials; the launcher validates every trial's
config before anything is submitted.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from brainmri.config import find_recipe, load_yaml_mapping, nearest_key
from brainmri.errors import ConfigError
from brainmri.records import best_of
from brainmri.rundir import atomic_write_json

TOP_KEYS = ("recipe", "metric", "overrides", "grid", "random", "cv")
RANDOM_KEYS = ("trials", "seed", "axes")
DISTRIBUTIONS = ("choice", "uniform", "loguniform")


@dataclass
class SweepSpec:
    name: str
    recipe: str
    metric: str = "val/macro_f1"
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    random_trials: int = 0
    random_seed: int = 0
    random_axes: dict[str, dict[str, list]] = field(default_factory=dict)
    cv: int = 0  # >= 2: every trial runs as this many cross-validation folds


@dataclass
class Trial:
    index: int
    name: str
    overrides: dict[str, Any]
    base: str = ""  # the trial without its fold: what the folds of one setting share
    fold: Optional[int] = None

    def args(self) -> list[str]:
        """``key=value`` strings; values as JSON, which YAML (and so OmegaConf) reads back."""
        return [f"{k}={json.dumps(v)}" for k, v in self.overrides.items()]


def _reject_unknown(keys, valid, where: str) -> None:
    for key in keys:
        if key not in valid:
            hint = nearest_key(key, list(valid))
            raise ConfigError(
                f"unknown key '{key}' in {where}"
                + (f"; did you mean '{hint}'?" if hint else f" (valid: {', '.join(valid)})")
            )


def load_sweep(name: str, sweeps_dir: Path) -> tuple[SweepSpec, Path]:
    """Read and check a sweep file by name (``sweeps_dir/NAME.yaml``) or path."""
    try:
        path = find_recipe(name, sweeps_dir)
    except ConfigError as e:
        raise ConfigError(str(e).replace("recipe", "sweep")) from None
    raw = OmegaConf.to_container(load_yaml_mapping(path))
    _reject_unknown(raw, TOP_KEYS, str(path))
    if not raw.get("recipe"):
        raise ConfigError(f"{path} needs a base 'recipe:'")
    grid = raw.get("grid") or {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid axis '{key}' in {path} must be a non-empty list")
    spec = SweepSpec(
        name=path.stem,
        recipe=str(raw["recipe"]),
        metric=str(raw.get("metric") or "val/macro_f1"),
        overrides=dict(raw.get("overrides") or {}),
        grid=dict(grid),
        cv=check_cv(raw.get("cv", 0), str(path)),
    )
    rnd = raw.get("random") or {}
    if rnd:
        _reject_unknown(rnd, RANDOM_KEYS, f"{path} random")
        spec.random_trials = int(rnd.get("trials", 0))
        spec.random_seed = int(rnd.get("seed", 0))
        if spec.random_trials < 1:
            raise ConfigError(f"random.trials in {path} must be >= 1")
        for key, dist in (rnd.get("axes") or {}).items():
            if not isinstance(dist, dict) or len(dist) != 1:
                raise ConfigError(f"random axis '{key}' in {path} must be one of {{choice|uniform|loguniform: [...]}}")
            ((kind, values),) = dist.items()
            _reject_unknown([kind], DISTRIBUTIONS, f"{path} random axis '{key}'")
            if kind != "choice" and (
                len(values) != 2 or not values[0] < values[1] or (kind == "loguniform" and values[0] <= 0)
            ):
                raise ConfigError(
                    f"random axis '{key}' in {path}: {kind} needs [low, high] with 0 < low < high for loguniform"
                )
            spec.random_axes[key] = {kind: list(values)}
        if not spec.random_axes:
            raise ConfigError(f"random search in {path} needs 'axes'")
    if set(spec.grid) & set(spec.random_axes):
        raise ConfigError(f"{path}: keys both in grid and random: {sorted(set(spec.grid) & set(spec.random_axes))}")
    varying = [k for k in list(spec.grid) + list(spec.random_axes) if k.startswith("slurm.")]
    if varying:
        raise ConfigError(f"{path}: {varying[0]} cannot vary across trials (all trials share one job array)")
    folded = [k for k in [*spec.grid, *spec.random_axes, *spec.overrides] if k in ("data.folds", "data.fold")]
    if folded:
        raise ConfigError(f"{path}: set cross-validation with 'cv: K', not {folded[0]}")
    return spec, path


def check_cv(value: Any, where: str) -> int:
    """A fold count: 0 (no cross-validation) or an integer >= 2."""
    text = str(value).strip()
    folds = int(text) if text.isdigit() and not isinstance(value, (bool, float)) else -1
    if not (folds == 0 or folds >= 2):
        raise ConfigError(f"cv in {where} must be a whole number >= 2 (or 0: no cross-validation), got {value!r}")
    return folds


def _sample(dist: dict[str, list], rng: random.Random) -> Any:
    ((kind, values),) = dist.items()
    if kind == "choice":
        return rng.choice(values)
    low, high = float(values[0]), float(values[1])
    value = rng.uniform(low, high) if kind == "uniform" else math.exp(rng.uniform(math.log(low), math.log(high)))
    return float(f"{value:.4g}")  # readable names; 4 significant digits are plenty for a search


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return "-".join(map(_fmt, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def trial_name(index: int, varying: dict[str, Any]) -> str:
    """``t03-lr=0.001-dropout=0.3``: readable, unique by index, safe as a folder name."""
    parts = [f"t{index:02d}"] + [f"{_short(k)}={_fmt(v)}" for k, v in varying.items()]
    return re.sub(r"[^A-Za-z0-9=._+-]", "_", "-".join(parts))[:120]


def expand_trials(spec: SweepSpec) -> list[Trial]:
    """Every grid point, combined with every random draw (seeded, so re-runs match)."""
    keys = list(spec.grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(spec.grid[k] for k in keys))] or [{}]
    rng = random.Random(spec.random_seed)
    draws = [{k: _sample(d, rng) for k, d in spec.random_axes.items()} for _ in range(spec.random_trials)] or [{}]
    trials = []
    for setting, (point, draw) in enumerate(itertools.product(points, draws)):
        varying = {**point, **draw}
        base = trial_name(setting, varying)
        for fold in range(spec.cv) if spec.cv else [None]:
            overrides = {**spec.overrides, **varying}
            name = base
            if fold is not None:
                overrides.update({"data.folds": spec.cv, "data.fold": fold})
                name = f"{base}-fold{fold}"
            trials.append(Trial(len(trials), name, overrides, base, fold))
    return trials


# -------------------------------------------------------------------------------- manifest


@dataclass
class TrialRecord:
    trial: int
    name: str
    overrides: dict[str, Any]
    output_dir: str
    job_id: Optional[str] = None
    state: str = "new"  # new | submitted | pending | running | completed | failed
    stdout: Optional[str] = None
    stderr: Optional[str] = None
    reason: str = ""  # why it is pending or why it failed, as SLURM or the wait saw it
    base: str = ""  # cross-validation: the setting this fold belongs to (its name without -foldN)
    fold: Optional[int] = None


def read_manifest(path: Path) -> dict:
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def write_manifest(path: Path, sweep: str, source: str, records: list[TrialRecord], extra: dict[str, Any]) -> None:
    atomic_write_json(path, {"sweep": sweep, "file": source, **extra, "trials": [asdict(r) for r in records]})


def trial_result(output_dir: Path, metric: str) -> dict[str, Any]:
    """Best validation metric and test accuracy of a trial, from its run directory."""
    results_path = output_dir / "results.json"
    metrics_path = output_dir / "metrics.jsonl"
    out: dict[str, Any] = {"completed": results_path.exists(), "best": None, "test_acc": None, "epochs": 0}
    if metrics_path.exists():
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        out["epochs"] = len(history)
        out["best"] = best_of(metric, [r[metric] for r in history if metric in r])
    if results_path.exists():
        out["test_acc"] = json.loads(results_path.read_text()).get("test/acc")
    return out


@dataclass
class CvSetting:
    """One setting of a cross-validated sweep: its folds' best validation metric, summarized."""

    base: str
    overrides: dict[str, Any]
    folds: int
    values: dict[int, float]  # fold -> best value of the sweep's metric (finished folds only)
    test_acc: dict[int, float]

    @property
    def mean(self) -> Optional[float]:
        return float(statistics.fmean(self.values.values())) if self.values else None

    @property
    def std(self) -> Optional[float]:
        """Sample standard deviation over folds (0 with one fold done)."""
        return float(statistics.stdev(self.values.values())) if len(self.values) > 1 else (0.0 if self.values else None)

    @property
    def spread(self) -> Optional[float]:
        return max(self.values.values()) - min(self.values.values()) if self.values else None


def cv_settings(records: list[TrialRecord], metric: str, folds: int) -> list[CvSetting]:
    """The folds of each setting gathered, with each fold's best ``metric`` from its run folder."""
    settings: dict[str, CvSetting] = {}
    for r in records:
        overrides = {k: v for k, v in r.overrides.items() if k not in ("data.folds", "data.fold")}
        setting = settings.setdefault(r.base or r.name, CvSetting(r.base or r.name, overrides, folds, {}, {}))
        result = trial_result(Path(r.output_dir), metric)
        if result["completed"] and result["best"] is not None and r.fold is not None:
            setting.values[r.fold] = result["best"]
            if result["test_acc"] is not None:
                setting.test_acc[r.fold] = result["test_acc"]
    return list(settings.values())
