"""brainmri/training/step.py: the training step under the precisions a GPU uses, run on a CPU.

fp16 with a loss scaler is what ``auto`` gives a V100 or T4: Accelerate scales the loss,
unscales before clipping, and skips the optimizer step when a gradient overflows. On a CPU
Accelerate turns fp16 off, so the test gives its Accelerator the GradScaler and the fp16
autocast it builds on a GPU (torch supports both on CPUs) and runs the real TrainStep.
"""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch import nn

from brainmri.config import AugmentConfig, OptimConfig, TrainConfig
from brainmri.data.batch_augment import BatchAugment
from brainmri.data.transforms import resolve_augment
from brainmri.training.optim import build_optimizer, build_scheduler
from brainmri.training.step import Training, TrainStep, intensity_epochs


def make_step(precision: str, grad_clip: float = 0.0):
    """A TrainStep on a small conv net, prepared by an Accelerator running ``precision`` on the CPU."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4))
    dtypes: list[torch.dtype] = []
    net[0].register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    acc = Accelerator(cpu=True, mixed_precision="bf16" if precision == "bf16" else "no")
    if precision == "fp16":
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # what a GPU's Accelerator builds
        acc.native_amp = True
    optimizer = build_optimizer(net, OptimConfig(name="sgd", lr=0.1))
    model, optimizer = acc.prepare(net, optimizer)
    scheduler = build_scheduler(optimizer, OptimConfig(name="sgd", lr=0.1), steps_per_epoch=4, epochs=1)
    train = TrainConfig(grad_clip=grad_clip, channels_last=False)
    step = TrainStep(acc, model, optimizer, scheduler, nn.CrossEntropyLoss(reduction="none"), train, None)
    return step, net, dtypes


def batch():
    return torch.randn(8, 1, 8, 8), torch.arange(8) % 4


def test_fp16_with_a_loss_scaler_trains_and_skips_an_overflowing_step(fresh_state):
    fp16 = mock.patch.object(AcceleratorState, "mixed_precision", new_callable=mock.PropertyMock, return_value="fp16")
    with fp16:
        step, net, dtypes = make_step("fp16", grad_clip=1.0)
        before = [p.detach().clone() for p in net.parameters()]
        out = step(*batch())
        assert dtypes[-1] == torch.float16  # the forward ran under fp16 autocast
        assert out.stepped and out.logits.dtype == torch.float32
        assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
        assert step.accelerator.scaler.get_scale() == 2.0**10

        # A gradient that overflows: the scaler skips the update and halves its scale.
        kept = [p.detach().clone() for p in net.parameters()]
        images, targets = batch()
        images[0, 0, 0, 0] = float("inf")
        step(images, targets)
        assert step.optimizer.step_was_skipped
        assert all(torch.equal(a, b) for a, b in zip(kept, net.parameters()))
        assert step.accelerator.scaler.get_scale() == 2.0**9

        # And training goes on with finite batches.
        out = step(*batch())
        assert not step.optimizer.step_was_skipped and torch.isfinite(out.loss)


def test_bf16_autocast_on_a_cpu_runs_the_forward_in_bf16(fresh_state):
    step, net, dtypes = make_step("bf16")
    before = [p.detach().clone() for p in net.parameters()]
    out = step(*batch())
    assert dtypes[-1] == torch.bfloat16 and out.logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize("weighted", [False, True])
def test_micro_batches_give_the_whole_batchs_loss_logits_and_update(fresh_state, weighted):
    """Slices of 3, 3 and 2 images: each slice's loss over the whole batch's denominator, one
    optimizer step. Without BatchNorm the update is the whole batch's to rounding."""
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 1.5]) if weighted else None, reduction="none")
    results = []
    for micro in (0, 3):
        step, net, _ = make_step("fp32")
        step.criterion, step.micro_batch = criterion, micro
        assert len(step.slices(8)) == (1 if micro == 0 else 3)
        out = step(*batch_seeded())
        results.append((out, [p.detach().clone() for p in net.parameters()]))
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    (whole, whole_params), (sliced, sliced_params) = results
    assert torch.allclose(whole.logits, sliced.logits, atol=1e-6)
    assert torch.allclose(whole.per_sample, sliced.per_sample, atol=1e-6)
    assert torch.allclose(whole.loss, sliced.loss, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole_params, sliced_params))


def batch_seeded():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(8, 1, 8, 8, generator=generator), torch.tensor([0, 1, 2, 3, 3, 2, 1, 1])


def test_auto_micro_batches_only_where_a_cpu_trains_in_fp32():
    from brainmri.training.distributed import CPU_FP32_MICRO_BATCH, resolve_micro_batch

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_micro_batch("auto", 64, "no", cpu) == CPU_FP32_MICRO_BATCH == 16
    assert resolve_micro_batch("auto", 64, "bf16", cpu) == 0  # bf16 units: whole batches
    assert resolve_micro_batch("auto", 64, "no", gpu) == 0
    assert resolve_micro_batch("auto", 16, "no", cpu) == 0  # a batch of 16 is one slice already
    assert resolve_micro_batch(8, 64, "bf16", gpu) == 8 and resolve_micro_batch(0, 64, "no", cpu) == 0


@pytest.mark.parametrize("value", ["-1", "x", "1.5"])
def test_a_bad_micro_batch_is_one_line(value):
    from brainmri.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.micro_batch=.* is invalid: expected auto, 0 \(the whole batch\)"):
        TrainConfig(micro_batch=value)
    assert TrainConfig(micro_batch="8").micro_batch == 8


def test_intensity_augmentation_stops_at_its_share_of_the_planned_epochs(caplog):
    """augment.intensity_until=0.75 over 24 planned epochs: 18 with the intensity steps, 6
    without; decided from the plan at each epoch start, so a resume or a re-plan decides anew."""
    params = resolve_augment(AugmentConfig(preset="none", normalize="half", noise=0.1))
    augment = BatchAugment(params, 8, [0.5], [0.5], train=True)
    step = SimpleNamespace(transform=nn.Sequential(nn.Identity(), augment))  # as behind a resident cache
    training = Training(step, None, None, None, None, 10, None, intensity_until=0.75)
    seen = []
    with caplog.at_level("INFO", logger="brainmri.training.step"):
        for epoch in range(24):
            training.augment_epoch(epoch, 24)
            seen.append(augment.intensity)
    assert seen == [True] * 18 + [False] * 6
    assert [r.getMessage() for r in caplog.records] == ["epoch 19: intensity and resolution augmentation off"]
    training.augment_epoch(18, 30)  # a later plan with more epochs: on again until its own 75%
    assert augment.intensity
    assert (intensity_epochs(1.0, 7), intensity_epochs(0.0, 7), intensity_epochs(0.8, 24)) == (7, 0, 19)
