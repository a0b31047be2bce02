"""launch/submit.py, launch/sweep.py and the sbatch templates on a real SLURM."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from brainmri.rundir import read_jsonl
from tests.conftest import REPO, python, run_script

SUBMIT = str(REPO / "launch" / "submit.py")
SWEEP = str(REPO / "launch" / "sweep.py")
CPU_JOB = ["slurm.gpus_per_node=0", "slurm.cpus_per_task=1", "slurm.timeout_min=30"]
SMALL = ["data.image_size=64", "train.batch_size=16"]


def queue_ids() -> set[str]:
    """Every job SLURM knows, finished ones included (MinJobAge keeps them 10 minutes)."""
    out = subprocess.run(["squeue", "-h", "-r", "--states=all", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def job_id(stdout: str) -> str:
    match = re.search(r"submitted job (\S+)", stdout)
    assert match, stdout
    return match.group(1)


def test_submit_two_task_cpu_job_and_wait(tmp_path):
    out = tmp_path / "run"
    proc = run_script(
        python(SUBMIT, "recipe=demo", f"output_dir={out}", "slurm.tasks_per_node=2", "train.epochs=1",
               "tracking.wandb=offline", *CPU_JOB, *SMALL, "--wait"),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jid = job_id(proc.stdout)
    assert f"stdout:     {out}/slurm/{jid}_0_log.out" in proc.stdout and f"output_dir: {out}" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["test/size"] == 40
    logs = (out / "slurm" / f"{jid}_0_log.out").read_text() + (out / "slurm" / f"{jid}_1_log.out").read_text()
    assert "task 0/2" in logs and "task 1/2" in logs


def test_dry_run_prints_sbatch_and_submits_nothing(tmp_path):
    before = queue_ids()
    out = tmp_path / "run"
    proc = run_script(python(SUBMIT, "recipe=resnet18_512", "data.root=/data/x", f"output_dir={out}", "slurm.nodes=2",
                             "slurm.gpus_per_node=4", "slurm.partition=gpu", "slurm.additional.reservation=mri", "--dry-run"))
    assert proc.returncode == 0, proc.stderr
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --reservation=mri", "#SBATCH --signal=USR2@90", "recipe: resnet18_512"):
        assert line in proc.stdout, line
    assert queue_ids() <= before  # no new job
    assert not list((out / "slurm").glob("*_submitted.pkl"))


def test_preempted_job_requeues_and_keeps_every_epoch_once(tmp_path):
    out = tmp_path / "run"
    proc = run_script(python(SUBMIT, "recipe=demo", f"output_dir={out}", "slurm.tasks_per_node=2", "train.epochs=4",
                             "tracking.wandb=offline", *CPU_JOB, *SMALL))
    assert proc.returncode == 0, proc.stderr
    jid = job_id(proc.stdout)
    deadline = time.time() + 600
    while not (out / "checkpoints" / "epoch_0001").is_dir():
        assert time.time() < deadline, "no first checkpoint"
        time.sleep(0.5)
    wandb_id = (out / "wandb_id.txt").read_text()
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    released = False
    while not (out / "results.json").exists():
        assert time.time() < deadline + 300, "requeued job did not finish"
        if not released:
            # SLURM holds a requeued job back for 2 minutes (BeginTime); the test need not wait.
            info = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True).stdout
            if "Restarts=1" in info and "JobState=PENDING" in info:
                subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=True)
                released = True
        time.sleep(1)
    assert released, "the job was never requeued"
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
    log = (out / "slurm" / f"{jid}_0_log.out").read_text()
    assert "attempt 1" in log and "attempt 2" in log
    err = (out / "slurm" / f"{jid}_0_log.err").read_text()
    assert "Requeued job" in err and "training stopped at epoch" in err
    assert (out / "wandb_id.txt").read_text() == wandb_id
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(wandb_id.strip()) for r in runs)


def test_sweep_one_array_then_nothing_then_status(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = python(SWEEP, "sweep=demo", f"output_dir={sweep_dir}", "tracking.wandb=disabled")
    proc = run_script(args + ["--wait"], timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    trials = manifest["trials"]
    assert len(trials) == 2 and {t["state"] for t in trials} == {"completed"}
    arrays = {t["job_id"].split("_")[0] for t in trials}
    assert len(arrays) == 1 and sorted(t["job_id"].split("_")[1] for t in trials) == ["0", "1"]  # ONE array job
    for t in trials:
        assert Path(t["output_dir"]).parent == sweep_dir and (Path(t["output_dir"]) / "results.json").exists()
        assert "group: demo" in (Path(t["output_dir"]) / "config.yaml").read_text()  # W&B group = sweep name
    assert "t00-lr=0.001" in {t["name"] for t in trials}
    before = queue_ids()
    again = run_script(args)
    assert again.returncode == 0 and "nothing to submit: 2 completed" in again.stdout
    assert queue_ids() <= before  # no new job
    status = run_script(python(SWEEP, "status", str(sweep_dir)))
    assert status.returncode == 0
    rows = [line for line in status.stdout.splitlines() if "t0" in line]
    assert len(rows) == 2 and all("completed" in r for r in rows)
    assert "best val/acc" in status.stdout and "slurm/" in status.stdout


def test_sweep_resubmits_only_unfinished_trials(tmp_path):
    """A failed trial (its results missing) is resubmitted; the finished one is not."""
    sweep_dir = tmp_path / "sweep"
    args = python(SWEEP, "sweep=demo", f"output_dir={sweep_dir}", "tracking.wandb=disabled")
    assert run_script(args + ["--wait"], timeout=900).returncode == 0
    # A job whose result is written may still be COMPLETING for a moment; the sweep counts
    # that as running (so two jobs never share a trial dir). Wait until SLURM lets go.
    ids = {t["job_id"] for t in json.loads((sweep_dir / "manifest.json").read_text())["trials"]}
    deadline = time.time() + 120
    while True:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True).stdout
        if not any(line.split()[0] in ids for line in out.splitlines() if line.strip()):
            break
        assert time.time() < deadline, out
        time.sleep(1)
    (sweep_dir / "t01-lr=0.003" / "results.json").unlink()
    proc = run_script(args + ["--wait"], timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted 1 trial(s)" in proc.stdout
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert {t["state"] for t in manifest["trials"]} == {"completed"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["recipe=demo", "slurm.partion=x"], "error: unknown key 'slurm.partion' in the command line; did you mean 'slurm.partition'?"),
        (["recipe=demo", "slurm.partition=nosuchpartition", *CPU_JOB], "error: sbatch refused the job: invalid partition specified: nosuchpartition; Batch job submission failed: Invalid partition name specified"),
    ],
)
def test_submit_bad_input_submits_nothing(tmp_path, args, message):
    before = queue_ids()
    proc = run_script(python(SUBMIT, *args, f"output_dir={tmp_path / 'run'}"))
    assert proc.returncode == 2
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert errors == [message], proc.stderr
    assert "Traceback" not in proc.stderr
    assert queue_ids() <= before  # no new job
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_sweep_with_unknown_recipe_key_submits_nothing(tmp_path):
    sweep = tmp_path / "bad.yaml"
    sweep.write_text("recipe: demo\ngrid:\n  optim.lrate: [0.1, 0.2]\n")
    before = queue_ids()
    proc = run_script(python(SWEEP, f"sweep={sweep}", f"output_dir={tmp_path / 's'}"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: sweep bad, trial t00-lrate=0.1: unknown key 'optim.lrate' in the command line; did you mean 'optim.lr'?"
    ]
    assert queue_ids() <= before  # no new job
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("template", sorted((REPO / "slurm" / "templates").glob("*.sbatch")), ids=lambda p: p.name)
def test_templates_are_valid_bash(template):
    assert subprocess.run(["bash", "-n", str(template)]).returncode == 0
    assert template.read_text().startswith("#!/bin/bash\n# ")


def test_multi_node_template_gives_each_node_its_own_rank(tmp_path):
    """Two srun tasks stand in for two nodes; a probe stands in for accelerate."""
    probe = tmp_path / "probe.sh"
    probe.write_text('#!/bin/bash\nprintf "PROBE"; printf " <%s>" "$@"; echo\n')
    probe.chmod(0o755)
    script = tmp_path / "multi_node.sbatch"
    text = (REPO / "slurm" / "templates" / "multi_node.sbatch").read_text()
    script.write_text("\n".join(l for l in text.splitlines() if "--gpus-per-node" not in l) + "\n")
    out = tmp_path / "out.txt"
    proc = subprocess.run(
        ["sbatch", "--wait", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", f"--output={out}", str(script),
         "recipe=demo", "data.root=/data/with space"],
        env={**__import__("os").environ, "ACCELERATE": str(probe), "GPUS_PER_NODE": "4", "BRAINMRI_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr + out.read_text()
    lines = [l for l in out.read_text().splitlines() if l.startswith("PROBE")]
    ranks = sorted(re.search(r"<--machine_rank> <(\d+)>", l).group(1) for l in lines)
    assert ranks == ["0", "1"]
    for l in lines:
        assert "<--num_machines> <2>" in l and "<--num_processes> <8>" in l
        assert "<data.root=/data/with space>" in l and "<resume=auto>" in l
    hosts = {re.search(r"<--main_process_ip> <(\S+)>", l).group(1) for l in lines}
    assert len(hosts) == 1
