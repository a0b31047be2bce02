"""launch/submit.py with submitit's local executor (slurm.cluster=local): the same TrainJob,
bound from submitit's variables instead of SLURM's, on a machine without SLURM."""

from __future__ import annotations

import json

from tests.conftest import REPO, python, run_script


def test_local_executor_trains_and_waits(tmp_path):
    out = tmp_path / "run"
    proc = run_script(
        python(
            str(REPO / "launch" / "submit.py"),
            "recipe=demo",
            f"output_dir={out}",
            "slurm.cluster=local",
            "slurm.gpus_per_node=0",
            "slurm.tasks_per_node=1",
            "train.epochs=1",
            "data.image_size=64",
            "tracking.wandb=disabled",
            "--wait",
        ),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "finished" in proc.stdout and json.loads((out / "results.json").read_text())["world_size"] == 1
    log = next((out / "slurm").glob("*_0_log.out")).read_text()
    assert "rank 0/1 on node" in log and ", cpu, master " in log
