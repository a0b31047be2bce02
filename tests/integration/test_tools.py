"""tools/: the GPU check, run dry on a CPU so it is known to work before a GPU is lent; the CPU
levers and the budget replay."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import REPO, run_script


def gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_runs_every_step_and_prints_one_json(tmp_path):
    proc = run_script(
        ["bash", "tools/gpu_check.sh", "--dry", "--out", str(tmp_path / "check.json")],
        env={"PYTHON": sys.executable},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "check.json").read_text()) == result  # also left on disk, step by step
    assert result["dry"] is True and result["wall_s"] <= result["budget_s"]
    for size in ("224", "512"):
        for location in ("device", "host"):
            bench = result[f"bench_{size}_{location}"]
            assert bench["cached"]["train_img_s"] > 0 and bench["cached"]["model_img_s"] > 0, (size, location)
            assert bench["cache_on_device"] is (location == "device")
    training = result["sartaj_gpu"]
    assert training["epochs"] == 1 and len(training["train_img_s_per_epoch"]) == 1 and 0 <= training["test_acc"] <= 1


def test_gpu_check_dry_steps_are_the_real_steps_made_smaller():
    """--dry runs the real recipes with their settings (512 px: resnet18_512 without the
    pretrained download); it only adds size and count settings."""
    check = gpu_check()
    scratch = Path("/scratch")
    for step in check.STEPS:
        real, dry = step.command("DATA", scratch, dry=False), step.command("DATA", scratch, dry=True)
        assert dry[: len(real)] == real, step.name
        added = {arg.split("=")[0] for arg in dry[len(real) :]}
        assert added <= {"--steps", "--warmup", "--rounds", "data.image_size", "train.batch_size", "train.epochs"}, (
            added
        )
    recipes = {step.name: next(a for a in step.args if a.startswith("recipe=")) for step in check.STEPS}
    assert recipes["bench_512_device"] == "recipe=resnet18_512" and recipes["sartaj_gpu"] == "recipe=sartaj_gpu"
    assert all("model.pretrained=false" in step.args for step in check.STEPS if step.kind == "bench")
    assert sum(step.limit_s for step in check.STEPS) < check.BUDGET_S <= 480


def test_gpu_check_records_a_failed_or_overrunning_step_and_runs_the_rest(tmp_path, monkeypatch):
    check = gpu_check()
    slow = check.Step("slow", "train.py", ("recipe=demo", "data.root=builtin:demo"), limit_s=2, kind="train")
    broken = check.Step("broken", "bench.py", ("recipe=no_such_recipe", "--json"), limit_s=60, kind="bench")
    fine = check.Step(
        "fine",
        "bench.py",
        ("recipe=demo", "--json", "--steps=1", "--warmup=0", "--rounds=1", "data.image_size=32", "train.batch_size=8"),
        limit_s=120,
        kind="bench",
    )
    monkeypatch.setattr(check, "STEPS", [slow, broken, fine])
    out = tmp_path / "partial.json"
    result = check.check("builtin:demo", dry=False, out_file=out)
    assert result["slow"]["error"] == "timed out after 2 s"
    assert result["broken"]["error"] == "exit 2" and "no_such_recipe" in result["broken"]["log_tail"]
    assert result["fine"]["cached"]["train_img_s"] > 0
    assert json.loads(out.read_text()) == result


def test_gpu_check_wheels_follow_what_the_steps_import():
    """The wheel list is derived from the steps' import log, never written by hand: here,
    brainmri's own dependencies that the GPU image lacks, and nothing the image's own
    packages import for themselves."""
    check = gpu_check()
    present = check.image_packages()
    assert {"torch", "timm", "accelerate", "huggingface-hub"} <= present
    closure = check.brainmri_closure(present)
    assert {
        "omegaconf",
        "imagehash",
        "torch",
        "timm",
    } <= closure and "httpx2" not in closure  # not below the image's hub
    missing = check.missing_distributions(check.imported_modules(), present)
    assert {"omegaconf", "imagehash", "grad-cam"} <= missing
    assert not missing & {"torch", "timm", "wandb", "numpy", "brainmri"}


def test_cpu_levers_compares_the_six_candidates():
    proc = run_script(
        [sys.executable, "tools/cpu_levers.py", "--size", "32", "--steps", "1", "--rounds", "2"], timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["channels_last"], r["batch"], r["slice"]) for r in rows] == [
        (True, 32, 32),
        (True, 32, 16),
        (True, 32, 8),
        (True, 32, 4),
        (False, 32, 16),
        (False, 16, 16),
    ]
    assert all(r["img_s"] > 0 for r in rows) and proc.stdout.count("round ") == 12


def test_budget_replay_prints_each_epoch_length_and_replays_another_budget_module(tmp_path):
    older = tmp_path / "budget.py"  # any module with the same interface: here a copy of today's
    older.write_text((REPO / "brainmri" / "training" / "budget.py").read_text())
    for extra in ([], ["--budget-module", str(older)]):
        proc = run_script([sys.executable, "tools/budget_replay.py", "--runs", "5", *extra], timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = proc.stdout.strip().splitlines()
        assert [line.split(" (")[0] for line in lines] == [
            "epochs of 30-50 s",
            "epochs of 150-200 s",
            "epochs of 300-450 s",
        ]
        assert all(line.endswith(" of 5") for line in lines), lines
