"""brainmri/cluster/jobs.py: the job logic, without a cluster: the arguments a job trains with, its
name, the executor and sbatch script, requeueing, and the one-line errors."""

from __future__ import annotations

import subprocess

import pytest

from brainmri.cluster import jobs as cluster
from brainmri.config import SlurmConfig


def test_train_args_fix_the_output_dir_and_derive_workers_from_cpus(tmp_path):
    args, workers = cluster.train_args(
        ["recipe=demo", "output_dir=/elsewhere", "resume=never", "overwrite=true", "optim.lr=1"],
        tmp_path,
        cpus_per_task=4,
        data_workers=-1,
    )
    assert args == ["recipe=demo", "optim.lr=1", f"output_dir={tmp_path}", "data.num_workers=3"] and workers == 3
    args, workers = cluster.train_args(["recipe=demo"], tmp_path, cpus_per_task=1, data_workers=2)
    assert args == ["recipe=demo", f"output_dir={tmp_path}"] and workers == 2
    assert cluster.train_args([], tmp_path, cpus_per_task=1, data_workers=-1)[1] == 0


def test_an_elastic_job_trains_for_the_ranks_of_its_most_nodes(tmp_path):
    slurm = SlurmConfig(nodes="1-2", gpus_per_node=4)
    assert slurm.planned_world == 8 and SlurmConfig(nodes=2).planned_world is None
    args, _ = cluster.train_args(["recipe=demo"], tmp_path, 1, 0, slurm.planned_world)
    assert args[-1] == "train.world_size=8"
    mine, _ = cluster.train_args(["recipe=demo", "train.world_size=4"], tmp_path, 1, 0, 8)
    assert [a for a in mine if a.startswith("train.world_size")] == ["train.world_size=4"]  # the user's own wins
    assert cluster.result_tasks(slurm) == 1 and cluster.result_tasks(SlurmConfig(nodes=2, gpus_per_node=4)) == 8


def test_job_name():
    assert cluster.job_name(SlurmConfig(), "demo") == "brainmri-demo"
    assert cluster.job_name(SlurmConfig(), None, "-sweep") == "brainmri-run-sweep"
    assert cluster.job_name(SlurmConfig(job_name="mine"), "demo") == "mine"


def test_requeue_counts_down_to_the_limit():
    job = cluster.TrainJob(["recipe=demo"], max_requeues=2)
    again = job.checkpoint()
    assert again.function.requeues == 1 and again.function.args == ["recipe=demo"]
    assert again.function.checkpoint().function.requeues == 2
    assert cluster.TrainJob([], max_requeues=2, requeues=2).checkpoint() is None


def test_executor_takes_every_slurm_key_into_the_sbatch_script(tmp_path, monkeypatch):
    import submitit.slurm.slurm

    # submitit looks for srun before writing a script; the script itself needs no cluster.
    monkeypatch.setattr(submitit.slurm.slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    slurm = SlurmConfig(
        partition="gpu",
        gpus_per_node=4,
        nodes=2,
        cpus_per_task=6,
        mem_gb=64,
        account="lab",
        setup=["module load cuda"],
        additional={"reservation": "mri"},
    )
    script = cluster.sbatch_preview(cluster.make_executor(tmp_path, slurm, "brainmri-x"))
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=6",
        "#SBATCH --account=lab",
        "#SBATCH --reservation=mri",
        "#SBATCH --job-name=brainmri-x",
        "module load cuda",
    ):
        assert line in script, line
    assert "PYTHON" + "PATH" not in script  # the job imports the installed brainmri like any program
    local = cluster.make_executor(tmp_path, SlurmConfig(cluster="local", gpus_per_node=0), "x")
    assert "no sbatch script" in cluster.sbatch_preview(local)


def test_an_elastic_executor_asks_a_node_range_without_tasks_per_node(tmp_path, monkeypatch):
    import submitit.slurm.slurm

    monkeypatch.setattr(submitit.slurm.slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    slurm = SlurmConfig(nodes="1-2", gpus_per_node=4, cpus_per_task=6, additional={"reservation": "mri"})
    script = cluster.sbatch_preview(cluster.make_executor(tmp_path, slurm, "x"))
    lines = script.splitlines()
    # With --ntasks-per-node SLURM counts MIN x tasks and gives MIN nodes even when MAX are free.
    assert "#SBATCH --nodes=1-2" in lines and not any("ntasks-per-node" in line for line in lines if "SBATCH" in line)
    assert "#SBATCH --cpus-per-task=24" in lines and "#SBATCH --gpus-per-node=4" in lines
    assert "#SBATCH --reservation=mri" in lines
    srun = next(line for line in lines if line.startswith("srun "))
    assert "--ntasks-per-node=4 --cpus-per-task=6" in srun


def test_sbatch_refusals_become_one_line():
    error = subprocess.CalledProcessError(1, ["sbatch"], output=b"sbatch: error: invalid partition specified: gpu\n")
    lines = ["sbatch: error: Batch job submission failed: Invalid partition name specified"]
    assert cluster.submit_error(error, lines) == (
        "Batch job submission failed: Invalid partition name specified; invalid partition specified: gpu"
    )
    assert cluster.submit_error(RuntimeError("boom"), []) == "boom"


def test_job_error_prefers_our_own_error_line(tmp_path):
    log = tmp_path / "0_log.err"
    log.write_text("Traceback ...\nValueError: deep inside\nerror: data.root does not exist: /nope\n")
    assert cluster.job_error(log) == "error: data.root does not exist: /nope"
    log.write_text("x\n[2026-11-28 02:50:00] [rank 0]: RuntimeError: launch/train.py exited with code 2\n")
    assert cluster.job_error(log) == "RuntimeError: launch/train.py exited with code 2"
    assert cluster.job_error(tmp_path / "absent") == "(no log)"


def test_the_sbatch_preview_fails_loudly_if_submitits_private_writer_changes(tmp_path, monkeypatch):
    """The one private use of submitit (no public accessor for the script): a submitit release
    that renames it gives one clear error, not an AttributeError deep in a dry run."""
    import submitit

    from brainmri.errors import BrainMRIError

    monkeypatch.setattr(submitit.slurm.slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    executor = cluster.make_executor(tmp_path, SlurmConfig(gpus_per_node=0, tasks_per_node=1), "x")
    monkeypatch.setattr(executor, "_executor", object())  # a submitit whose internals moved
    with pytest.raises(BrainMRIError, match=r"no longer has the sbatch writer"):
        cluster.sbatch_preview(executor)


def test_node_lists_are_expanded_by_slurms_own_parser():
    from brainmri.cluster.waiting import expand_hostlist

    assert expand_hostlist("node[1-3,5],gpu07") == ["node1", "node2", "node3", "node5", "gpu07"]
