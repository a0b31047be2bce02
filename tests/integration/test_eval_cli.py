"""launch/evaluate.py, predict.py and audit.py run as users run them, on a run trained here."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from brainmri.errors import BrainMRIError
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
    # fp32 (not the CPU's bf16 autocast): the PyTorch predictions the ONNX export must reproduce digit for digit
    proc = run_script(
        python(str(LAUNCH / "train.py"), *fast_overrides(root, out, epochs=2), "train.mixed_precision=no")
    )
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
    card = (out / "MODEL_CARD.md").read_text()  # every finished run has its model card
    acc = results["intervals"]["test/acc"]
    assert f"| accuracy | {results['test/acc']:.3f} | {acc['low']:.3f} - {acc['high']:.3f} |" in card
    assert "Leakage: 1 test image(s) have the same pixels as a Training image" in card
    assert "fitted on the val split" in card and "Not a diagnostic device" in card


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
    card = (refit / "MODEL_CARD.md").read_text()  # rewritten with the folds' temperature
    assert f"Temperature {cal['temperature']:.3f}, fitted on the CV folds' out-of-fold predictions" in card
    assert "Validation: none: a refit on all of Training" in card
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


def test_evaluate_reports_intervals_and_compares_two_models_paired(trained, tmp_path):
    """B is the same run with its epoch-1 weights; A - B is scored on the same test images."""
    root, out = trained
    other = tmp_path / "epoch1"
    shutil.copytree(out, other, ignore=shutil.ignore_patterns("checkpoints", "figures", "eval_*"))
    shutil.copy(out / "checkpoints" / "epoch_0001" / "model.safetensors", other / "best.safetensors")
    proc = run_script(python(str(LAUNCH / "evaluate.py"), f"run={out}", f"compare={other}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "eval_test.json").read_text())
    acc = report["intervals"]["test/acc"]
    assert acc["value"] == pytest.approx(report["test/acc"]) and acc["low"] <= acc["value"] <= acc["high"]
    assert report["intervals"]["bootstrap"]["resamples"] == 2000 and "95% CI" in " ".join(proc.stdout.split())
    comparison = report["comparison"]
    assert not (other / "eval_test.json").exists()  # B is only scored, never written into
    diff = comparison["difference"]["acc"]
    assert diff["value"] == pytest.approx(comparison["a"]["acc"]["value"] - comparison["b"]["acc"]["value"])
    assert diff["low"] <= diff["value"] <= diff["high"] and 0 <= comparison["mcnemar"]["p_value"] <= 1
    assert "McNemar" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["intervals"]["test/acc"]["value"] == pytest.approx(results["test/acc"])


def test_audit_labels_refuses_folds_at_chance_in_one_line(tmp_path):
    import torch

    from tests.unit.scoring.test_calibration import write_cv_sweep

    targets = torch.arange(80) % 4
    logits = torch.zeros(80, 4)
    logits[:, 0] = 5.0  # every image predicted glioma
    sweep = write_cv_sweep(tmp_path / "cv", logits, targets)
    proc = run_script(python(str(LAUNCH / "audit.py"), "labels", str(sweep), f"--out={tmp_path / 'labels'}"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "the folds have not learned: out-of-fold accuracy 0.250" in proc.stderr
    assert "out-of-fold accuracy 0.250" in proc.stdout.splitlines()[0]  # stated first
    assert not (tmp_path / "labels" / "label_issues.csv").exists()


def predictions_csv(models, inputs, out):
    """predict.py's CSV, made in this process (each subprocess costs seconds of imports)."""
    from brainmri.data.scanner import find_slices
    from brainmri.evaluation.predict import predict_images, write_csv

    rows = predict_images(models, find_slices(inputs), 64, "auto")
    write_csv(out, rows, models[0].class_names)
    return out.read_text()


