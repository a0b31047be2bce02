"""The audit finds planted copies (exact, re-encoded, resized), label conflicts and leakage;
data.dedup=train_test removes exactly the planted exact leaks."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from brainmri.data.scan import scan_dataset
from brainmri.data.splits import SplitRule
from brainmri.evaluation.audit import audit
from brainmri.evaluation.audit_report import show_audit
from tests.conftest import LAYOUTS


def distinct_image(seed: int, size: int = 64) -> Image.Image:
    """A smooth random pattern: every seed gives a perceptually different image."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8), mode="L")
    return coarse.resize((size, size), Image.BICUBIC).convert("RGB")


def distinct_dataset(root: Path, train: int = 5, test: int = 2) -> Path:
    seed = 0
    for split, n in (("Training", train), ("Testing", test)):
        for folder in LAYOUTS["sartaj"]:
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                distinct_image(seed).save(root / split / folder / f"image ({i}).jpg", quality=95)
                seed += 1
    return root


@pytest.fixture
def planted(tmp_path):
    """Distinct images plus: a byte copy and a lossless PNG re-save of Training images in
    Testing (exact leaks), a re-encoded and a resized copy in Testing (near leaks), and a
    glioma image copied into the meningioma folder (label conflict)."""
    root = distinct_dataset(tmp_path / "data")
    tr = root / "Training"
    te = root / "Testing"
    shutil.copy(tr / "glioma_tumor/image (0).jpg", te / "glioma_tumor/copy.jpg")
    Image.open(tr / "no_tumor/image (1).jpg").save(te / "no_tumor/resaved.png")
    Image.open(tr / "pituitary_tumor/image (2).jpg").save(te / "pituitary_tumor/reencoded.jpg", quality=60)
    Image.open(tr / "meningioma_tumor/image (3).jpg").resize((48, 48), Image.BILINEAR).save(
        te / "meningioma_tumor/resized.jpg", quality=95
    )
    shutil.copy(tr / "glioma_tumor/image (4).jpg", tr / "meningioma_tumor/mislabeled.jpg")
    return root


def test_audit_finds_planted_copies_and_conflicts(planted):
    report = audit(planted, near_threshold=6, workers=2)
    exact = [set(g) for g in report["exact_groups"]]
    assert {"Training/glioma_tumor/image (0).jpg", "Testing/glioma_tumor/copy.jpg"} in exact
    assert {"Training/no_tumor/image (1).jpg", "Testing/no_tumor/resaved.png"} in exact
    assert {"Training/glioma_tumor/image (4).jpg", "Training/meningioma_tumor/mislabeled.jpg"} in exact
    assert len(exact) == 3
    near = [set(g) for g in report["near_groups"]]
    assert any({"Training/pituitary_tumor/image (2).jpg", "Testing/pituitary_tumor/reencoded.jpg"} <= g for g in near)
    assert any({"Training/meningioma_tumor/image (3).jpg", "Testing/meningioma_tumor/resized.jpg"} <= g for g in near)
    conflicts = report["label_conflicts"]
    assert [c["labels"] for c in conflicts] == [["glioma", "meningioma"]]
    s = report["summary"]
    assert s["test_images_byte_identical_to_training"] == 1
    assert s["test_images_pixel_identical_to_training"] == 2
    assert s["test_images_near_duplicate_of_training"] == 4
    assert report["counts"]["train"]["meningioma"] == 6 and report["counts"]["test"]["glioma"] == 3
    assert report["sizes"]["64x64"] == 32 and report["sizes"]["48x48"] == 1
    json.dumps(report)  # JSON-ready


def test_audit_reports_unreadable_files(planted):
    (planted / "Training/no_tumor/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    report = audit(planted, near_threshold=4, workers=1)
    assert list(report["unreadable"]) == ["Training/no_tumor/broken.jpg"]


def test_the_console_report_shows_counts_leaks_unreadable_files_and_conflicts(planted):
    (planted / "Training/no_tumor/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    report = audit(planted, near_threshold=6, workers=1)
    console = Console(record=True, width=200)
    show_audit(console, report, planted, 6)
    text = console.export_text()
    assert f"{report['images']} images in" in text and report["images"] == 34
    assert "1 unreadable: Training/no_tumor/broken.jpg" in text
    assert "perceptual hash within 6 bits" in text
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 3}
    assert rows["train"].split("│")[3].strip() == "6"  # meningioma, with the mislabeled copy
    assert rows["test images byte-identical to a Training image"].split("│")[2].strip() == "1"
    assert rows["test images with the same pixels as a Training image"].split("│")[2].strip() == "2"
    assert rows["groups whose labels disagree"].split("│")[2].strip() == "1"
    assert "label conflict ['glioma', 'meningioma']" in text


def test_dedup_train_test_removes_exactly_the_planted_exact_leaks(planted):
    kept = scan_dataset(planted, SplitRule(0.2, 0), "error", workers=2)
    assert len(kept.test) == 12 and set(kept.leaks) == {"Testing/glioma_tumor/copy.jpg", "Testing/no_tumor/resaved.png"}
    deduped = scan_dataset(planted, SplitRule(0.2, 0), "error", workers=2, dedup="train_test")
    dropped = {s.path for s in kept.test} - {s.path for s in deduped.test}
    assert dropped == {"Testing/glioma_tumor/copy.jpg", "Testing/no_tumor/resaved.png"}
    assert deduped.train == kept.train and deduped.val == kept.val


def test_the_audit_reads_dicom_and_nifti_files_as_predict_does(tmp_path):
    """A DICOM copy of a Training slice in Testing is a leak like any other; a DICOM file
    without pixel data is unreadable, with the reason; a NIfTI volume counts its slices."""
    import nibabel as nib

    from tests.unit.data.test_scanner import write_dicom

    root = distinct_dataset(tmp_path / "data", train=2, test=1)
    gray = np.asarray(distinct_image(99).convert("L"))
    Image.fromarray(gray).save(root / "Training" / "glioma_tumor" / "gray.png")
    write_dicom(root / "Testing" / "glioma_tumor" / "scan.dcm", gray)
    (root / "Training" / "meningioma_tumor" / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM")
    volume = np.stack([np.flipud(gray).T, np.flipud(gray[::-1]).T], axis=2).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(root / "Testing" / "no_tumor" / "vol.nii.gz"))
    report = audit(root, workers=1)
    assert ["Testing/glioma_tumor/scan.dcm", "Training/glioma_tumor/gray.png"] in report["exact_groups"]
    assert report["summary"]["test_images_pixel_identical_to_training"] == 1
    assert "DICOM file without pixel data" in report["unreadable"]["Training/meningioma_tumor/bad.dcm"]
    assert report["modes"]["dicom (1 slice(s))"] == 1 and report["modes"]["nifti (2 slice(s))"] == 1
    assert report["counts"]["test"]["notumor"] == 2  # the image and the volume
