"""launch/submit.py, launch/sweep.py and the sbatch templates on a real 2-node SLURM
(slurm/dev-cluster/up.sh: node1 and node2, one CPU each, each job with its own TMPDIR per node)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brainmri.rundir import read_jsonl
from tests.conftest import REPO, python, run_script, two_processes
from tests.wandb_records import read_records, summarize, wait_for_exit_record

SUBMIT = str(REPO / "launch" / "submit.py")
SWEEP = str(REPO / "launch" / "sweep.py")
CPU_JOB = ["slurm.gpus_per_node=0", "slurm.cpus_per_task=1", "slurm.timeout_min=30"]
TWO_NODES = ["slurm.nodes=2", "slurm.tasks_per_node=1", *CPU_JOB]
SMALL = ["data.image_size=64", "train.batch_size=16"]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def queue_ids() -> set[str]:
    """Every job SLURM knows, finished ones included (MinJobAge keeps them 10 minutes)."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "--states=all", "-o", "%i"], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


def job_id(stdout: str) -> str:
    match = re.search(r"submitted job (\S+)", stdout)
    assert match, stdout
    return match.group(1)


def rank_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("[brainmri] job ")]


def test_two_node_job_trains_like_two_processes_on_one_node(tmp_path):
    """Rank 0 on node1, rank 1 on node2, rendezvous at node1; each node builds its own image
    cache in its own TMPDIR; the test metrics equal a 2-process run on one machine (same
    seed, one thread per process: the job's tasks have one CPU each)."""
    out = tmp_path / "run"
    proc = run_script(
        python(
            SUBMIT,
            "recipe=demo",
            f"output_dir={out}",
            *TWO_NODES,
            "train.epochs=1",
            "tracking.wandb=offline",
            *SMALL,
            "--wait",
        ),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jid = job_id(proc.stdout)
    assert f"stdout:     {out}/slurm/{jid}_0_log.out" in proc.stdout and f"job {jid} finished" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["test/size"] == 40
    port = 20000 + int(jid) % 12000
    logs = {rank: (out / "slurm" / f"{jid}_{rank}_log.out").read_text() for rank in (0, 1)}
    assert f"rank 0/2 on node node1 (node rank 0/2, local rank 0/1), cpu, 1 thread(s), master node1:{port}" in logs[0]
    assert f"rank 1/2 on node node2 (node rank 1/2, local rank 0/1), cpu, 1 thread(s), master node1:{port}" in logs[1]
    for rank, node in ((0, "node1"), (1, "node2")):
        err = (out / "slurm" / f"{jid}_{rank}_log.err").read_text()
        compact = "".join(err.split())  # rich wraps long log lines
        assert compact.count("buildingimagecache:") == 1, err[-2000:]
        assert f"into/tmp/brainmri-dev/{node}/job{jid}/brainmri-cache/brainmri-" in compact, err[-2000:]
        assert "waiting for" not in err
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1

    local = tmp_path / "local"
    ref = run_script(
        two_processes(
            "recipe=demo",
            f"output_dir={local}",
            "train.epochs=1",
            "tracking.wandb=disabled",
            "data.num_workers=0",
            *SMALL,
        ),
        timeout=900,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = json.loads((local / "results.json").read_text())
    for key in ("test/acc", "test/loss", "test/macro_f1", "test/auroc_macro", "test/ece"):
        assert results[key] == expected[key], key  # gloo sums two ranks in either order alike: exact


def test_multi_node_template_trains_on_two_nodes(tmp_path):
    """slurm/templates/multi_node.sbatch for real: one accelerate launch per node, machine
    ranks 0 and 1, on CPU nodes with --gpus-per-node=0 and nothing else changed."""
    out, log = tmp_path / "run", tmp_path / "job.out"
    proc = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--nodes=2",
            "--ntasks-per-node=1",
            "--cpus-per-task=1",
            "--gpus-per-node=0",
            f"--output={log}",
            str(REPO / "slurm" / "templates" / "multi_node.sbatch"),
            "recipe=demo",
            "train.epochs=1",
            "tracking.wandb=disabled",
            "tracking.name=two nodes, one run",
            *SMALL,
        ],
        env={**os.environ, "ACCELERATE": ACCELERATE, "BRAINMRI_DIR": str(REPO), "OUTPUT_DIR": str(out)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    text = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, proc.stderr + text[-3000:]
    jid = re.search(r"Submitted batch job (\d+)", proc.stdout).group(1)
    port = 20000 + int(jid) % 12000
    hosts = sorted(ln for ln in text.splitlines() if ln.startswith("[brainmri] node"))
    assert hosts == [
        f"[brainmri] node node1: machine rank 0 of 2, 1 process(es), rendezvous node1:{port}",
        f"[brainmri] node node2: machine rank 1 of 2, 1 process(es), rendezvous node1:{port}",
    ]
    assert json.loads((out / "results.json").read_text())["world_size"] == 2
    assert "name: two nodes, one run" in (out / "config.yaml").read_text()


def test_dry_run_prints_the_check_the_ranks_and_sbatch_and_submits_nothing(tmp_path):
    before = queue_ids()
    out = tmp_path / "run"
    proc = run_script(python(SUBMIT, "recipe=demo", f"output_dir={out}", *TWO_NODES, "--dry-run"))
    assert proc.returncode == 0, proc.stderr
    assert (
        "partition debug: 2 node(s), 1 CPU(s), up to 0 GPU(s) and" in proc.stdout and "the request fits" in proc.stdout
    )
    ranks = [ln.split("│")[1:7] for ln in proc.stdout.splitlines() if re.match(r"│ [01] ", ln)]
    assert [[c.strip() for c in r] for r in ranks] == [
        ["0", "<node0>", "0", "-", "cpu", "1"],
        ["1", "<node1>", "0", "-", "cpu", "1"],
    ]
    gpu = run_script(
        python(
            SUBMIT,
            "recipe=resnet18_512",
            "data.root=/data/x",
            f"output_dir={out}",
            "slurm.nodes=2",
            "slurm.gpus_per_node=4",
            "slurm.partition=gpu",
            "slurm.additional.reservation=mri",
            "slurm.check_resources=false",
            "--dry-run",
        )
    )
    assert gpu.returncode == 0, gpu.stderr
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "not checked against sinfo",
        "#SBATCH --partition=gpu",
        "#SBATCH --reservation=mri",
        "#SBATCH --signal=USR2@90",
        "recipe: resnet18_512",
    ):
        assert line in gpu.stdout, line
    assert len([ln for ln in gpu.stdout.splitlines() if "cuda:0" in ln]) == 8
    assert queue_ids() <= before  # no new job
    assert not list((out / "slurm").glob("*_submitted.pkl"))


def requeue_and_finish(jid: str, out: Path, deadline: float) -> None:
    """Release the requeued job at once (SLURM holds it back 2 minutes) and wait for its results."""
    released = False
    while not (out / "results.json").exists():
        assert time.time() < deadline, f"job {jid} did not finish after its requeue"
        if not released:
            info = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True).stdout
            if "Restarts=1" in info and "JobState=PENDING" in info:
                subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=True)
                released = True
        time.sleep(1)
    assert released, "the job was never requeued"


