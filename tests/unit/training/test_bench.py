"""brainmri/training/bench.py: the notebooks' recipe the benchmark compares with, and the lines
that say what each ``auto`` setting became."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import torch

from brainmri.config import AugmentConfig, Config, DataConfig, TrainConfig
from brainmri.training import bench


def test_the_notebook_recipe_keeps_the_model_and_size_and_trains_as_the_notebooks_did():
    cfg = Config(
        data=DataConfig(image_size=512, channels=3, pipeline="cached"),
        augment=AugmentConfig(preset="resnet_study", gamma=[0.8, 1.2], normalize="dataset"),
        train=TrainConfig(batch_size=32, grad_accum=2),
    )
    nb = bench.notebook_recipe(cfg)
    assert (nb.data.image_size, nb.data.channels, nb.model) == (512, 3, cfg.model)
    assert (nb.data.pipeline, nb.data.num_workers) == ("pil", 2)
    assert (nb.train.mixed_precision, nb.train.channels_last, nb.train.batch_size, nb.train.grad_accum) == (
        "no",
        False,
        16,
        1,
    )
    assert (nb.optim.name, nb.optim.weight_decay) == ("adam", 0.0)
    # The batched intensity augmentation is the toolkit's; the notebooks had the preset alone.
    assert nb.augment == AugmentConfig(preset="resnet_study", normalize="dataset")


def fake_run(precision: str, workers: int, on_device: bool, micro: int = 0):
    accelerator = SimpleNamespace(device=torch.device("cpu"), mixed_precision=precision)
    training = SimpleNamespace(
        train_loader=SimpleNamespace(num_workers=workers),
        loaders=SimpleNamespace(cache_on_device=on_device),
        step=SimpleNamespace(micro_batch=micro),
    )
    return accelerator, training


def test_auto_choices_say_what_auto_became_and_why_on_each_kind_of_cpu():
    cfg = Config(data=DataConfig(pipeline="cached"))
    with mock.patch.object(bench, "cpu_has_native_bf16", return_value=False):
        lines = bench.auto_choices(cfg, *fake_run("no", 0, True, micro=16), "AVX2")
    assert lines == [
        "train.mixed_precision=auto -> fp32: oneDNN capped at AVX2: bf16 would be emulated, several times slower "
        "than fp32",
        "data.num_workers=-1 -> 0: a cached pipeline on a CPU reads its rows in the training process; workers "
        "would take cores from the step",
        "data.cache_location=auto -> device: resident where it takes at most a quarter of free memory",
        "train.micro_batch=auto -> 16: a CPU training in fp32: oneDNN's fp32 kernels are faster per image on "
        "16-image slices",
        "train.channels_last=true -> channels_last (NHWC)",
    ]
    with mock.patch.object(bench, "cpu_has_native_bf16", return_value=True):
        lines = bench.auto_choices(cfg, *fake_run("bf16", 0, False), None)
    assert lines[0] == "train.mixed_precision=auto -> bf16: the CPU computes bf16 itself (AVX512-BF16 or AMX)"
    assert lines[2].startswith("data.cache_location=auto -> host")
    assert (
        lines[3] == "train.micro_batch=auto -> the whole batch: whole batches are fastest with bf16 units or on a GPU"
    )
    # Settings the user fixed are not auto's to explain.
    fixed = Config(
        data=DataConfig(pipeline="pil", num_workers=3), train=TrainConfig(mixed_precision="no", micro_batch=0)
    )
    assert bench.auto_choices(fixed, *fake_run("no", 3, False), None) == [
        "train.channels_last=true -> channels_last (NHWC)"
    ]
