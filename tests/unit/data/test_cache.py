import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from brainmri.config import AugmentConfig
from brainmri.data.batch_augment import BatchAugment
from brainmri.data.cache import CachedDataset, decode_resized, open_or_build
from brainmri.data.samples import list_images
from brainmri.data.transforms import build_train_transform, resolve_augment
from tests.conftest import REPO, make_dataset


def samples_of(root):
    return list_images(root / "Training", root) + list_images(root / "Testing", root)


def test_cached_pixels_equal_freshly_decoded_pixels(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=3, test_per_class=1, size=50)
    samples = samples_of(root)
    for channels in (1, 3):
        cache = open_or_build(root, samples, 32, channels, tmp_path / "cache", workers=2)
        assert cache.build_seconds > 0 and len(cache) == len(samples)
        data = CachedDataset(cache, samples)
        for i, s in enumerate(samples):
            image, label = data[i]
            assert image.dtype == torch.uint8 and image.shape == (channels, 32, 32) and label == s.label
            assert torch.equal(image, decode_resized(root / s.path, 32, channels))
    again = open_or_build(root, samples, 32, 3, tmp_path / "cache", workers=2)
    assert again.build_seconds == 0.0  # opened, not rebuilt


def test_changed_file_rebuilds(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=2, test_per_class=1, size=40)
    samples = samples_of(root)
    first = open_or_build(root, samples, 16, 1, tmp_path / "c", workers=1)
    target = root / samples[0].path
    Image.new("RGB", (40, 40), (255, 255, 255)).save(target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = open_or_build(root, samples, 16, 1, tmp_path / "c", workers=1)
    assert second.path != first.path and second.build_seconds > 0
    assert int(np.asarray(second.array[second.rows[samples[0].path]]).min()) == 255
    assert open_or_build(root, samples, 24, 1, tmp_path / "c", workers=1).path not in (first.path, second.path)


def test_two_processes_building_at_once_leave_one_valid_cache(tmp_path):
    root = make_dataset(tmp_path / "d", train_per_class=12, test_per_class=4, size=96)
    script = (
        "import sys, json;"
        "from pathlib import Path;"
        "from brainmri.data.cache import open_or_build;"
        "from brainmri.data.samples import list_images;"
        "root = Path(sys.argv[2]); s = list_images(root / 'Training', root) + list_images(root / 'Testing', root);"
        "c = open_or_build(root, s, 64, 3, Path(sys.argv[3]), workers=1);"
        "print(json.dumps({'path': str(c.path), 'built': c.build_seconds > 0, 'sum': int(c.array.sum())}))"
    )
    cmd = [sys.executable, "-c", script, str(REPO), str(root), str(tmp_path / "shared")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [__import__("json").loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0]["path"] == outs[1]["path"] and outs[0]["sum"] == outs[1]["sum"] > 0
    assert sorted(o["built"] for o in outs) == [False, True]  # one built, the other waited and opened it
    names = sorted(p.name for p in (tmp_path / "shared").iterdir())
    assert [n.rsplit(".", 1)[1] for n in names] == ["json", "lock", "npy"]  # no torn temporary files


def marker_image(size: int = 48, at: tuple[int, int] = (24, 14)) -> torch.Tensor:
    x = torch.zeros(1, size, size, dtype=torch.uint8)
    x[0, at[0], at[1]] = 255
    return x


def marker_positions(images: torch.Tensor) -> torch.Tensor:
    """(row, col) of the brightest pixel of each image."""
    flat = images.reshape(len(images), -1).argmax(dim=1)
    return torch.stack([flat // images.shape[-1], flat % images.shape[-1]], dim=1)


def test_batch_augmentation_matches_the_pil_preset_distribution():
    """resnet_study: flip rate and crop offsets of device batches vs torchvision per-image."""
    torch.manual_seed(0)
    params = resolve_augment(AugmentConfig(preset="resnet_study"))
    n, size = 1500, 48
    batch = marker_image(size).unsqueeze(0).repeat(n, 1, 1, 1)
    batch_out = BatchAugment(params, size, [0.0], [1.0], train=True)(batch)
    tv = build_train_transform(params, size, [0.0], [1.0])
    pil = Image.fromarray(marker_image(size)[0].numpy(), mode="L")
    tv_out = torch.stack([tv(pil) for _ in range(n)])
    for out in (batch_out, tv_out):
        pos = marker_positions(out)
        dy = pos[:, 0] - 24
        flipped = pos[:, 1] > size / 2
        dx = torch.where(flipped, (size - 1 - pos[:, 1]) - 14, pos[:, 1] - 14)
        assert 0.45 < flipped.float().mean() < 0.55
        assert dy.min() == -8 and dy.max() == 8 and dx.min() == -8 and dx.max() == 8
        assert abs(dy.float().mean()) < 0.6 and abs(dx.float().mean()) < 0.6
        assert 0.9 < out.amax(dim=(1, 2, 3)).min()  # the marker survives every crop


def test_batch_brightness_and_affine_match_the_cnn_preset():
    torch.manual_seed(0)
    n, size = 1000, 40
    bright = resolve_augment(AugmentConfig(preset="cnn_study", translate=0.0, degrees=0.0, hflip=0.0))
    grey = torch.full((n, 1, size, size), 128, dtype=torch.uint8)
    k = BatchAugment(bright, size, [0.0], [1.0], train=True)(grey).mean(dim=(1, 2, 3))
    tv = build_train_transform(bright, size, [0.0], [1.0])
    pil = Image.new("L", (size, size), 128)
    t = torch.stack([tv(pil) for _ in range(n)]).mean(dim=(1, 2, 3))
    for factors in (k / (128 / 255), t / (128 / 255)):
        assert 0.79 < factors.min() < 0.82 and 1.18 < factors.max() < 1.21 and abs(factors.mean() - 1.0) < 0.02
    shift = resolve_augment(AugmentConfig(preset="cnn_study", degrees=0.0, hflip=0.0, brightness=[1.0, 1.0]))
    batch = marker_image(size, (20, 20)).unsqueeze(0).repeat(n, 1, 1, 1)
    kd = marker_positions(BatchAugment(shift, size, [0.0], [1.0], train=True)(batch)) - 20
    tvs = build_train_transform(shift, size, [0.0], [1.0])
    pil = Image.fromarray(marker_image(size, (20, 20))[0].numpy(), mode="L")
    td = marker_positions(torch.stack([tvs(pil) for _ in range(n)])) - 20
    for d in (kd, td):
        assert d.abs().max() <= 4 and d.min() <= -3 and d.max() >= 3  # translate 0.1 * 40 px
        assert abs(d.float().mean()) < 0.5


def test_eval_batch_transform_only_normalizes():
    params = resolve_augment(AugmentConfig(preset="cnn_study"))
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    out = BatchAugment(params, 16, [0.5] * 3, [0.5] * 3, train=False)(x)
    assert torch.allclose(out, x.float() / 255 * 2 - 1, atol=1e-6)


def test_batch_rotation_matches_torchvision_range_and_direction():
    """A marker right of the centre, rotated by up to 30 degrees: same angle range and both
    directions, as torchvision's RandomAffine."""
    import math

    from brainmri.data.batch_augment import random_affine

    torch.manual_seed(0)
    n, size = 800, 64
    base = torch.zeros(1, 1, size, size)
    base[0, 0, 31:33, 51:53] = 1.0  # 20 px right of the centre (31.5, 31.5)
    ours = random_affine(base.repeat(n, 1, 1, 1), 30.0, 0.0)
    tv = v2.RandomAffine(degrees=30.0)
    theirs = torch.stack([tv(base[0]) for _ in range(n)])

    def angles(images):
        weights = images[:, 0]
        yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
        total = weights.sum(dim=(1, 2)).clamp_min(1e-6)
        cy = (weights * yy).sum(dim=(1, 2)) / total - 31.5
        cx = (weights * xx).sum(dim=(1, 2)) / total - 31.5
        return torch.atan2(-cy, cx) * 180 / math.pi  # counter-clockwise, in degrees

    for a in (angles(ours), angles(theirs)):
        assert a.min() < -25 and a.max() > 25 and a.abs().max() < 33
        assert abs(float(a.mean())) < 3
    # identical direction convention: a fixed +20 degrees moves the marker up on both
    from torchvision.transforms.v2 import functional as TF

    fixed_tv = angles(TF.affine(base[0], angle=20.0, translate=[0, 0], scale=1.0, shear=[0.0]).unsqueeze(0))
    torch.manual_seed(1)
    from brainmri.data import batch_augment

    original = batch_augment._uniform
    batch_augment._uniform = lambda n, lo, hi, device: (
        torch.full((n,), 20.0) if hi == 30.0 else original(n, lo, hi, device)
    )
    try:
        fixed_ours = angles(random_affine(base, 30.0, 0.0))
    finally:
        batch_augment._uniform = original
    assert float(fixed_tv) == pytest.approx(float(fixed_ours), abs=3)


def test_resident_cache_gives_the_same_batches_as_the_loader_copies(tmp_path):
    """cache_location=device: the loaders carry row numbers, the batch transform gathers the
    same pixels the host path copies, and moving the transform does not copy the cache."""
    import dataclasses

    from brainmri.config import DataConfig
    from brainmri.data.loaders import build_loaders
    from brainmri.data.samples import DatasetSplits

    root = make_dataset(tmp_path / "d", train_per_class=4, test_per_class=2, size=40)
    train = list_images(root / "Training", root)
    splits = DatasetSplits(
        root=root, train=train[:12], val=train[12:], test=list_images(root / "Testing", root), bad={}
    )
    data = DataConfig(
        root=str(root), image_size=32, cache_dir=str(tmp_path / "cache"), cache_location="host", num_workers=0
    )
    cpu = torch.device("cpu")
    host = build_loaders(splits, data, AugmentConfig(), 4, [0.5] * 3, [0.5] * 3, device=cpu)
    device = build_loaders(
        splits, dataclasses.replace(data, cache_location="device"), AugmentConfig(), 4, [0.5] * 3, [0.5] * 3, device=cpu
    )
    assert not host.cache_on_device and device.cache_on_device
    assert device.train.num_workers == 0
    resident = device.eval_batch_transform[0]
    assert resident is device.train_batch_transform[0]  # one copy for train and eval
    before = resident.images.data_ptr()
    device.eval_batch_transform.to(cpu)
    assert resident.images.data_ptr() == before
    for (images, labels, index), (rows, labels2, index2) in zip(host.test, device.test):
        assert rows.dtype == torch.int64 and rows.shape == (len(labels),)
        assert torch.equal(index, index2) and torch.equal(labels, labels2)
        assert torch.equal(host.eval_batch_transform(images), device.eval_batch_transform(rows))
    rows, labels, _ = next(iter(device.train))
    out = device.train_batch_transform(rows)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32


def test_auto_location_keeps_a_cache_that_does_not_fit_on_the_host(monkeypatch):
    from brainmri.data import cache as cache_lib

    assert cache_lib.resident_fits(10**12, torch.device("cpu"))  # the page cache holds it on a CPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 80 * 2**30))
    assert cache_lib.resident_fits(2 * 2**30, torch.device("cuda", 0))
    assert not cache_lib.resident_fits(3 * 2**30, torch.device("cuda", 0))


def test_explicit_device_location_that_does_not_fit_is_one_clear_error(tmp_path, monkeypatch):
    """data.cache_location=device on a GPU too small for the cache: a config error naming the
    key and the sizes, raised before anything is uploaded (auto would fall back to host)."""
    from brainmri.config import DataConfig
    from brainmri.data import cache as cache_lib
    from brainmri.data.loaders import build_loaders
    from brainmri.data.samples import DatasetSplits
    from brainmri.errors import ConfigError

    root = make_dataset(tmp_path / "d", train_per_class=2, test_per_class=1, size=40)
    train = list_images(root / "Training", root)
    splits = DatasetSplits(root=root, train=train[:6], val=train[6:], test=None, bad={})
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 80 * 2**30))
    monkeypatch.setattr(cache_lib.ResidentCache, "__init__", lambda *a: pytest.fail("uploaded a cache that cannot fit"))
    data = DataConfig(
        root=str(root), image_size=32, cache_dir=str(tmp_path / "cache"), cache_location="device", num_workers=0
    )
    with pytest.raises(
        ConfigError,
        match=r"data.cache_location=device: the image cache \(0.0 GB\) does not fit in cuda:0's free memory",
    ):
        build_loaders(splits, data, AugmentConfig(), 4, [0.5] * 3, [0.5] * 3, device=torch.device("cuda", 0))


def test_a_lock_held_elsewhere_is_waited_on_with_its_holder_named_then_given_up(tmp_path, caplog):
    """A builder on another node of a shared cache_dir (or one that died there, on NFS) must
    not leave this node waiting forever."""
    import fcntl
    import logging

    from brainmri.data.cache import acquire
    from brainmri.errors import DatasetError

    path = tmp_path / "brainmri-x.lock"
    with open(path, "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write("node2 pid 4242")
        holder.flush()
        with open(path, "a+") as mine, caplog.at_level(logging.INFO, logger="brainmri.data.cache"):
            with pytest.raises(
                DatasetError,
                match=r"image cache lock .*brainmri-x.lock held by node2 pid 4242 for over 1 s; "
                r"if that process is gone, delete the lock file",
            ):
                acquire(mine, timeout=1.0, poll=0.1)
        assert "waiting for node2 pid 4242 to build the image cache" in caplog.text
    with open(path, "a+") as mine:  # released: taken at once, and the new holder says who it is
        acquire(mine, timeout=1.0)
        assert path.read_text().endswith(f"pid {os.getpid()}")


def test_host_cache_workers_under_forkserver_map_the_file_instead_of_copying_it(tmp_path):
    """Workers started by forkserver (Python 3.14's default on Linux) or spawn get the dataset
    pickled: a memmap would travel as a full copy of the cache, once per worker."""
    import pickle

    from torch.utils.data import DataLoader

    root = make_dataset(tmp_path / "d", train_per_class=6, test_per_class=1, size=64)
    samples = samples_of(root)
    cache = open_or_build(root, samples, 64, 3, tmp_path / "cache", workers=2)
    data = CachedDataset(cache, samples)
    assert len(pickle.dumps(data)) < cache.array.nbytes / 20  # the path and row numbers, not the pixels
    loader = DataLoader(data, batch_size=4, num_workers=2, multiprocessing_context="forkserver")
    images = torch.cat([batch for batch, _ in loader])
    assert torch.equal(images, torch.stack([data[i][0] for i in range(len(data))]))
