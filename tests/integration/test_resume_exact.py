"""Step-exact resume: a run stopped mid-epoch (a stop request, or SIGKILL after a rolling
checkpoint) and resumed with ``resume=auto`` ends with weights (and their ``train.ema``
average) bitwise identical to the same run uninterrupted, and ``metrics.jsonl`` holds every epoch once. Single process and 2-process
gloo DDP, one thread per process (oneDNN's kernels are deterministic at a fixed thread count).

The interruption lands at a step the test draws at random: a runner script wraps the training
step so that, on the chosen rank, its k-th call sets the stop event (or kills the process).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, fast_overrides, make_dataset, python, run_script, two_processes

RUNNER = """
import os, signal, sys, threading
from pathlib import Path

from brainmri.training import entry, step
from brainmri.training.distributed import TrainingInterrupted

k, on_rank, action = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
stop, calls, call = threading.Event(), [0], step.TrainStep.__call__


def counted(self, images, targets):
    out = call(self, images, targets)
    calls[0] += 1
    if calls[0] == k and int(os.environ.get("RANK", "0")) == on_rank:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        stop.set()
    return out


step.TrainStep.__call__ = counted
try:
    entry.main(sys.argv[4:], Path(os.environ["RECIPES"]), os.environ, stop_event=stop)
except TrainingInterrupted as e:
    print("stopped:", e, file=sys.stderr)
    sys.exit(3)
"""

EPOCHS, STEPS_PER_EPOCH = 3, 8


def settings(root: Path, out: Path) -> list[str]:
    """Augmentation, dropout and shuffling all draw random numbers: resume must replay them.
    The weight average's warm-up depends on its update count: resume must restore it."""
    return [
        *fast_overrides(root, out, epochs=EPOCHS),
        "train.ema=0.9",
        "augment.preset=cnn_study",
        "model.dropout=0.3",
        "data.val_fraction=0",
        "train.select_metric=last",
        "train.batch_size=4",
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("exact") / "data", train_per_class=8, test_per_class=2, size=40)


ENV = {"OMP_NUM_THREADS": "1", "RECIPES": str(REPO / "recipes")}


def interrupted(runner: Path, args: list[str], k: int, rank: int, action: str, processes: int) -> str:
    """Run with the step wrapped; returns stderr. Exit 3 (stopped) or SIGKILL's -9 expected."""
    tail = [str(k), str(rank), action, *args]
    if processes == 1:
        command = python(str(runner), *tail)
    else:
        command = two_processes(*args)
        command[command.index(str(REPO / "launch" / "train.py")) :] = [str(runner), *tail]
    proc = run_script(command, env=ENV, timeout=600)
    assert proc.returncode in (3, -9, 1), proc.stderr[-3000:]  # 1: the launcher's code for a killed rank
    return proc.stderr


def resume(args: list[str], processes: int) -> None:
    command = python(str(REPO / "launch" / "train.py"), *args, "resume=auto")
    if processes > 1:
        command = two_processes(*args, "resume=auto")
    proc = run_script(command, env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def uninterrupted(args: list[str], processes: int) -> None:
    command = python(str(REPO / "launch" / "train.py"), *args) if processes == 1 else two_processes(*args)
    proc = run_script(command, env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def assert_same_run(reference: Path, resumed: Path) -> None:
    """The trained weights and their average (train.ema: what best.safetensors holds) bitwise
    equal, and the average is not the trained model."""
    last = Path("checkpoints") / f"epoch_{EPOCHS:04d}"
    for name in ("best.safetensors", last / "model.safetensors", last / "ema.safetensors"):
        a, b = load_file(str(reference / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name} differs after the resume: {different}"
    best, average = load_file(str(resumed / "best.safetensors")), load_file(str(resumed / last / "ema.safetensors"))
    assert all(torch.equal(best[k], average[k]) for k in best)
    trained = load_file(str(resumed / last / "model.safetensors"))
    assert any(not torch.equal(best[k], trained[k]) for k in best)
    epochs = [json.loads(line)["epoch"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))


@pytest.mark.parametrize("processes", [1, 2], ids=["1-process", "2-process-gloo"])
def test_a_run_stopped_or_killed_mid_epoch_resumes_bitwise_identical(data, tmp_path, processes):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    reference = tmp_path / "reference"
    uninterrupted(settings(data, reference), processes)

    rng = random.Random(processes)
    per_rank = STEPS_PER_EPOCH // processes
    # A stop request on the last rank at a random step of epoch 2 (not an epoch's end).
    k = per_rank + rng.randrange(1, per_rank)
    stopped = tmp_path / "stopped"
    err = interrupted(runner, settings(data, stopped), k, processes - 1, "stop", processes)
    assert f"resume=auto continues from batch {k - per_rank} of epoch 2" in err, err[-2000:]
    assert (stopped / "checkpoints" / f"epoch_0001_batch_{k - per_rank:06d}").is_dir()
    resume(settings(data, stopped), processes)
    assert_same_run(reference, stopped)
    assert not list((stopped / "checkpoints").glob("*_batch_*"))  # a mid-epoch checkpoint is pruned once passed

    # SIGKILL at a random step, with a rolling checkpoint before nearly every step.
    k = rng.randrange(2, EPOCHS * per_rank)
    killed = tmp_path / "killed"
    rolling = [*settings(data, killed), "train.checkpoint_minutes=0.00001"]
    interrupted(runner, rolling, k, 0, "kill", processes)
    assert list((killed / "checkpoints").iterdir()), "no checkpoint before the kill"
    resume(rolling, processes)
    assert_same_run(reference, killed)
