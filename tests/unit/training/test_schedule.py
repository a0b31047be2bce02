"""brainmri/training/schedule.py: which epochs the budget judges the pace by."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from brainmri.config import OptimConfig, TrainConfig
from brainmri.training import budget as B
from brainmri.training.checkpoint import TrainState
from brainmri.training.schedule import Schedule


def schedule_with_plan(epochs_done: int, optim: OptimConfig = OptimConfig()) -> Schedule:
    """A 30-minute budget whose first plan (41 epochs of 43 s) was made during the first epoch;
    the run has done ``epochs_done`` epochs of it."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    training = SimpleNamespace(
        train_loader=[0] * 40, val_loader=[0] * 5, test_loader=[0] * 10,
        step=SimpleNamespace(optimizer=optimizer, scheduler=None), steps_per_epoch=40,
    )  # fmt: skip
    shape = B.RunShape(train_batches=40, eval_batches=5, test_batches=10, tta_passes=1)
    state = TrainState(epoch=epochs_done, plan=B.plan_budget("30m", 1800.0, 1.0, shape, 0, 11))
    return Schedule(Accelerator(cpu=True), TrainConfig(budget="30m"), optim, training, state, time.time())


def finish_epoch(schedule: Schedule, seconds: float, elapsed: float) -> None:
    schedule.state.epoch += 1
    schedule.budget.clock = B.BudgetClock("30m", started=time.time() - elapsed, seconds=1800.0)
    schedule.after_epoch(seconds)


def test_the_epoch_the_first_plan_was_made_in_is_not_judged_but_the_epoch_after_a_replan_is():
    schedule = schedule_with_plan(epochs_done=0)
    planned = schedule.epochs
    finish_epoch(schedule, 80.0, 80.0)  # began with warm-up: not a pace
    assert schedule.epochs == planned and schedule.budget.epoch_times == []
    finish_epoch(schedule, 60.0, 140.0)
    finish_epoch(schedule, 60.0, 200.0)  # 60 s epochs overrun 41 planned for 43 s: cut
    cut = schedule.epochs
    assert cut < planned and schedule.state.plan.epochs == cut
    finish_epoch(schedule, 90.0, 290.0)  # the next epoch counts at once
    assert schedule.epochs < cut and schedule.budget.epoch_times == [60.0, 60.0, 90.0]


def test_a_cut_last_epoch_ends_the_loop_and_the_learning_rate_where_the_plan_does():
    cosine = OptimConfig(lr=0.1, schedule="cosine", min_lr_ratio=0.01)
    schedule = schedule_with_plan(epochs_done=0, optim=cosine)
    plan = schedule.state.plan
    assert plan.last_steps is not None and 0 < plan.last_steps < 40  # 30 minutes do not hold whole epochs
    last = plan.epochs - 1
    assert [schedule.epoch_batches(e) for e in (0, last - 1, last)] == [40, 40, plan.last_steps]
    # The learning rate reaches its floor at the plan's last step, not at the end of a whole epoch.
    step = schedule.training.step
    lrs = []
    for _ in range(40 * last + plan.last_steps):
        lrs.append(step.optimizer.param_groups[0]["lr"])
        step.optimizer.step()
        step.scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.1 * 0.01, rel=0.05)
    # A plan of whole epochs cuts nothing.
    schedule.state.plan = B.BudgetPlan("30m", 1800.0, 1.0, 43.0, 10.0, epochs=plan.epochs, planned_after=0)
    assert schedule.epoch_batches(last) == 40
