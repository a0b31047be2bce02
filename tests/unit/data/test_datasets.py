import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainmri.data.samples import BUILTIN_DEMO, CLASS_NAMES, DEMO_ROOT, class_counts, list_images, resolve_root
from brainmri.data.scan import load_image, scan_dataset, to_channels
from brainmri.data.splits import SplitRule, read_split, stratified_split, write_split
from brainmri.errors import DatasetError
from tests.conftest import make_dataset


def scan(root, on_bad_image="error"):
    return scan_dataset(root, SplitRule(val_fraction=0.25, seed=0), on_bad_image=on_bad_image, workers=2)


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


def test_hidden_folders_are_skipped_at_every_level_and_counted(tmp_path, caplog):
    """A Jupyter checkpoint copy inside a class folder is not data (nor .git, nor __MACOSX)."""
    import logging

    root = make_dataset(tmp_path / "d", train_per_class=2, test_per_class=0)
    glioma = root / "Training" / "glioma_tumor"
    for hidden in (".ipynb_checkpoints", "sub/.git/objects", "__MACOSX"):
        (glioma / hidden).mkdir(parents=True)
        shutil.copy(glioma / "image (0).jpg", glioma / hidden / "image (0)-checkpoint.jpg")
    (glioma / "sub" / "kept.jpg").write_bytes((glioma / "image (1).jpg").read_bytes())
    with caplog.at_level(logging.INFO, logger="brainmri.data.samples"):
        paths = [s.path for s in list_images(root / "Training", root)]
    assert len(paths) == 9 and "Training/glioma_tumor/sub/kept.jpg" in paths
    assert not any("checkpoint" in p for p in paths)
    assert "skipped 3 file(s) in hidden folders under" in caplog.text


def test_a_dangling_symlink_is_a_missing_image_not_a_silent_drop(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=3, test_per_class=1)
    link = root / "Training" / "glioma_tumor" / "linked.jpg"
    link.symlink_to("/mnt/storage-not-mounted/scan42.jpg")
    with pytest.raises(DatasetError) as info:
        scan(root)
    assert str(info.value).startswith("1 unreadable image(s)")
    assert (
        "Training/glioma_tumor/linked.jpg: broken symlink (its target /mnt/storage-not-mounted/scan42.jpg "
        "does not exist on this machine)"
    ) in str(info.value)
    splits = scan(root, on_bad_image="skip")
    assert list(splits.bad) == ["Training/glioma_tumor/linked.jpg"]


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
    from brainmri.data.samples import Sample

    samples = [Sample(f"c{label}/{i}.jpg", label) for label in range(4) for i in range(20 if label != 2 else 10)]
    train, val = stratified_split(samples, 0.1, seed=3)
    assert class_counts(val) == [2, 2, 1, 2]
    assert stratified_split(samples, 0.1, seed=3) == (train, val)
    assert stratified_split(samples, 0.1, seed=4)[1] != val
    assert not {s.path for s in train} & {s.path for s in val}
    assert stratified_split(samples, 0.0, seed=3) == (sorted(samples, key=lambda s: s.path), [])  # a refit