def test_a_bare_weights_file_predicts_and_evaluates_as_its_run_directory(trained, tmp_path):
    """Only best.safetensors, copied away from its run: the same calibrated CSV and test scores."""
    from brainmri.evaluation.predict import load_predictors
    from brainmri.evaluation.trained import evaluate, split_samples

    root, out = trained
    bare = tmp_path / "alone" / "best.safetensors"
    bare.parent.mkdir()
    shutil.copy(out / "best.safetensors", bare)
    temperature = json.loads((out / "calibration.json").read_text())["temperature"]
    pred = tmp_path / "pred"
    proc = run_script(python(str(LAUNCH / "predict.py"), f"checkpoint={bare}", str(root / "Testing"), f"--out={pred}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = " ".join(proc.stdout.split())
    assert f"temperature {temperature:.3f} (fitted on the val split; read from best.safetensors's metadata)" in said
    with_run = load_predictors(str(out), None)
    assert (pred / "predictions.csv").read_text() == predictions_csv(
        with_run, [str(root / "Testing")], tmp_path / "r.csv"
    )
    (alone,) = load_predictors(None, str(bare))
    scores = [evaluate(m, split_samples(m, str(root), "test"), "test") for m in (alone, with_run[0])]
    assert scores[0].calibrated.metrics == scores[1].calibrated.metrics and scores[0].calibrated.fitted_on == "val"
    assert scores[0].metrics["confusion_matrix"] == scores[1].metrics["confusion_matrix"]
    assert (
        scores[0].leaks == scores[1].leaks == {"Testing/glioma_tumor/leak.jpg": "Training/glioma_tumor/image (0).jpg"}
    )


def test_export_onnx_passes_its_parity_check_and_predict_gives_the_same_csv(trained, tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort

    from brainmri.evaluation.predict import check_cam, load_predictors

    root, out = trained
    model = tmp_path / "model.onnx"
    proc = run_script(python(str(LAUNCH / "export.py"), f"run={out}", f"--out={model}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "parity on 13 test images" in " ".join(proc.stdout.split()) and "the same class for every image" in proc.stdout
    )
    props = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    dataset = json.loads((out / "dataset.json").read_text())
    temperature = json.loads((out / "calibration.json").read_text())["temperature"]
    assert props["class_names"] == "glioma,meningioma,notumor,pituitary" and props["image_size"] == "64"
    assert props["channels"] == str(dataset["channels"]) and float(props["temperature"]) == pytest.approx(temperature)
    assert [float(m) for m in props["mean"].split(",")] == pytest.approx(dataset["mean"], rel=1e-5)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # dynamic batch
        probs = session.run(["probabilities"], {"image": np.zeros((n, dataset["channels"], 64, 64), np.float32)})[0]
        assert probs.shape == (n, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    exported = load_predictors(None, str(model))  # what predict.py checkpoint=model.onnx loads
    assert "applied inside model.onnx" in exported[0].temperature_note()
    testing = [str(root / "Testing")]
    assert predictions_csv(exported, testing, tmp_path / "onnx.csv") == predictions_csv(
        load_predictors(str(out), None), testing, tmp_path / "run.csv"
    )
    with pytest.raises(BrainMRIError, match="--cam needs the PyTorch weights"):
        check_cam(exported)


def test_a_perturbed_onnx_model_fails_the_parity_check_and_is_never_written(trained, tmp_path, monkeypatch):
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    from brainmri.errors import CheckpointError
    from brainmri.evaluation import export
    from brainmri.evaluation.trained import load_trained

    root, out = trained
    trained_model = load_trained(str(out), None, torch.device("cpu"))
    images = export.sample_images(trained_model, sorted((root / "Testing").rglob("*.jpg")))
    good = export.export_onnx(trained_model, tmp_path / "good.onnx", images)
    assert good.parity.passed and good.parity.max_abs_diff < 1e-4 and good.parity.images == 13
    model = onnx.load(str(good.path))
    weight = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    array = numpy_helper.to_array(weight).copy()
    array += np.random.default_rng(0).normal(0, 0.5, array.shape).astype(array.dtype)
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(tmp_path / "perturbed.onnx"))
    reference = export.Exported(trained_model.model, "none", trained_model.calibration.temperature)
    parity = export.check_parity(tmp_path / "perturbed.onnx", reference, images)
    assert not parity.passed and parity.max_abs_diff > 1e-4
    assert "refusing to write" in export.refusal(tmp_path / "x.onnx", parity)
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # no model can pass: the export must refuse
    with pytest.raises(CheckpointError, match=r"refusing to write .*bad.onnx: ONNX Runtime does not reproduce"):
        export.export_onnx(trained_model, tmp_path / "bad.onnx", images)
    assert not list(tmp_path.glob("*bad.onnx*"))


def test_predict_reads_a_dicom_series_and_a_nifti_volume(trained, tmp_path):
    """One row per slice, in instance order for the series; volumes.csv summarizes each volume."""
    import nibabel as nib
    import numpy as np
    from PIL import Image

    from tests.unit.data.test_scanner import write_dicom

    root, out = trained
    images = [np.asarray(Image.open(p).convert("L")) for p in sorted((root / "Testing").rglob("*.jpg"))[:3]]
    series = tmp_path / "series"
    series.mkdir()
    for k, image in enumerate(images):
        write_dicom(series / f"s{2 - k}.dcm", image, instance=k + 1)
    volume = tmp_path / "brain.nii.gz"
    nib.save(
        nib.Nifti1Image(np.stack([np.flipud(im).T for im in images], axis=2).astype(np.float32), np.eye(4)), volume
    )
    pred = tmp_path / "pred"
    proc = run_script(python(str(LAUNCH / "predict.py"), f"run={out}", str(series), str(volume), f"--out={pred}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(pred / "predictions.csv")))
    assert [r["file"] for r in rows] == [str(series / f"s{2 - k}.dcm") for k in range(3)] + [
        f"{volume}#z{k:03d}" for k in range(3)
    ]
    summary = list(csv.DictReader(open(pred / "volumes.csv")))
    assert [s["volume"] for s in summary] == [str(series), str(volume)] and all(s["slices"] == "3" for s in summary)
    assert all(
        sum(int(s[f"votes_{c}"]) for c in ("glioma", "meningioma", "notumor", "pituitary")) == 3 for s in summary
    )
    assert summary[0]["tumour"] in ("glioma", "meningioma", "pituitary") and "volume(s)" in proc.stdout


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
