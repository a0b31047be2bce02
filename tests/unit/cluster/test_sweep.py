"""brainmri/cluster/sweep.py: sweep files, trial expansion, the manifest and trial results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brainmri.cluster.sweep import (
    TrialRecord,
    expand_trials,
    load_sweep,
    read_manifest,
    trial_name,
    trial_result,
    write_manifest,
)
from brainmri.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
SWEEPS = REPO / "recipes" / "sweeps"


def sweep_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_every_shipped_sweep_loads_and_expands():
    for path in sorted(SWEEPS.glob("*.yaml")):
        spec, source = load_sweep(path.stem, SWEEPS)
        trials = expand_trials(spec)
        assert source == path and trials and len({t.name for t in trials}) == len(trials)


def test_grid_times_random_draws_is_seeded_and_named(tmp_path):
    path = sweep_file(
        tmp_path,
        """
recipe: demo
overrides: {train.epochs: 2}
grid: {optim.lr: [0.001, 0.003]}
random: {trials: 3, seed: 5, axes: {model.dropout: {uniform: [0.1, 0.5]}, optim.name: {choice: [adam, adamw]}}}
""",
    )
    spec, _ = load_sweep(str(path), SWEEPS)
    trials = expand_trials(spec)
    assert len(trials) == 6 and [t.index for t in trials] == list(range(6))
    assert all(t.overrides["train.epochs"] == 2 for t in trials)
    assert [t.overrides for t in trials] == [t.overrides for t in expand_trials(spec)]  # re-runs match
    assert trials[0].name.startswith("t00-lr=0.001-dropout=")
    assert all(0.1 <= t.overrides["model.dropout"] <= 0.5 for t in trials)
    assert trials[0].args()[0] == "train.epochs=2"


def test_trial_names_are_safe_folder_names():
    assert trial_name(3, {"model.widths": [4, 8], "optim.name": "a b/c"}) == "t03-widths=4-8-name=a_b_c"


@pytest.mark.parametrize(
    "text, message",
    [
        ("recipe: demo\ngird: {optim.lr: [1]}\n", "unknown key 'gird'"),
        ("grid: {optim.lr: [1]}\n", "needs a base 'recipe:'"),
        ("recipe: demo\ngrid: {optim.lr: 0.1}\n", "must be a non-empty list"),
        ("recipe: demo\ngrid: {slurm.nodes: [1, 2]}\n", "cannot vary across trials"),
        ("recipe: demo\nrandom: {trials: 2, axes: {optim.lr: {loguniform: [0, 1]}}}\n", "loguniform"),
        ("recipe: demo\nrandom: {trials: 2, axes: {optim.lr: {normal: [0, 1]}}}\n", "unknown key 'normal'"),
    ],
)
def test_bad_sweep_files_name_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(str(sweep_file(tmp_path, text)), SWEEPS)


def test_unknown_sweep_name_suggests_the_nearest():
    with pytest.raises(ConfigError, match="unknown sweep 'cnn_lrr'; did you mean 'cnn_lr'"):
        load_sweep("cnn_lrr", SWEEPS)


def test_manifest_round_trip(tmp_path):
    records = [TrialRecord(0, "t00", {"optim.lr": 0.1}, str(tmp_path / "t00"), job_id="12_0", state="running")]
    write_manifest(tmp_path / "manifest.json", "demo", "demo.yaml", records, {"metric": "val/acc"})
    data = read_manifest(tmp_path / "manifest.json")
    assert data["metric"] == "val/acc" and [TrialRecord(**t) for t in data["trials"]] == records
    assert read_manifest(tmp_path / "absent.json") == {}


def test_trial_result_takes_the_best_epoch_by_the_metric_direction(tmp_path):
    run = tmp_path / "t00"
    run.mkdir()
    lines = [{"epoch": 1, "val/acc": 0.5, "val/loss": 0.9}, {"epoch": 2, "val/acc": 0.7, "val/loss": 1.1}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert trial_result(run, "val/acc") == {"completed": False, "best": 0.7, "test_acc": None, "epochs": 2}
    (run / "results.json").write_text(json.dumps({"test/acc": 0.66}))
    assert trial_result(run, "val/loss") == {"completed": True, "best": 0.9, "test_acc": 0.66, "epochs": 2}
    assert trial_result(tmp_path / "missing", "val/acc")["best"] is None


def test_trials_whose_jobs_left_the_queue_without_results_are_failed_and_resubmitted(tmp_path):
    """launch/sweep.py's refresh: results.json first, then squeue; a job squeue no longer
    knows, or knows as cancelled, is a failed trial (a re-run resubmits it)."""

    from brainmri.cluster import sweep_jobs as sweep_script
    from brainmri.cluster import waiting

    queue = waiting.parse_squeue("9_0|PENDING|Resources|\n9_1|CANCELLED|None|\n9_2|PENDING|PartitionConfig|\n")
    records = {
        i: TrialRecord(i, f"t{i}", {}, str(tmp_path / f"t{i}"), job_id=f"9_{i}", state="submitted") for i in range(5)
    }
    (tmp_path / "t4").mkdir()
    (tmp_path / "t4" / "results.json").write_text("{}")
    for r in records.values():
        sweep_script.refresh(r, queue)
    assert [(r.state, r.reason) for r in records.values()] == [
        ("pending", "Resources"),
        ("failed", "ended CANCELLED without a result"),
        ("pending", "PartitionConfig: cannot start (the request exceeds what partition's nodes offer)"),
        ("failed", "left the queue without a result"),
        ("completed", ""),
    ]
    unknown = TrialRecord(0, "t0", {}, str(tmp_path / "t0"), job_id="9_0", state="running")
    sweep_script.refresh(unknown, None)  # squeue did not answer: nothing concluded
    assert unknown.state == "running"


def test_cv_expands_every_setting_into_folds_with_a_shared_base(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("recipe: demo\ncv: 3\ngrid:\n  optim.lr: [0.001, 0.01]\n")
    spec, _ = load_sweep(str(sweep), tmp_path)
    trials = expand_trials(spec)
    assert [t.name for t in trials] == [
        f"t{s:02d}-lr={lr}-fold{f}" for s, lr in ((0, "0.001"), (1, "0.01")) for f in range(3)
    ]
    assert {t.base for t in trials} == {"t00-lr=0.001", "t01-lr=0.01"}
    assert [(t.overrides["data.folds"], t.overrides["data.fold"]) for t in trials[:3]] == [(3, 0), (3, 1), (3, 2)]
    for bad in ("1", "-2", "x", "2.5"):
        sweep.write_text(f"recipe: demo\ncv: {bad}\n")
        with pytest.raises(ConfigError, match="cv in .* must be a whole number >= 2"):
            load_sweep(str(sweep), tmp_path)
    sweep.write_text("recipe: demo\ngrid:\n  data.fold: [0, 1]\n")
    with pytest.raises(ConfigError, match="set cross-validation with 'cv: K', not data.fold"):
        load_sweep(str(sweep), tmp_path)


def test_cv_settings_mean_std_spread_over_finished_folds(tmp_path):
    from brainmri.cluster.sweep import cv_settings

    records = []
    for fold, best in enumerate([0.80, 0.90, None]):
        out = tmp_path / f"t00-fold{fold}"
        out.mkdir()
        if best is not None:
            (out / "metrics.jsonl").write_text(
                json.dumps({"epoch": 1, "val/acc": best - 0.1})
                + "\n"
                + json.dumps({"epoch": 2, "val/acc": best})
                + "\n"
            )
            (out / "results.json").write_text(json.dumps({"test/acc": 0.5}))
        records.append(
            TrialRecord(
                fold,
                f"t00-fold{fold}",
                {"optim.lr": 0.1, "data.folds": 3, "data.fold": fold},
                str(out),
                base="t00",
                fold=fold,
            )
        )
    (setting,) = cv_settings(records, "val/acc", 3)
    assert setting.values == {0: 0.80, 1: 0.90} and setting.overrides == {"optim.lr": 0.1}
    assert (
        setting.mean == pytest.approx(0.85)
        and setting.std == pytest.approx(0.0707107, rel=1e-5)
        and setting.spread == pytest.approx(0.1)
    )