def test_group_split_with_no_validation_share_trains_on_everything():
    from brainmri.data.groups import group_split
    from brainmri.data.samples import Sample

    samples = [Sample(f"c{label}/{i}.jpg", label) for label in range(4) for i in range(6)]
    groups = {s.path: i // 2 for i, s in enumerate(samples)}  # pairs of duplicates
    train, val = group_split(samples, groups, 0.0, seed=0)
    assert val == [] and train == sorted(samples, key=lambda s: s.path)


def test_split_file_round_trip(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=4, test_per_class=1)
    splits = scan(root)
    write_split(tmp_path / "split.csv", splits)
    rows = list(csv.DictReader(open(tmp_path / "split.csv")))
    assert set(rows[0]) == {"file", "class", "split", "group"}
    assert all(r["group"] == "" for r in rows if r["split"] == "test") and all(
        r["group"] for r in rows if r["split"] != "test"
    )
    again = read_split(tmp_path / "split.csv", root, has_test=True)
    assert (again.train, again.val, again.test, again.groups) == (splits.train, splits.val, splits.test, splits.groups)
    old = tmp_path / "old.csv"  # written before the group column existed
    old.write_text(
        "".join(",".join(line.split(",")[:3]) + "\n" for line in (tmp_path / "split.csv").read_text().splitlines())
    )
    assert read_split(old, root, has_test=True).train == splits.train


def planted_duplicates(root: Path) -> dict[str, list[str]]:
    """Copies planted in Training: pixel copies and a re-encoded, slightly darker near copy."""
    folder = root / "Training" / "glioma_tumor"
    source = Image.open(folder / "image (0).jpg").convert("RGB")
    shutil.copy(folder / "image (0).jpg", folder / "copy-a.jpg")
    shutil.copy(folder / "image (0).jpg", folder / "copy-b.jpg")
    source.point(lambda v: max(0, v - 3)).save(folder / "near.jpg", quality=80)
    other = root / "Training" / "meningioma_tumor"
    shutil.copy(other / "image (1).jpg", other / "copy-m.jpg")
    g = "Training/glioma_tumor/"
    return {
        "near": [g + "image (0).jpg", g + "copy-a.jpg", g + "copy-b.jpg", g + "near.jpg"],
        "exact_m": ["Training/meningioma_tumor/image (1).jpg", "Training/meningioma_tumor/copy-m.jpg"],
    }


@pytest.mark.parametrize("groups", ["near", "exact"])
def test_duplicate_groups_never_straddle_train_and_validation_or_folds(tmp_path, groups):
    root = make_dataset(tmp_path / "d", train_per_class=10, test_per_class=1, size=64)
    planted = planted_duplicates(root)
    together = [planted["near"] if groups == "near" else planted["near"][:3], planted["exact_m"]]
    for seed in range(6):
        rules = [SplitRule(0.25, seed, groups)] + [SplitRule(0.25, seed, groups, folds=4, fold=f) for f in range(4)]
        val_union = []
        for rule in rules:
            splits = scan_dataset(root, rule, "error", workers=2)
            val = {s.path for s in splits.val}
            assert not val & {s.path for s in splits.train}
            for group in together:
                assert len({splits.groups[p] for p in group}) == 1
                assert {p in val for p in group} in ({True}, {False}), (rule, group)
            if rule.folds:
                val_union += sorted(val)
        assert sorted(val_union) == sorted({s.path for s in splits.train + splits.val})  # folds partition Training
    if groups == "exact":  # the near copy is its own group under the exact rule
        assert splits.groups[planted["near"][3]] != splits.groups[planted["near"][0]]


def test_split_groups_none_is_the_plain_stratified_split(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=10, test_per_class=1, size=64)
    planted_duplicates(root)
    plain = scan_dataset(root, SplitRule(0.25, 3, "none"), "error", workers=2)
    train_all = sorted(plain.train + plain.val, key=lambda s: s.path)
    assert (plain.train, plain.val) == stratified_split(train_all, 0.25, seed=3)
    assert len(set(plain.groups.values())) == len(train_all)  # every image its own group


def test_without_duplicates_the_grouped_split_is_the_plain_split(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=10, test_per_class=1, size=64)
    for seed in range(4):
        grouped = scan_dataset(
            root, SplitRule(0.2, seed, "exact"), "error", workers=2
        )  # the synthetic images are near copies
        plain = scan_dataset(root, SplitRule(0.2, seed, "none"), "error", workers=2)
        assert (grouped.train, grouped.val) == (plain.train, plain.val)


def test_too_many_folds_for_the_data_is_one_line(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=3, test_per_class=1)
    with pytest.raises(
        DatasetError, match=r"^data.folds=5: no class has that many training images \(the largest has 3\)$"
    ):
        scan_dataset(root, SplitRule(folds=5, fold=0), "error", workers=2)


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
        Image.open(src).save(
            root / "Training" / "glioma_tumor" / f"x.{ext}",
            format={"TIFF": "TIFF", "tif": "TIFF", "jpeg": "JPEG"}.get(ext, ext.upper()),
        )
    assert len([s for s in list_images(root / "Training", root) if s.label == 0]) == 7
    assert load_image(root / "Training" / "glioma_tumor" / "x.png", 1).mode == "L"


def test_resolve_root():
    assert resolve_root(BUILTIN_DEMO) == DEMO_ROOT
    with pytest.raises(DatasetError, match="data.root is not set"):
        resolve_root(None)
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_root("/nonexistent/brain")


def test_bundled_demo_is_complete():
    splits = scan_dataset(DEMO_ROOT, SplitRule(0.2, 0), "error", workers=2)
    assert class_counts(splits.train + splits.val) == [40, 40, 40, 40]
    assert class_counts(splits.test) == [10, 10, 10, 10]
    assert (DEMO_ROOT / "README.md").is_file()


def test_exclude_list_trains_without_the_files_and_names_unknown_ones(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=6, test_per_class=1)
    issues = tmp_path / "label_issues.csv"
    issues.write_text(
        "file,given,suggested,score\nTraining/glioma_tumor/image (1).jpg,glioma,notumor,0.9\n"
        "Training/pituitary_tumor/image (2).jpg,pituitary,glioma,0.8\n"
    )
    splits = scan_dataset(root, SplitRule(0.25, 0), "error", workers=2, exclude=issues)
    used = {s.path for s in splits.train + splits.val}
    assert len(used) == 22 and "Training/glioma_tumor/image (1).jpg" not in used
    assert splits.excluded == ["Training/glioma_tumor/image (1).jpg", "Training/pituitary_tumor/image (2).jpg"]
    plain = tmp_path / "plain.txt"
    plain.write_text("Training/glioma_tumor/image (1).jpg\n\n")
    assert len(scan_dataset(root, SplitRule(0.25, 0), "error", workers=2, exclude=plain).excluded) == 1
    plain.write_text("Training/glioma_tumor/image (99).jpg\n")
    with pytest.raises(
        DatasetError,
        match=r"lists 1 file\(s\) that are not Training images of this dataset, e.g. Training/glioma_tumor/image \(99\).jpg",
    ):
        scan_dataset(root, SplitRule(0.25, 0), "error", workers=2, exclude=plain)
    with pytest.raises(DatasetError, match=r"data.exclude=.*nope.csv: no such file"):
        scan_dataset(root, SplitRule(0.25, 0), "error", workers=2, exclude=tmp_path / "nope.csv")
