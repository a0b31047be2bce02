import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainmri.data.datasets import (
    BUILTIN_DEMO,
    CLASS_NAMES,
    DEMO_ROOT,
    class_counts,
    list_images,
    load_image,
    read_split,
    resolve_root,
    scan_dataset,
    stratified_split,
    to_channels,
    write_split,
)
from brainmri.errors import DatasetError
from tests.conftest import make_dataset


def scan(root, on_bad_image="error"):
    return scan_dataset(root, val_fraction=0.25, seed=0, on_bad_image=on_bad_image, workers=2)


@pytest.mark.parametrize("layout", ["sartaj", "masoud"])
def test_both_public_layouts_map_to_canonical_classes(tmp_path, layout):
    root = make_dataset(tmp_path / layout, layout=layout, train_per_class=4, test_per_class=2)
    splits = scan(root)
    assert class_counts(splits.train + splits.val) == [4, 4, 4, 4]
    assert class_counts(splits.test) == [2, 2, 2, 2]
    first = {s.label: s.path for s in splits.test}
    assert [Path(first[i]).parent.name for i in range(4)] == make_layout_folders(layout)


def make_layout_folders(layout):
    from tests.conftest import LAYOUTS

    return LAYOUTS[layout]


def test_lowercase_train_test_folders_and_any_case(tmp_path):
    root = make_dataset(tmp_path / "d", splits=("train", "TEST"), train_per_class=3, test_per_class=1)
    (root / "train" / "no_tumor").rename(root / "train" / "No_Tumor")
    splits = scan(root)
    assert len(splits.test) == 4 and class_counts(splits.train + splits.val)[2] == 3


def test_class_order_is_canonical_whatever_the_folder_order(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=2, test_per_class=0)
    labels = [s.label for s in list_images(root / "Training", root)]
    assert labels == sorted(labels) and set(labels) == {0, 1, 2, 3}
    assert CLASS_NAMES == ("glioma", "meningioma", "notumor", "pituitary")


def test_unknown_class_folder_lists_found_and_accepted(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=2, test_per_class=0)
    shutil.copytree(root / "Training" / "glioma_tumor", root / "Training" / "astrocytoma")
    with pytest.raises(DatasetError, match=r"unknown class folder\(s\) \['astrocytoma'\].*found .*accepted") as e:
        scan(root)
    assert "\n" not in str(e.value)


def test_missing_training_folder(tmp_path):
    (tmp_path / "d" / "Testing").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no Training/ .* folder in"):
        scan(tmp_path / "d")


def test_missing_testing_folder_means_no_test(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=3, test_per_class=0)
    assert scan(root).test is None


def test_empty_class_folder(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=2, test_per_class=0)
    (root / "Training" / "pituitary_tumor" / "x").mkdir()
    for f in (root / "Training" / "pituitary_tumor").glob("*.jpg"):
        f.unlink()
    with pytest.raises(DatasetError, match="pituitary_tumor holds no images"):
        scan(root)


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=2, test_per_class=0)
    (root / "Training" / "glioma_tumor" / ".DS_Store").write_text("x")
    (root / "Training" / "glioma_tumor" / "notes.txt").write_text("x")
    (root / "Training" / ".cache").mkdir()
    assert len(list_images(root / "Training", root)) == 8


def plant_bad_images(root: Path) -> dict[str, str]:
    """Zero-byte, text-as-jpg, truncated and corrupt files; returns name -> expected reason."""
    folder = root / "Training" / "glioma_tumor"
    good = (folder / "image (0).jpg").read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    corrupt = bytearray(good)
    corrupt[2:40] = b"\x00" * 38  # destroy the JPEG headers after the SOI marker
    (folder / "corrupt.jpg").write_bytes(bytes(corrupt))
    return {"empty.jpg": "empty file", "text.jpg": "not an image", "truncated.jpg": "truncat", "corrupt.jpg": ""}


def test_all_bad_images_reported_in_one_message(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=3, test_per_class=1)
    expected = plant_bad_images(root)
    with pytest.raises(DatasetError) as info:
        scan(root)
    message = str(info.value)
    assert "\n" not in message and message.startswith("4 unreadable image(s)")
    for name, reason in expected.items():
        assert f"Training/glioma_tumor/{name}: " in message
        assert reason in message.split(f"{name}: ")[1].split(";")[0]
    assert "data.on_bad_image=skip" in message


