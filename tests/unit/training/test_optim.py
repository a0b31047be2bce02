"""brainmri/training/optim.py: the optimizer factory and the schedules, including a resumed schedule."""

import pytest
import torch

from brainmri.config import OptimConfig
from brainmri.training.optim import build_optimizer, build_scheduler, fast_forward


def lrs(cfg: OptimConfig, steps_per_epoch: int, epochs: int, start: int = 0, n: int | None = None):
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch, epochs)
    for _ in range(start):
        sched.step()
    out = []
    for _ in range(n if n is not None else steps_per_epoch * epochs - start):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_fast_forwarded_schedule_matches_uninterrupted(schedule):
    cfg = OptimConfig(lr=1e-2, schedule=schedule, warmup_epochs=1)
    full = lrs(cfg, 5, 4)
    assert lrs(cfg, 5, 4, start=7) == pytest.approx(full[7:])


def test_schedules_shape():
    onecycle = lrs(OptimConfig(lr=1e-2, schedule="onecycle"), 10, 3)
    assert max(onecycle) == pytest.approx(1e-2, rel=1e-3) and onecycle[-1] < 1e-4
    cosine = lrs(OptimConfig(lr=1e-2, schedule="cosine", warmup_epochs=1, min_lr_ratio=0.1), 10, 3)
    assert (
        cosine[0] < cosine[9]
        and cosine[10] == pytest.approx(1e-2, rel=0.05)
        and cosine[-1] == pytest.approx(1e-3, rel=0.1)
    )
    assert set(lrs(OptimConfig(lr=3e-4), 4, 2)) == {3e-4}


def test_weight_decay_skips_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.05))
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.05]


def test_fast_forward_never_runs_past_the_schedule():
    cfg = OptimConfig(lr=1e-2, schedule="onecycle")
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg)
    sched = build_scheduler(opt, cfg, 5, 2)
    fast_forward(sched, 1000, 10)  # a run extended past its first schedule's end
    assert sched.last_epoch == 9 and opt.param_groups[0]["lr"] < 1e-4
