"""brainmri/training/step.py: the training step under the precisions a GPU uses, run on a CPU.

fp16 with a loss scaler is what ``auto`` gives a V100 or T4: Accelerate scales the loss,
unscales before clipping, and skips the optimizer step when a gradient overflows. On a CPU
Accelerate turns fp16 off, so the test gives its Accelerator the GradScaler and the fp16
autocast it builds on a GPU (torch supports both on CPUs) and runs the real TrainStep.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch import nn

from brainmri.config import OptimConfig, TrainConfig
from brainmri.training.optim import build_optimizer, build_scheduler
from brainmri.training.step import TrainStep


@pytest.fixture
def fresh_state():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


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