def test_skip_bad_images_trains_without_them(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=3, test_per_class=1)
    plant_bad_images(root)
    splits = scan(root, on_bad_image="skip")
    assert len(splits.bad) == 4
    used = {s.path for s in splits.train + splits.val}
    assert not any(p in used for p in splits.bad)
    assert len(used) == 12


def test_stratified_split_is_seeded_and_per_class():
    from brainmri.data.datasets import Sample

    samples = [Sample(f"c{label}/{i}.jpg", label) for label in range(4) for i in range(20 if label != 2 else 10)]
    train, val = stratified_split(samples, 0.1, seed=3)
    assert class_counts(val) == [2, 2, 1, 2]
    assert stratified_split(samples, 0.1, seed=3) == (train, val)
    assert stratified_split(samples, 0.1, seed=4)[1] != val
    assert not {s.path for s in train} & {s.path for s in val}


def test_split_file_round_trip(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=4, test_per_class=1)
    splits = scan(root)
    write_split(tmp_path / "split.csv", splits)
    rows = list(csv.DictReader(open(tmp_path / "split.csv")))
    assert set(rows[0]) == {"file", "class", "split"}
    again = read_split(tmp_path / "split.csv", root, has_test=True)
    assert (again.train, again.val, again.test) == (splits.train, splits.val, splits.test)


@pytest.mark.parametrize(
    "mode, make",
    [
        ("L", lambda: Image.new("L", (10, 8), 100)),
        ("RGB", lambda: Image.new("RGB", (10, 8), (10, 20, 30))),
        ("RGBA", lambda: Image.new("RGBA", (10, 8), (200, 200, 200, 0))),
        ("P", lambda: Image.new("RGB", (10, 8), (50, 60, 70)).convert("P")),
        ("CMYK", lambda: Image.new("CMYK", (10, 8), (0, 0, 0, 0))),
        ("I;16", lambda: Image.fromarray((np.arange(80).reshape(8, 10) * 800).astype(np.uint16))),
        ("1", lambda: Image.new("1", (10, 8), 1)),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_converts_to_requested_channels(mode, make, channels):
    image = make()
    assert image.mode == mode
    out = to_channels(image, channels)
    assert out.mode == ("L" if channels == 1 else "RGB") and out.size == (10, 8)


def test_16bit_uses_full_range():
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    out = np.asarray(to_channels(Image.fromarray(arr), 1))
    assert out.min() == 0 and out.max() == 255  # convert("L") would have clipped to 255 everywhere


def test_transparent_background_becomes_black():
    out = to_channels(Image.new("RGBA", (2, 2), (255, 255, 255, 0)), 3)
    assert np.asarray(out).max() == 0


def test_png_bmp_tiff_are_read(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=2, test_per_class=0)
    src = root / "Training" / "glioma_tumor" / "image (0).jpg"
    for ext in ("png", "bmp", "tif", "TIFF", "jpeg"):
        Image.open(src).save(root / "Training" / "glioma_tumor" / f"x.{ext}", format={"TIFF": "TIFF", "tif": "TIFF", "jpeg": "JPEG"}.get(ext, ext.upper()))
    assert len([s for s in list_images(root / "Training", root) if s.label == 0]) == 7
    assert load_image(root / "Training" / "glioma_tumor" / "x.png", 1).mode == "L"


def test_resolve_root():
    assert resolve_root(BUILTIN_DEMO) == DEMO_ROOT
    with pytest.raises(DatasetError, match="data.root is not set"):
        resolve_root(None)
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_root("/nonexistent/brain")


def test_bundled_demo_is_complete():
    splits = scan_dataset(DEMO_ROOT, 0.2, 0, "error", workers=2)
    assert class_counts(splits.train + splits.val) == [40, 40, 40, 40]
    assert class_counts(splits.test) == [10, 10, 10, 10]
    assert (DEMO_ROOT / "README.md").is_file()
