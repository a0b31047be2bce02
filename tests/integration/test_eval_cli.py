"""launch/evaluate.py, predict.py and audit.py run as users run them, on a run trained here."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from tests.conftest import REPO, fast_overrides, make_dataset, python, run_script
from tests.unit.test_weights import plant

LAUNCH = REPO / "launch"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run on a tiny dataset with one test image copied from Training (a leak)."""
    tmp = tmp_path_factory.mktemp("eval")
    root = make_dataset(tmp / "data", train_per_class=6, test_per_class=3, size=48)
    shutil.copy(root / "Training/glioma_tumor/image (0).jpg", root / "Testing/glioma_tumor/leak.jpg")
    out = tmp / "run"
    proc = run_script(python(str(LAUNCH / "train.py"), *fast_overrides(root, out, epochs=2)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, out


def test_training_results_hold_every_metric_and_a_gradcam_figure(trained):
    root, out = trained
    results = json.loads((out / "results.json").read_text())
    for key in ("acc", "balanced_acc", "macro_f1", "weighted_f1", "auroc_macro", "ece", "loss"):
        assert f"test/{key}" in results, key
    assert set(results["per_class"]["glioma"]) == {"precision", "recall", "specificity", "f1", "auroc", "support"}
    assert (out / "figures" / "gradcam.png").read_bytes()[:8] == PNG
    assert (out / "test_leaks.tsv").read_text().splitlines()[
        1
    ] == "Testing/glioma_tumor/leak.jpg\tTraining/glioma_tumor/image (0).jpg"
    assert json.loads((out / "dataset.json").read_text())["train_test_leaks"] == 1


def test_evaluate_writes_json_pngs_and_the_leakage_free_score(trained):
    root, out = trained
    proc = run_script(python(str(LAUNCH / "evaluate.py"), f"run={out}", "tta=hflip"))  # the run trained with tta=none
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "eval_test.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert report["size"] == 13 and report["tta"] == "hflip"
    assert report["train_test_leaks"] == 1 and report["leaked_files"] == ["Testing/glioma_tumor/leak.jpg"]
    assert report["leakage_free"]["size"] == 12
    assert sum(map(sum, report["confusion_matrix"])) == 13
    assert sum(map(sum, report["leakage_free"]["confusion_matrix"])) == 12
    for name in ("confusion_matrix", "roc", "reliability"):
        assert (out / "figures" / f"eval_test_{name}.png").read_bytes()[:8] == PNG
    assert "do not duplicate a Training image" in proc.stdout
    # without TTA the same weights on the same split give results.json's numbers
    proc = run_script(python(str(LAUNCH / "evaluate.py"), f"run={out}"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = json.loads((out / "eval_test.json").read_text())
    assert plain["test/acc"] == pytest.approx(results["test/acc"], abs=1e-6)
    assert plain["confusion_matrix"] == results["confusion_matrix"]
    proc = run_script(
        python(str(LAUNCH / "evaluate.py"), f"run={out}", "split=val", f"checkpoint={out / 'best.safetensors'}")
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    val = json.loads((out / "eval_val.json").read_text())
    assert val["size"] == 4 and val["leakage_free"] is None


def test_refit_without_validation_scores_the_last_epoch_with_tta_and_evaluate_reproduces_it(tmp_path):
    """data.val_fraction=0: every Training image trains, the final epoch is scored with flip
    TTA, there is no temperature to fit, and evaluate.py (tta=auto) gives the same numbers."""
    root = make_dataset(tmp_path / "data", train_per_class=6, test_per_class=3, size=48)
    out = tmp_path / "run"
    proc = run_script(
        python(
            str(LAUNCH / "train.py"),
            *fast_overrides(root, out, epochs=2),
            "data.val_fraction=0",
            "train.select_metric=last",
            "train.tta=hflip",
        )
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no validation" in proc.stderr
    with open(out / "split.csv", newline="") as f:
        assert sorted(row["split"] for row in csv.DictReader(f)) == ["test"] * 12 + ["train"] * 24
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and not any(k.startswith("val/") for r in rows for k in r)
    results = json.loads((out / "results.json").read_text())
    assert results["best_epoch"] == 2 and results["select_metric"] == "last" and results["tta"] == "hflip"
    assert results["test/size"] == 12 and "val/acc" not in results and "temperature" not in results
    assert not (out / "calibration.json").exists() and (out / "figures" / "gradcam.png").read_bytes()[:8] == PNG
    proc = run_script(python(str(LAUNCH / "evaluate.py"), f"run={out}"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "eval_test.json").read_text())
    assert report["tta"] == "hflip" and report["calibration"] is None
    assert report["test/acc"] == pytest.approx(results["test/acc"], abs=1e-6)
    assert report["confusion_matrix"] == results["confusion_matrix"]
    proc = run_script(python(str(LAUNCH / "evaluate.py"), f"run={out}", "split=val"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(
        "trained on all of Training (data.val_fraction=0)"
    )


def test_a_refit_is_calibrated_by_its_folds_and_evaluate_and_predict_apply_it(tmp_path):
    """Two real CV folds and a refit of one recipe; calibrate.py fits the temperature on the folds'
    out-of-fold predictions, and evaluate.py reports ECE before and after it."""
    from brainmri.cluster.sweep import TrialRecord, write_manifest

    root = make_dataset(tmp_path / "data", train_per_class=6, test_per_class=3, size=48)
    common = ["train.select_metric=last", "train.tta=hflip"]
    records = []
    for fold in range(2):
        out = tmp_path / "cv" / f"t00-fold{fold}"
        proc = run_script(
            python(str(LAUNCH / "train.py"), *fast_overrides(root, out), *common, "data.folds=2", f"data.fold={fold}")
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        records.append(
            TrialRecord(
                fold, out.name, {"data.folds": 2, "data.fold": fold}, str(out), state="completed", base="t00", fold=fold
            )
        )
    write_manifest(
        tmp_path / "cv" / "manifest.json", "cv", "cv.yaml", records, {"metric": "val/acc", "cv": 2, "varying": []}
    )
    refit = tmp_path / "refit"
    proc = run_script(python(str(LAUNCH / "train.py"), *fast_overrides(root, refit), *common, "data.val_fraction=0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_script(python(str(LAUNCH / "calibrate.py"), str(refit), str(tmp_path / "cv")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    cal = json.loads((refit / "calibration.json").read_text())
    assert cal["fitted_on"] == "cv" and cal["size"] == 24 and cal["temperature"] > 0  # every Training image once
    assert f"temperature {cal['temperature']:.3f} from 24 out-of-fold predictions" in proc.stdout
    proc = run_script(python(str(LAUNCH / "evaluate.py"), f"run={refit}"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((refit / "eval_test.json").read_text())
    assert report["calibration"]["fitted_on"] == "cv" and report["calibration"]["temperature"] == cal["temperature"]
    assert "from the CV folds' out-of-fold predictions" in proc.stdout
    proc = run_script(
        python(str(LAUNCH / "predict.py"), f"run={refit}", str(root / "Testing"), f"--out={tmp_path / 'pred'}")
    )
    assert proc.returncode == 0 and f"calibrated at temperature {cal['temperature']:.2f}" in proc.stdout
    # a run with its own validation split keeps its own temperature
    proc = run_script(python(str(LAUNCH / "calibrate.py"), str(tmp_path / "cv" / "t00-fold0"), str(tmp_path / "cv")))
    assert proc.returncode == 2 and proc.stderr.strip().endswith("calibrate.py is for refits (data.val_fraction=0)")


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "usage: python launch/calibrate.py RUN_DIR CV_SWEEP_DIR [--setting NAME]"),
        (
            ["/nonexistent/run", "/nonexistent/cv"],
            "/nonexistent/run is not a finished run (no config.yaml or best.safetensors)",
        ),
        (["a", "b", "--settting=t00"], "unknown option --settting"),
    ],
)
def test_calibrate_bad_input_is_one_line(args, message):
    proc = run_script(python(str(LAUNCH / "calibrate.py"), *args))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "run=RUN_DIR or checkpoint=FILE"),
        (["run=/nonexistent/run"], "run directory not found"),
        (["splt=val", "run=x"], "did you mean 'split'"),
        (["split=train", "run=x"], "split='train' is invalid"),
    ],
)
def test_evaluate_bad_input_is_one_line(args, message):
    proc = run_script(python(str(LAUNCH / "evaluate.py"), *args))
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_evaluate_refuses_a_malicious_checkpoint(trained, tmp_path):
    root, out = trained
    marker = tmp_path / "pwned"
    evil = plant(tmp_path / "evil.pth", marker)
    proc = run_script(python(str(LAUNCH / "evaluate.py"), f"run={out}", f"checkpoint={evil}"))
    assert proc.returncode == 2 and "refusing to load" in proc.stderr and "nothing in it was run" in proc.stderr
    assert not marker.exists()


def test_resume_refuses_a_planted_pickle_in_a_checkpoint(trained, tmp_path):
    root, out = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    marker = tmp_path / "pwned"
    plant(copy / "checkpoints" / "epoch_0002" / "random_states_0.pkl", marker)
    args = [a for a in fast_overrides(root, copy, epochs=3)] + ["resume=auto"]
    proc = run_script(python(str(LAUNCH / "train.py"), *args))
    assert proc.returncode == 2 and "refusing to load" in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists()
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["epoch_0001", "epoch_0002"]  # nothing lost


def test_predict_csv_table_and_gradcam_overlays(trained, tmp_path):
    root, out = trained
    pred = tmp_path / "pred"
    proc = run_script(
        python(
            str(LAUNCH / "predict.py"),
            f"run={out}",
            str(root / "Testing" / "no_tumor"),
            str(root / "Training" / "glioma_tumor" / "image (1).jpg"),
            "--cam",
            "--out",
            str(pred),
        )
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(pred / "predictions.csv")))
    assert len(rows) == 4
    assert set(rows[0]) == {"file", "predicted", "confidence", "p_glioma", "p_meningioma", "p_notumor", "p_pituitary"}
    for row in rows:
        probs = [float(row[f"p_{c}"]) for c in ("glioma", "meningioma", "notumor", "pituitary")]
        assert sum(probs) == pytest.approx(1.0, abs=2e-3) and row["predicted"] in (
            "glioma",
            "meningioma",
            "notumor",
            "pituitary",
        )
    cams = sorted(p.name for p in (pred / "cam").iterdir())
    assert len(cams) == 4 and all(c.endswith("_cam.png") for c in cams)
    from PIL import Image

    assert Image.open(pred / "cam" / cams[0]).size == (48, 48)  # the slice's own resolution


def test_predict_bad_input_names_the_culprit(trained, tmp_path):
    root, out = trained
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    proc = run_script(python(str(LAUNCH / "predict.py"), f"run={out}", str(broken)))
    assert proc.returncode == 2 and "broken.jpg" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_script(python(str(LAUNCH / "predict.py"), f"run={out}", str(tmp_path / "missing")))
    assert proc.returncode == 2 and "no such image or folder" in proc.stderr


def test_audit_cli_writes_json_outside_the_dataset(trained, tmp_path):
    root, _ = trained
    proc = run_script(python(str(LAUNCH / "audit.py"), f"data.root={root}", "--out", str(tmp_path / "report")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "report" / "audit.json").read_text())
    assert ["Testing/glioma_tumor/leak.jpg", "Training/glioma_tumor/image (0).jpg"] in report["exact_groups"]
    assert "near_groups" in report and report["summary"]["test_images_byte_identical_to_training"] == 1
    assert "Training/Testing leakage" in proc.stdout
    proc = run_script(python(str(LAUNCH / "audit.py"), f"data.root={root}", "--out", str(root / "reports")))
    assert proc.returncode == 2 and "never writes into data.root" in proc.stderr and not (root / "reports").exists()
    proc = run_script(python(str(LAUNCH / "audit.py"), "data.root=/nonexistent"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_robustness_report_scores_every_corruption_in_memory_and_its_clean_row_is_evaluates(trained):
    root, out = trained
    files = sorted(p for p in root.rglob("*") if p.is_file())
    before = [(p, p.stat().st_mtime_ns, p.read_bytes()) for p in files]
    proc = run_script(python(str(LAUNCH / "evaluate.py"), f"run={out}", "robustness=true"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "robustness_test.json").read_text())
    names = ["gamma_up", "gamma_down", "contrast", "brightness", "noise", "jpeg", "resolution", "blur"]
    assert list(report["corruptions"]) == names and report["size"] == 13
    accs = []
    for name in names:
        severities = report["corruptions"][name]["severities"]
        assert list(severities) == ["1", "2", "3", "4", "5"]
        accs += [severities[s]["acc"] for s in severities]
    assert all(0 <= a <= 1 for a in accs)
    assert report["mean_corruption_acc"] == pytest.approx(sum(accs) / len(accs))
    worst = report["worst"]
    assert worst["acc"] == min(accs) and worst["drop"] == pytest.approx(report["clean_acc"] - min(accs))
    assert (out / "figures" / "robustness_test.png").read_bytes()[:8] == PNG
    assert "mean corruption accuracy" in proc.stdout and "worst:" in proc.stdout
    # the clean row is evaluate.py's accuracy (same weights, split and TTA)
    proc = run_script(python(str(LAUNCH / "evaluate.py"), f"run={out}"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert report["clean_acc"] == pytest.approx(json.loads((out / "eval_test.json").read_text())["test/acc"], abs=1e-9)
    # the corrupted copies lived in memory: the dataset folder is byte for byte as it was
    assert sorted(p for p in root.rglob("*") if p.is_file()) == files
    assert [(p, p.stat().st_mtime_ns, p.read_bytes()) for p in files] == before