def test_preempted_two_node_job_stops_every_rank_at_one_step_and_keeps_every_epoch_once(tmp_path):
    out = tmp_path / "run"
    proc = run_script(
        python(
            SUBMIT, "recipe=demo", f"output_dir={out}", *TWO_NODES, "train.epochs=4", "tracking.wandb=offline", *SMALL
        )
    )
    assert proc.returncode == 0, proc.stderr
    jid = job_id(proc.stdout)
    deadline = time.time() + 600
    while not (out / "checkpoints" / "epoch_0001").is_dir():
        assert time.time() < deadline, "no first checkpoint"
        time.sleep(0.5)
    time.sleep(random.uniform(0.0, 3.0))  # anywhere in the epochs that follow
    wandb_id = (out / "wandb_id.txt").read_text()
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    requeue_and_finish(jid, out, deadline + 300)
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
    logs = [(out / "slurm" / f"{jid}_{rank}_log.out").read_text() for rank in (0, 1)]
    stops = [re.findall(r"\[brainmri\] rank (\d) on node (node\d): stop requested at step (\d+)", log) for log in logs]
    assert [s[0][:2] for s in stops] == [("0", "node1"), ("1", "node2")], logs
    assert len(stops[0]) == len(stops[1]) == 1 and stops[0][0][2] == stops[1][0][2]  # the same step on both nodes
    for log in logs:
        assert "attempt 1" in log and "attempt 2" in log
    err = (out / "slurm" / f"{jid}_0_log.err").read_text()
    assert "Requeued job" in err and "training stopped at epoch" in err
    assert (out / "wandb_id.txt").read_text() == wandb_id
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(wandb_id.strip()) for r in runs)


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"], ids=["killed-rank", "hung-rank"])
def test_a_lost_or_hung_rank_ends_the_attempt_names_the_rank_and_the_job_comes_back(tmp_path, fault):
    """Rank 1 on node2 killed (a dead process, as the OOM killer leaves it) or frozen (a hung
    one): rank 0 leaves its collective (the kill: at once; the hang: after
    train.collective_timeout), names the rank, its node and its last step from the heartbeats,
    and requeues the job, which resumes from its last checkpoint and keeps every epoch once."""
    out = tmp_path / "run"
    settings = [*TWO_NODES, "train.epochs=4", "tracking.wandb=disabled", *SMALL, "train.collective_timeout=20"]
    submit = python(SUBMIT, "recipe=demo", f"output_dir={out}", *settings, "train.checkpoint_minutes=0.05", "--wait")
    waiter = subprocess.Popen(submit, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (out / "slurm").is_dir() or not list((out / "slurm").glob("*_submitted.pkl")):
        assert time.time() < deadline and waiter.poll() is None, "not submitted"
        time.sleep(0.2)
    jid = next((out / "slurm").glob("*_submitted.pkl")).name.split("_")[0]
    beat = out / "heartbeats" / "rank_1.json"
    while not (out / "checkpoints" / "epoch_0001").is_dir() or not beat.is_file():
        assert time.time() < deadline, "no first checkpoint"
        time.sleep(0.5)
    time.sleep(random.uniform(0.0, 2.0))
    pid = json.loads(beat.read_text())["pid"]
    os.kill(pid, getattr(signal, fault))
    hit = time.time()
    log0 = out / "slurm" / f"{jid}_0_log.out"
    while "lost at step" not in (log0.read_text() if log0.exists() else ""):
        assert time.time() < hit + 120, f"rank 0 did not notice the {fault}"
        time.sleep(0.5)
    noticed = time.time() - hit
    requeue_and_finish(jid, out, deadline + 300)
    said, _ = waiter.communicate(timeout=300)
    assert waiter.returncode == 0 and "lost at step" in said and "requeued, attempt 2" in said, said[-3000:]
    line = re.search(
        r"\[brainmri\] rank 1 on node2 lost at step (\d+) \(its last heartbeat: step \d+, \d+ s ago, pid (\d+)\); "
        r"noticed by rank 0; requeued, attempt 2",
        log0.read_text(),
    )
    assert line and int(line.group(2)) == pid, log0.read_text()[-2000:]
    assert noticed < (60 if fault == "SIGKILL" else 20 + 60), noticed
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
    print(f"{fault}: noticed after {noticed:.0f} s")


def test_an_elastic_job_loses_a_node_and_finishes_on_the_other_with_the_same_global_batch(tmp_path):
    """slurm.nodes=1-2 on an idle cluster gets both nodes. Node2 dies (its slurmd and its rank
    killed, the node set DOWN): the job is requeued, SLURM starts it on node1 alone, and it
    resumes with twice the accumulation: the same optimizer steps per epoch (so the same
    schedule), every training image in every epoch, every epoch once."""
    out = tmp_path / "run"
    settings = ["slurm.nodes=1-2", "slurm.tasks_per_node=1", *CPU_JOB, "train.epochs=6", *SMALL]
    settings += ["tracking.wandb=disabled", "train.collective_timeout=20", "train.checkpoint_minutes=0.02"]
    waiter = subprocess.Popen(
        python(SUBMIT, "recipe=demo", f"output_dir={out}", *settings, "--wait"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 400
    beat = out / "heartbeats" / "rank_1.json"
    try:
        while not (out / "checkpoints" / "epoch_0002").is_dir() or not beat.is_file():
            assert time.time() < deadline and waiter.poll() is None, "no second checkpoint"
            time.sleep(0.2)
        jid = next((out / "slurm").glob("*_submitted.pkl")).name.split("_")[0]
        subprocess.run(["pkill", "-KILL", "-f", "^slurmd -N node2$"], check=True)
        os.kill(json.loads(beat.read_text())["pid"], signal.SIGKILL)  # a dead node's processes die with it
        subprocess.run(["scontrol", "update", "NodeName=node2", "State=DOWN", "Reason=elastic-test"], check=True)
        requeue_and_finish(jid, out, deadline + 200)
        said, _ = waiter.communicate(timeout=120)
    finally:
        waiter.kill()
        subprocess.run(["bash", str(REPO / "slurm" / "dev-cluster" / "up.sh")], capture_output=True, timeout=300)
    assert waiter.returncode == 0 and "RUNNING on node[1-2]" in said and "RUNNING on node1\n" in said, said[-3000:]
    err = (out / "slurm" / f"{jid}_0_log.err").read_text()
    assert "resumed on 1 of 2 nodes, grad_accum 1 -> 2" in err, err[-3000:]
    history = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    train_images = sum(1 for row in (out / "split.csv").read_text().splitlines()[1:] if row.split(",")[2] == "train")
    assert {r["train/samples"] for r in history} == {train_images}
    placements = [(r["ranks"], r["grad_accum"]) for r in history]
    assert placements[:2] == [(2, 1)] * 2 and placements[-1] == (1, 2), placements
    state = json.loads(next((out / "checkpoints").glob("epoch_0006")).joinpath("train_state.json").read_text())
    steps_per_epoch = -(-train_images // (16 * 2))  # batch 16 on each of the 2 planned ranks
    assert state["step"] == 6 * steps_per_epoch and state["world_size"] == 2 and state["ranks"] == 1


def test_a_slurm_budget_plans_from_the_jobs_own_time_left_and_ends_before_its_warning(tmp_path):
    """train.budget=slurm inside a 3-minute job: the window is squeue's time left less submitit's
    90 s USR2 warning, and the run ends (results.json) before that warning would stop it."""
    out = tmp_path / "run"
    settings = ["slurm.tasks_per_node=1", "slurm.gpus_per_node=0", "slurm.cpus_per_task=1", "slurm.timeout_min=3"]
    proc = run_script(
        python(SUBMIT, "recipe=demo", f"output_dir={out}", *settings, "train.budget=slurm", *SMALL, "--wait"),
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    plan = results["budget"]
    assert plan["budget"] == "slurm" and 0 < plan["seconds"] < 180 - 90
    assert results["wall_seconds"] < 180 - 90
    jid = job_id(proc.stdout)
    assert "stop requested" not in (out / "slurm" / f"{jid}_0_log.out").read_text()


def test_sweep_of_two_node_trials_one_array_then_nothing_then_status_then_only_the_unfinished(tmp_path):
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
        assert json.loads((Path(t["output_dir"]) / "results.json").read_text())["world_size"] == 2
        logs = "".join(
            (Path(t["output_dir"]).parent / "slurm" / f"{t['job_id']}_{r}_log.out").read_text() for r in (0, 1)
        )
        assert "on node node1" in logs and "on node node2" in logs
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

    # A failed trial (its results missing) is resubmitted; the finished one is not. A job
    # whose result is written may still be COMPLETING for a moment; the sweep counts that as
    # running (so two jobs never share a trial dir). Wait until SLURM lets go.
    ids = {t["job_id"] for t in trials}
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


def test_a_sweep_past_max_array_size_goes_out_as_several_arrays_with_one_manifest(tmp_path):
    """The dev cluster's MaxArraySize is 4: 6 trials are 2 arrays (4 + 2), one manifest, one
    status table; held, so that nothing runs, and a re-run submits nothing."""
    from brainmri.cluster.partition import max_array_size

    assert max_array_size() == 4
    sweep_file = tmp_path / "six.yaml"
    sweep_file.write_text(
        "recipe: demo\nmetric: val/acc\noverrides:\n  train.epochs: 1\n  slurm.gpus_per_node: 0\n"
        "  slurm.cpus_per_task: 1\n  slurm.additional: {hold: true}\n"
        "grid:\n  optim.lr: [1.0e-4, 2.0e-4, 3.0e-4, 4.0e-4, 5.0e-4, 6.0e-4]\n"
    )
    sweep_dir = tmp_path / "sweep"
    args = python(SWEEP, f"sweep={sweep_file}", f"output_dir={sweep_dir}", "tracking.wandb=disabled")
    proc = run_script(args)
    ids = set()
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        trials = json.loads((sweep_dir / "manifest.json").read_text())["trials"]
        ids = {t["job_id"] for t in trials}
        arrays = sorted({i.split("_")[0] for i in ids}, key=int)
        assert len(trials) == 6 and len(arrays) == 2, trials
        assert f"submitted 6 trial(s) as 2 array jobs {arrays[0]}, {arrays[1]}" in proc.stdout
        tasks = [sorted(int(i.split("_")[1]) for i in ids if i.startswith(f"{a}_")) for a in arrays]
        assert tasks == [[0, 1, 2, 3], [0, 1]]
        again = run_script(args)
        assert again.returncode == 0 and "nothing to submit: 0 completed, 6 pending or running" in again.stdout
        status = run_script(python(SWEEP, "status", str(sweep_dir)))
        assert status.returncode == 0 and sum("pending" in line for line in status.stdout.splitlines()) == 6
    finally:
        subprocess.run(["scancel", *{i.split("_")[0] for i in ids}], check=False)


def test_cv_sweep_runs_every_fold_as_one_array_and_reports_mean_and_std(tmp_path):
    """sweep.py cv=2: both settings x 2 folds in one job array (1 node each, 2 at a time);
    the folds of a setting partition Training, groups never straddle, each fold writes its
    out-of-fold probabilities; status shows mean ± std, writes the error-bar figure and logs
    it to one W&B summary run (offline) in the sweep's group."""
    sweep_dir = tmp_path / "cv"
    proc = run_script(
        python(
            SWEEP, "sweep=demo", "cv=2", "slurm.nodes=1", f"output_dir={sweep_dir}", "tracking.wandb=offline", "--wait"
        ),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    trials = manifest["trials"]
    assert manifest["cv"] == 2 and len(trials) == 4 and {t["state"] for t in trials} == {"completed"}
    assert len({t["job_id"].split("_")[0] for t in trials}) == 1  # ONE array job
    for base in ("t00-lr=0.001", "t01-lr=0.003"):
        folds = [sweep_dir / f"{base}-fold{f}" for f in (0, 1)]
        oof = [{r.split(",")[0] for r in (d / "val_predictions.csv").read_text().splitlines()[1:]} for d in folds]
        rows = [r.split(",") for r in (folds[0] / "split.csv").read_text().splitlines()[1:] if ",test," not in r]
        assert not oof[0] & oof[1] and oof[0] | oof[1] == {r[0] for r in rows}  # every Training image out-of-fold once
        group_of = {r[0]: r[3] for r in rows}
        assert not {group_of[p] for p in oof[0]} & {group_of[p] for p in oof[1]}
    status = run_script(python(SWEEP, "status", str(sweep_dir)))
    assert status.returncode == 0, status.stderr
    assert "2-fold cross-validation" in status.stdout and " ± " in status.stdout and "2/2" in status.stdout
    assert (sweep_dir / "cv_val_acc.png").read_bytes()[:4] == b"\x89PNG"
    assert "W&B summary run (offline); upload with: wandb sync" in " ".join(status.stdout.split())
    (summary_file,) = (sweep_dir / "wandb").glob("offline-run-*/run-*.wandb")
    wait_for_exit_record(summary_file)
    (run,) = [r.run for r in read_records(summary_file) if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "demo" and run.job_type == "cv-summary"
    assert summarize(summary_file)["summary"]["cv/val/acc/_type"] == "image-file"
    # The label audit reads the best setting's out-of-fold predictions. One epoch at 64 px
    # usually leaves the folds at chance, and then the audit must refuse to rank noise; folds
    # that beat the majority class get their label issues. Which one is due is decided here from
    # the same out-of-fold predictions.
    from brainmri.evaluation.label_audit import fold_skill
    from brainmri.evaluation.labels import read_out_of_fold

    oof = read_out_of_fold(sweep_dir)
    audit = run_script(
        python(str(REPO / "launch" / "audit.py"), "labels", str(sweep_dir), f"--out={tmp_path / 'labels'}")
    )
    if fold_skill(oof).learned:
        assert audit.returncode == 0, audit.stderr
        said = " ".join(audit.stdout.split())  # rich wraps long lines
        assert re.search(r"\d+ label issue\(s\) among 160 Training images \(setting t0\d-lr=0.00\d\)", said)
        issues = (tmp_path / "labels" / "label_issues.csv").read_text()
        assert issues.startswith("file,given,suggested,score,p_suggested\n")
    else:
        assert audit.returncode == 2 and "the folds have not learned" in audit.stderr, audit.stderr
        assert len(audit.stderr.strip().splitlines()) == 1 and not (tmp_path / "labels" / "label_issues.csv").exists()
    ensemble = run_script(python(str(REPO / "launch" / "evaluate.py"), f"run={sweep_dir}"))
    assert ensemble.returncode == 0, ensemble.stderr
    assert "the ensemble of 4 runs" in ensemble.stdout and (sweep_dir / "eval_test_ensemble.json").is_file()


def test_a_request_no_node_can_run_is_refused_before_submitting(tmp_path):
    """The new user's mistake: 2 tasks per node on 1-CPU nodes (sbatch would accept it and
    leave it pending with PartitionConfig forever)."""
    before = queue_ids()
    proc = run_script(
        python(
            SUBMIT,
            "recipe=demo",
            "slurm.gpus_per_node=0",
            "slurm.tasks_per_node=2",
            f"output_dir={tmp_path / 'run'}",
            "--wait",
        )
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: slurm.cpus_per_task=1 x slurm.tasks_per_node=2 = 2 CPUs per node; the largest node in partition debug has 1"
    ]
    assert queue_ids() <= before and not (tmp_path / "run").exists()


def test_wait_ends_on_a_reason_that_cannot_clear(tmp_path):
    """Unchecked (slurm.check_resources=false), 8 CPUs x 2 tasks on 1-CPU nodes: sbatch accepts
    it and it pends with PartitionConfig; --wait shows that and gives up at once with exit 1."""
    started = time.time()
    proc = run_script(
        python(
            SUBMIT,
            "recipe=demo",
            "slurm.gpus_per_node=0",
            "slurm.tasks_per_node=2",
            "slurm.cpus_per_task=8",
            "slurm.check_resources=false",
            f"output_dir={tmp_path / 'run'}",
            "--wait",
        ),
        timeout=120,
    )
    jid = job_id(proc.stdout)
    subprocess.run(["scancel", jid])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"job {jid}: PENDING (PartitionConfig)" in proc.stdout
    assert (
        f"job {jid}: cannot start: PartitionConfig (the request exceeds what partition's nodes offer); "
        f"it is still queued: scancel {jid}"
    ) in " ".join(proc.stdout.split())
    assert time.time() - started < 60


def test_wait_notices_a_job_cancelled_before_it_started(tmp_path):
    """No accounting: submitit alone would wait forever on a job that left the queue without a result."""
    proc = subprocess.Popen(
        python(
            SUBMIT,
            "recipe=demo",
            f"output_dir={tmp_path / 'run'}",
            *TWO_NODES,
            "slurm.additional.begin=now+3600",
            "--wait",
        ),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen = ""
    deadline = time.time() + 60
    while "PENDING (BeginTime)" not in seen:
        assert time.time() < deadline and proc.poll() is None, seen
        seen += proc.stdout.readline()
    jid = job_id(seen)
    subprocess.run(["scancel", jid], check=True)
    cancelled = time.time()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, seen + stdout + stderr
    assert time.time() - cancelled < 30
    assert re.search(
        rf"job {jid}: (ended CANCELLED before it started, without a result|left the queue without a result \(before it started)",
        " ".join((seen + stdout).split()),
    ), seen + stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["recipe=demo", "slurm.partion=x"],
            "error: unknown key 'slurm.partion' in the command line; did you mean 'slurm.partition'?",
        ),
        (
            ["recipe=demo", "slurm.partition=nosuchpartition", *CPU_JOB],
            "error: slurm.partition=nosuchpartition: no such partition (partitions: debug)",
        ),
        (
            ["recipe=demo", "slurm.partition=nosuchpartition", "slurm.check_resources=false", *CPU_JOB],
            "error: sbatch refused the job: invalid partition specified: nosuchpartition; Batch job submission failed: Invalid partition name specified",
        ),
    ],
)
def test_submit_bad_input_submits_nothing(tmp_path, args, message):
    before = queue_ids()
    proc = run_script(python(SUBMIT, *args, f"output_dir={tmp_path / 'run'}"))
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
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
