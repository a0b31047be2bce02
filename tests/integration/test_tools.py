"""tools/: the GPU check, run dry on a CPU so it is known to work before a GPU is lent."""

from __future__ import annotations

import json
import sys

from tests.conftest import run_script


def test_gpu_check_dry_runs_every_step_and_prints_one_json():
    proc = run_script(["bash", "tools/gpu_check.sh", "--dry"], env={"PYTHON": sys.executable}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dry"] is True
    for size in ("224", "512"):
        for location in ("device", "host"):
            bench = result[f"bench_{size}_{location}"]
            assert bench["cached"]["train_img_s"] > 0 and bench["cached"]["model_img_s"] > 0, (size, location)
            assert bench["cache_on_device"] is (location == "device")
    training = result["sartaj_gpu"]
    assert training["epochs"] == 1 and len(training["train_img_s_per_epoch"]) == 1 and 0 <= training["test_acc"] <= 1


def test_cpu_levers_compares_the_four_candidates():
    proc = run_script([sys.executable, "tools/cpu_levers.py", "--size", "32", "--steps", "1", "--rounds", "2"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["channels_last"], r["batch"]) for r in rows] == [(True, 32), (False, 32), (True, 16), (False, 16)]
    assert all(r["img_s"] > 0 for r in rows) and proc.stdout.count("round ") == 8
