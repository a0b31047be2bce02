"""The real entry script, run as users run it: subprocesses, real files, real signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from brainmri.rundir import read_jsonl
from tests.conftest import REPO, fast_overrides, make_dataset, python, run_script, two_processes

TRAIN = str(REPO / "launch" / "train.py")
METRIC_KEYS = {
    "epoch",
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/macro_f1",
    "lr",
    "throughput",
    "epoch_time",
}


def test_demo_two_processes_ddp(tmp_path):
    """accelerate's torchrun launcher, 2 CPU processes over gloo, the bundled demo recipe,
    validated on a weight average (train.ema) that both ranks score with rank 0's statistics."""
    out = tmp_path / "demo"
    proc = run_script(
        two_processes(
            "recipe=demo",
            "train.epochs=2",
            "train.ema=0.5",
            f"output_dir={out}",
            "tracking.wandb=offline",
            "tracking.log_every=2",
        ),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2
    assert results["test/size"] == 40
    assert sum(map(sum, results["confusion_matrix"])) == 40  # every test image once, no padding duplicates
    assert results["class_names"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert set(results["per_class"]) == set(results["class_names"])
    assert 0 <= results["test/acc"] <= 1 and 0 <= results["test/macro_f1"] <= 1
    history = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(METRIC_KEYS <= set(r) for r in history)
    assert all(r["throughput"] > 0 and r["epoch_time"] > 0 for r in history)
    for name in ("config.yaml", "split.csv", "dataset.json", "best.safetensors"):
        assert (out / name).is_file(), name
    split_rows = (out / "split.csv").read_text().splitlines()[1:]
    assert len(split_rows) == 200
    # Both ranks shuffle alike and train disjoint halves: every training image each epoch
    # (the ranks' shuffles once differed, and a quarter of the images went unseen).
    train_rows = [r for r in split_rows if r.split(",")[2] == "train"]
    assert [r["train/samples"] for r in history] == [len(train_rows)] * 2
    assert [(r["ranks"], r["grad_accum"]) for r in history] == [(2, 1)] * 2
    # Calibration: a temperature fitted on the best weights' validation predictions, and
    # those predictions (every validation image once, across both ranks) beside it.
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["fitted_on"] == "val" and calibration["temperature"] > 0
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9
    val_rows = [r for r in split_rows if r.split(",")[2] == "val"]
    predicted = (out / "val_predictions.csv").read_text().splitlines()
    assert predicted[0] == "file,label,p_glioma,p_meningioma,p_notumor,p_pituitary"
    assert (
        sorted(r.split(",")[0] for r in predicted[1:]) == sorted(r.split(",")[0] for r in val_rows)
        and len(val_rows) == calibration["size"]
    )
    assert results["temperature"] == calibration["temperature"] and "test/ece_calibrated" in results
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0001", "epoch_0002"]
    assert proc.stdout.count("resolved config") == 1  # only the main process prints
    check_offline_wandb_run(out, results)
    # The average each epoch saved is what both ranks scored: one process scoring the best
    # epoch's (best.safetensors) on the validation split gets the score the run logged for it.
    assert all((out / "checkpoints" / e / "ema.safetensors").is_file() for e in ("epoch_0001", "epoch_0002"))
    proc = run_script(python(str(REPO / "launch" / "evaluate.py"), f"run={out}", "split=val", "tta=none"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    logged = next(r for r in history if r["epoch"] == results["best_epoch"])
    assert json.loads((out / "eval_val.json").read_text())["val/acc"] == pytest.approx(logged["val/acc"], abs=1e-9)


def check_offline_wandb_run(out: Path, results: dict) -> None:
    """Exactly one W&B run, config logged once, metrics, media and summary all inside."""
    from tests.wandb_records import summarize, wait_for_exit_record

    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run_id = (out / "wandb_id.txt").read_text().strip()
    assert runs[0].name.endswith(run_id)
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1
    wait_for_exit_record(files[0])
    data = summarize(files[0])
    assert data["run_ids"] == {run_id}
    assert data["config"]["optim"]["lr"] == pytest.approx(1e-3) and data["config"]["recipe"] == "demo"
    keys = set().union(*data["history"])
    assert {"train/loss", "val/acc", "val/macro_f1", "lr", "throughput", "epoch", "step/train_loss", "step/lr"} <= keys
    for media in (
        "data/augmentations",
        "data/class_distribution",
        "results/curves",
        "results/confusion_matrix_png",
        "results/gradcam",
    ):
        assert f"{media}/_type" in keys, media
    for table in ("test/confusion_matrix_table", "test/per_class", "data/classes_train", "data/classes_test"):
        assert any(k.startswith(table) for k in keys), table
    epochs = [row["epoch"] for row in data["history"] if "val/acc" in row]
    assert epochs == [1, 2]
    assert data["summary"]["test/acc"] == pytest.approx(results["test/acc"])
    for name in ("class_distribution", "augmentations", "confusion_matrix", "curves", "gradcam"):
        png = (out / "figures" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def test_kill_and_resume_keeps_every_epoch_exactly_once(tmp_path):
    """SIGKILL mid-epoch and mid-checkpoint-write; resume=auto each time; history stays exact."""
    root = make_dataset(tmp_path / "data", train_per_class=6, test_per_class=2, size=40)
    out = tmp_path / "run"
    args = python(TRAIN, *fast_overrides(root, out, epochs=6), "tracking.wandb=offline")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ckpts = out / "checkpoints"

    def checkpoint_being_written() -> bool:
        try:
            return ckpts.is_dir() and any(p.name.startswith(".tmp-") and any(p.iterdir()) for p in ckpts.iterdir())
        except FileNotFoundError:  # the folder was renamed to epoch_N between listing and looking: not now
            return False

    def epochs_done(n: int):
        return lambda: (
            ckpts.is_dir() and any(p.name >= f"epoch_{n:04d}" for p in ckpts.iterdir() if p.name.startswith("epoch_"))
        )

    kills = [checkpoint_being_written, epochs_done(3), checkpoint_being_written]
    for i, moment in enumerate(kills):
        extra = ["resume=auto"] if i else []
        proc = subprocess.Popen(args + extra, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hit = _wait_for(moment, 300, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert hit, f"kill {i} never saw its moment"
    final = run_script(args + ["resume=auto"], timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    history = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    results = json.loads((out / "results.json").read_text())
    assert sum(map(sum, results["confusion_matrix"])) == 8
    assert not any(p.name.startswith(".tmp-") for p in ckpts.iterdir())
    assert len([p for p in ckpts.iterdir()]) <= 3  # keep_checkpoints=2 plus the best
    # every restart continued the same W&B run
    run_id = (out / "wandb_id.txt").read_text().strip()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) >= 2 and all(r.name.endswith(f"-{run_id}") for r in runs)
    wandb_lines = [line for line in final.stderr.splitlines() if "W&B" in line or "wandb" in line]
    assert "upload it with: wandb sync" in " ".join(final.stderr.split()), wandb_lines  # on failure: what W&B said


def test_broken_wandb_still_trains_and_never_writes_the_key(tmp_path):
    """Online W&B pointed at a closed port: one warning, offline fallback, results.json, no key on disk."""
    root = make_dataset(tmp_path / "data", train_per_class=4, test_per_class=1, size=32)
    out = tmp_path / "run"
    key = "0123456789abcdef0123456789abcdef01234567"
    args = [a for a in fast_overrides(root, out, epochs=1) if not a.startswith("tracking.")]
    proc = run_script(
        python(TRAIN, *args, "tracking.wandb=online", "tracking.init_timeout=20"),
        env={"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": key, "WANDB_HTTP_TIMEOUT": "3"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("continuing offline") == 1, proc.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["test/size"] == 4
    assert len(read_jsonl(out / "metrics.jsonl")) == 1
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    for path in out.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"API key written to {path}"


def test_refuses_to_clobber_then_resume_and_overwrite(tmp_path):
    root = make_dataset(tmp_path / "data", train_per_class=4, test_per_class=1, size=32)
    out = tmp_path / "run"
    args = python(TRAIN, *fast_overrides(root, out, epochs=1))
    assert run_script(args).returncode == 0
    before = (out / "results.json").read_bytes()
    again = run_script(args)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: output_dir {out} already holds a run: add resume=auto to continue it, or overwrite=true to replace it"
    ]
    assert (out / "results.json").read_bytes() == before
    resumed = run_script(args + ["resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1]
    longer = run_script(args[:-1] + ["train.epochs=2", "resume=auto"])  # extend a finished run
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert "differs from" in longer.stderr and "train.epochs" in " ".join(longer.stderr.split())
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    fresh = run_script(args + ["overwrite=true"])
    assert fresh.returncode == 0
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1]


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", "error: unknown key 'optim.lrr' in the command line; did you mean 'optim.lr'?"),
        ("train.epochs=two", "error: train.epochs: Value 'two' of type 'str' could not be converted to Integer"),
        (
            "data.val_fraction=1.2",
            "error: data.val_fraction=1.2 is invalid: expected a fraction in [0, 1) (0: no validation)",
        ),
        (
            "data.val_fraction=0",
            "error: data.val_fraction=0 leaves no validation to choose epochs by "
            "train.select_metric=val/macro_f1: set train.select_metric=last",
        ),
    ],
)
def test_config_errors_are_one_line_exit_2(tmp_path, override, message):
    proc = run_script(python(TRAIN, "recipe=demo", f"output_dir={tmp_path / 'r'}", override))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


def test_bad_images_fail_before_anything_is_written(tmp_path):
    from tests.unit.data.test_datasets import plant_bad_images

    root = make_dataset(tmp_path / "data", train_per_class=3, test_per_class=1, size=32)
    plant_bad_images(root)
    out = tmp_path / "run"
    proc = run_script(python(TRAIN, *fast_overrides(root, out)))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: 4 unreadable image(s)"), proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("empty.jpg", "text.jpg", "truncated.jpg", "corrupt.jpg"):
        assert name in errors[0]
    assert not out.exists()
    skipped = run_script(python(TRAIN, *fast_overrides(root, out, epochs=1), "data.on_bad_image=skip"))
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert len((out / "bad_images.txt").read_text().splitlines()) == 4


def test_unknown_class_folder_and_missing_folder_via_cli(tmp_path):
    root = make_dataset(tmp_path / "data", train_per_class=2, test_per_class=1, size=32)
    (root / "Training" / "tumour").mkdir()
    proc = run_script(python(TRAIN, *fast_overrides(root, tmp_path / "r")))
    assert proc.returncode == 2 and "unknown class folder(s) ['tumour']" in proc.stderr
    proc = run_script(python(TRAIN, *fast_overrides(tmp_path / "nowhere", tmp_path / "r")))
    assert proc.returncode == 2 and "data.root does not exist" in proc.stderr


def test_no_testing_folder_trains_without_test_phase(tmp_path):
    root = make_dataset(tmp_path / "data", train_per_class=4, test_per_class=0, size=32)
    out = tmp_path / "run"
    proc = run_script(python(TRAIN, *fast_overrides(root, out, epochs=1)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no Testing/ folder" in proc.stderr
    assert json.loads((out / "results.json").read_text())["test"] is None


def test_masoud_layout_grayscale_cnn_study(tmp_path):
    """The other public layout, one channel, dataset-statistics normalization, class weights."""
    root = make_dataset(tmp_path / "data", layout="masoud", train_per_class=5, test_per_class=2, size=40)
    out = tmp_path / "run"
    proc = run_script(
        python(
            TRAIN,
            *fast_overrides(root, out, epochs=2),
            "augment.preset=cnn_study",
            "data.channels=1",
            "train.class_weights=true",
            "optim.schedule=cosine",
            "optim.warmup_epochs=1",
            "train.grad_accum=2",
            "train.grad_clip=1.0",
            "train.label_smoothing=0.1",
            "optim.name=sgd",
        )
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((out / "dataset.json").read_text())
    assert len(info["mean"]) == 1 and 0 < info["mean"][0] < 1 and info["std"][0] > 0
    assert json.loads((out / "results.json").read_text())["test/size"] == 8


@pytest.mark.parametrize("recipe", ["masoud_cpu30", "masoud_gpu"])
def test_the_scanner_robust_recipes_train_and_evaluate_as_they_trained(tmp_path, recipe):
    """The Masoud recipes as shipped (per-image z-score, intensity and resolution augmentation
    on the cached pipeline), shrunk to seconds: the run trains, its last epoch without the
    intensity steps (augment.intensity_until), and its weights carry the z-score to evaluation."""
    from brainmri.evaluation.trained import load_trained

    root = make_dataset(tmp_path / "data", layout="masoud", train_per_class=5, test_per_class=2, size=40)
    out = tmp_path / "run"
    args = [a for a in fast_overrides(root, out, epochs=2) if not a.startswith(("recipe=", "augment."))]
    proc = run_script(python(TRAIN, f"recipe={recipe}", "augment.intensity_until=0.5", *args))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "epoch 2: intensity and resolution augmentation off" in proc.stdout + proc.stderr
    assert json.loads((out / "results.json").read_text())["test/size"] == 8
    trained = load_trained(str(out))
    assert trained.normalize == "zscore" and trained.cfg.augment.gamma == [0.6, 1.6]


@pytest.mark.parametrize("pipeline", ["cached", "cached-host", "pil"])
def test_both_pipelines_train(tmp_path, pipeline):
    root = make_dataset(tmp_path / "data", train_per_class=5, test_per_class=2, size=48)
    out = tmp_path / "run"
    args = [a for a in fast_overrides(root, out, epochs=2) if not a.startswith(("augment.", "data.cache_dir"))]
    location = "data.cache_location=host" if pipeline == "cached-host" else "data.cache_location=auto"
    pipeline = pipeline.split("-")[0]
    proc = run_script(
        python(
            TRAIN,
            *args,
            f"data.pipeline={pipeline}",
            f"data.cache_dir={tmp_path / 'cache'}",
            location,
            "augment.preset=cnn_study",
            "train.channels_last=true",
        )
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["test/size"] == 8
    assert len(list((tmp_path / "cache").glob("*.npy"))) == (1 if pipeline == "cached" else 0)


def test_bench_writes_json_with_positive_numbers(tmp_path):
    proc = run_script(
        python(
            str(REPO / "launch" / "bench.py"),
            "recipe=demo",
            "--json",
            "--steps=2",
            "--warmup=1",
            "--rounds=2",
            "--pipelines=cached,pil",
            "--notebook",
            "data.image_size=64",
            "train.batch_size=8",
            f"data.cache_dir={tmp_path}",
        )
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The notebooks' recipe alternates with the first pipeline only, and the table says what auto chose.
    cached = result["cached"]
    assert cached["notebook_img_s"] > 0 and "notebook_img_s" not in result["pil"]
    assert cached["vs_notebook"] == pytest.approx(cached["train_img_s"] / cached["notebook_img_s"], rel=0.01)
    assert result["notebook"].startswith("fp32, PIL")
    precision = "fp32" if result["precision"] == "no" else result["precision"]
    assert result["auto_choices"][0].startswith(f"train.mixed_precision=auto -> {precision}: ")
    assert "data.num_workers=-1 -> 0: a cached pipeline on a CPU" in result["auto_choices"][1]
    assert "vs notebook" in proc.stdout and "auto: train.mixed_precision=auto" in proc.stdout
    for pipeline in ("cached", "pil"):
        for key in ("pipeline_img_s", "model_img_s", "train_img_s", "ratio"):
            assert result[pipeline][key] > 0, (pipeline, key)
    from brainmri.training.distributed import cpu_has_native_bf16, resolve_precision

    assert result["cache_build_s"] > 0 and result["peak_rss_mb"] > 0
    assert result["precision"] == resolve_precision("auto", torch.device("cpu"))
    assert result["cpu_native_bf16"] is cpu_has_native_bf16() and result["cpu"]
    assert result["device"].startswith("cpu") and result["cache_on_device"] is True
    assert result["steps"] == 2 and result["rounds"] == 2
    # ResNet18 at 64 px, one channel: about 0.84 GFLOP a training image (forward x 3).
    assert 0.6 < result["train_gflop_per_image"] < 1.1
    for pipeline in ("cached", "pil"):
        rates = result[pipeline]
        assert rates["train_tflops"] == pytest.approx(
            result["train_gflop_per_image"] * rates["train_img_s"] / 1e3, rel=0.02
        )
        if result["peak_tflops"] is not None:
            assert 0 < rates["fraction_of_peak"] < 1
    assert list(tmp_path.iterdir()) == []  # the benchmark's scratch cache is removed


def test_bench_without_reachable_pretrained_weights_is_the_one_line_train_gives(tmp_path):
    """A node without the weights in its cache and no hub: train.py and bench.py both say so
    in the same one line, before any data is read (bench.py printed huggingface_hub's traceback)."""
    args = ["recipe=resnet18_512", "model.pretrained=true", "data.root=/does/not/exist", f"data.cache_dir={tmp_path}"]
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    bench = run_script(python(str(REPO / "launch" / "bench.py"), *args), env=env)
    train = run_script(python(TRAIN, *args, f"output_dir={tmp_path / 'run'}"), env=env)
    assert bench.returncode == train.returncode == 2, bench.stderr[-2000:]
    line = "error: model.pretrained=true: resnet18's weights"
    assert bench.stderr.strip().splitlines() == train.stderr.strip().splitlines()[-1:]
    assert bench.stderr.startswith(line) and "Traceback" not in bench.stderr


def test_bench_rejects_a_bad_count_in_one_line(tmp_path):
    proc = run_script(
        python(str(REPO / "launch" / "bench.py"), "recipe=demo", "--steps=many", f"data.cache_dir={tmp_path}")
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --steps wants a whole number >= 1, got 'many'"]


STOP_SCRIPT = """
import os, sys, threading, time
from pathlib import Path
from brainmri.training import entry
from brainmri.training.engine import TrainingInterrupted

out, stop = Path(sys.argv[2]), threading.Event()

def request_stop_after_epoch_1():
    while not (out / "checkpoints" / "epoch_0001").is_dir():
        time.sleep(0.002)
    stop.set()

threading.Thread(target=request_stop_after_epoch_1, daemon=True).start()
try:
    entry.main(sys.argv[3:], Path(sys.argv[1]) / "recipes", os.environ, stop_event=stop)
except TrainingInterrupted as e:
    print("interrupted:", e)
"""


def test_single_process_stop_request_keeps_finished_epochs_and_resumes(tmp_path):
    """What a one-task SLURM job does on USR2, without SLURM: the stop request ends training
    at the next step, finished epochs stay, and resume=auto completes the run exactly once."""
    root = make_dataset(tmp_path / "data", train_per_class=6, test_per_class=2, size=48)
    out = tmp_path / "run"
    args = fast_overrides(root, out, epochs=4)
    proc = run_script([sys.executable, "-c", STOP_SCRIPT, str(REPO), str(out), *args])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "interrupted: stop requested" in proc.stdout
    assert not (out / "results.json").exists()
    stopped = [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")]
    assert stopped in ([1], [1, 2])  # the request lands during epoch 2 or at its end
    final = run_script(python(TRAIN, *args, "resume=auto"))
    assert final.returncode == 0, final.stderr[-2000:]
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]


FIXTURE = REPO / "tests" / "fixtures" / "run_v1"


def test_resumes_a_run_written_before_the_engine_was_split(tmp_path):
    """tests/fixtures/run_v1 is epoch 1 of 2 as brainmri 0.1 (commit 0545f91) wrote it; today's
    Trainer continues it: the old history stays exactly, the schedule goes on from step 8."""
    out = tmp_path / "run"
    shutil.copytree(FIXTURE, out)
    proc = run_script(
        python(
            TRAIN,
            "recipe=demo",
            "model.name=cnn0",
            "data.image_size=64",
            "data.channels=3",
            "optim.lr=2e-3",
            "train.epochs=2",
            "train.batch_size=16",
            "augment.preset=none",
            "tracking.wandb=disabled",
            f"output_dir={out}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "resume=auto",
        )
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = read_jsonl(out / "metrics.jsonl")
    assert history[0] == read_jsonl(FIXTURE / "metrics.jsonl")[0]
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["lr"] == pytest.approx(0.00138268590163136)  # one-cycle over 16 steps, at step 8
    state = json.loads((out / "checkpoints" / "epoch_0002" / "train_state.json").read_text())
    assert state["step"] == 16 and [r["epoch"] for r in state["history"]] == [1, 2]
    assert json.loads((out / "results.json").read_text())["test/size"] == 40
    assert "differs from" in proc.stderr and "train.epochs" in proc.stderr  # extended on purpose, and said so


def test_compiled_ddp_run_writes_weights_that_evaluate_loads(tmp_path):
    """train.compile=true under 2-process DDP: the model is DDP(compiled); its best weights,
    Grad-CAM and the checkpoint's repair all see the plain model's keys, and evaluate.py and
    predict.py load best.safetensors (they refused ``_orig_mod.`` keys before)."""
    from safetensors import safe_open

    root = make_dataset(tmp_path / "data", train_per_class=6, test_per_class=2, size=40)
    out = tmp_path / "run"
    proc = run_script(
        two_processes(*fast_overrides(root, out, epochs=1), "train.compile=true"),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with safe_open(str(out / "best.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("_orig_mod" in k or k.startswith("module.") for k in keys), keys[:3]
    assert (out / "figures" / "gradcam.png").is_file()
    evaluated = run_script(python(str(REPO / "launch" / "evaluate.py"), f"run={out}", f"data.root={root}"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    image = next((root / "Testing").rglob("*.jpg"))
    predicted = run_script(
        python(
            str(REPO / "launch" / "predict.py"),
            f"checkpoint={out / 'best.safetensors'}",
            str(image),
            "--out",
            str(tmp_path / "predictions"),
        )
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]


def test_a_wall_clock_budget_plans_the_epochs_lays_the_schedule_over_them_and_ends_on_time(tmp_path):
    """train.budget=40s on the demo: the plan's epochs are the epochs trained (the last cut short
    where the plan says), the one-cycle schedule is laid over the planned steps, and results.json
    arrives within the budget, with the tolerance a shared 2-core machine needs."""
    out = tmp_path / "budget"
    proc = run_script(
        python(
            TRAIN,
            "recipe=demo",
            "train.budget=40s",
            "data.image_size=64",
            f"output_dir={out}",
            "tracking.wandb=disabled",
        ),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "planned: budget 40s: step" in proc.stderr + proc.stdout
    results = json.loads((out / "results.json").read_text())
    plan = results["budget"]
    history = read_jsonl(out / "metrics.jsonl")
    assert plan["budget"] == "40s" and plan["epochs"] == len(history) >= 2
    assert results["wall_seconds"] <= 40 * 1.25, results["wall_seconds"]
    state = json.loads((out / "checkpoints" / f"epoch_{len(history):04d}" / "train_state.json").read_text())
    assert state["plan"] == plan and state["used_seconds"] > 0
    # One-cycle over exactly the planned steps (128 training images, batch 8: 16 a epoch), rising
    # from its start (lr/25) and, at the last epoch's start, already on its way down.
    last = 16 if plan["last_steps"] is None else plan["last_steps"]
    assert state["step"] == 16 * (plan["epochs"] - 1) + last and 0 < last <= 16
    assert [r["train/samples"] for r in history] == [128] * (len(history) - 1) + [8 * last]
    lrs = [r["lr"] for r in history]
    assert lrs[0] == pytest.approx(1e-3 / 25, rel=0.05) and lrs[-1] < 0.95e-3
