"""How long a run trains: its epochs (``train.epochs``, or ``train.budget``'s plan) and the
learning-rate schedule laid over them, kept on every rank alike.

With a budget the Trainer starts on a long provisional schedule (its first steps are any
schedule's start), times steps, and once :class:`~brainmri.training.budget.Budget` has a plan,
the main process's plan is every rank's and the schedule is rebuilt over the planned steps and
fast-forwarded: the learning rate is a pure function of the step (:mod:`brainmri.training.optim`).
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from accelerate import Accelerator

from brainmri.config import OptimConfig, TrainConfig, budget_seconds
from brainmri.records import BudgetPlan
from brainmri.training.budget import PROVISIONAL_EPOCHS, Budget, RunShape, attempt_clock, describe_plan
from brainmri.training.checkpoint import TrainState
from brainmri.training.distributed import on_main
from brainmri.training.optim import build_scheduler, fast_forward
from brainmri.training.step import Training

log = logging.getLogger(__name__)


def run_shape(training: Training, tta: str, accum: int) -> RunShape:
    """An epoch and the end of the run in batches, as the budget plans them."""
    return RunShape(
        train_batches=len(training.train_loader),
        eval_batches=len(training.val_loader) if training.val_loader is not None else 0,
        test_batches=len(training.test_loader) if training.test_loader is not None else 0,
        tta_passes=2 if tta == "hflip" else 1,
        accum=accum,
    )


class Schedule:
    """The epochs to train, the schedule over them, and the run's wall clock."""

    def __init__(
        self,
        accelerator: Accelerator,
        train: TrainConfig,
        optim: OptimConfig,
        training: Training,
        state: TrainState,
        started: float,
        slurm_seconds_left: Optional[float] = None,
    ):
        """``state``: the run's, as loaded on resume; ``started``: when the command started
        (``time.time()``), the zero of ``train.budget``; ``slurm_seconds_left``: the job's time
        left then (``train.budget=slurm``)."""
        self.accelerator = accelerator
        self.optim = optim
        self.training = training
        self.state = state
        self.started = started
        self.used_before = state.used_seconds
        self.epochs = train.epochs
        self.budget: Optional[Budget] = None
        # The epoch a plan was made in, from timed steps or on a resume, began with warm-up
        # (kernels, caches, the loader's start): it does not show the pace.
        self.unjudged_epoch = state.epoch + 1
        if train.budget is None:
            self._lay(train.epochs)
            return
        used = state.used_seconds if budget_seconds(train.budget) is not None else 0.0  # slurm: per attempt
        clock = attempt_clock(train.budget, started, used, slurm_seconds_left)
        shape = run_shape(training, train.tta, accelerator.gradient_accumulation_steps)
        self.budget = Budget(clock, shape, state.plan)
        if state.plan is None:
            self._lay(PROVISIONAL_EPOCHS)
            return
        replan = on_main(accelerator, lambda: self.budget.on_resume(state.epoch, state.batches))
        self._adopt(replan or state.plan, "re-planned, the time left cannot hold the plan" if replan else "kept")

    def used_seconds(self) -> float:
        """Wall clock this run has used: earlier attempts' and this one's so far."""
        return self.used_before + time.time() - self.started

    def new_epoch(self) -> None:
        if self.budget is not None:
            self.budget.new_epoch()

    def epoch_batches(self, epoch: int) -> int:
        """Training batches of epoch ``epoch`` (0-based): the whole loader, or where the plan cuts
        the last epoch short. Read at every step: the first plan comes during the first epoch."""
        whole = len(self.training.train_loader)
        plan = self.state.plan
        if self.budget is None or plan is None or plan.last_steps is None or epoch != plan.epochs - 1:
            return whole
        return min(whole, plan.last_steps * self.accelerator.gradient_accumulation_steps)

    def after_step(self) -> None:
        """Time the step; at the step the plan is ready (the same on every rank), adopt the main process's."""
        if self.budget is None:
            return
        plan = self.budget.after_step(self.state.epoch, self.state.batches)
        if plan is not None:
            self.unjudged_epoch = self.state.epoch + 1
            self._adopt(on_main(self.accelerator, lambda: plan), "planned")

    def after_epoch(self, epoch_seconds: float) -> None:
        """Fewer epochs when the recent epochs would overrun the budget, more when they would
        leave an epoch of it unused (past the middle, only epochs a re-plan cut). Not judged on
        the epoch the first plan (or a resume) was made in: it began with warm-up. A re-plan's
        next epoch is judged: it is a whole epoch at the run's pace."""
        plan = self.state.plan
        if self.budget is None or plan is None or self.state.epoch <= self.unjudged_epoch:
            return
        new = on_main(self.accelerator, lambda: self.budget.after_epoch(self.state.epoch, epoch_seconds))
        if new is not None:
            pace = "slower" if self.budget.batches(new) < self.budget.batches(plan) else "faster"
            self._adopt(new, f"re-planned, the epochs ran {pace} than planned")

    def _lay(self, epochs: int, last_steps: Optional[int] = None) -> None:
        """A schedule over ``epochs`` (the last cut to ``last_steps`` optimizer steps), fast-forwarded
        to the state's step."""
        self.epochs = epochs
        step, per_epoch = self.training.step, self.training.steps_per_epoch
        total = per_epoch * (epochs - 1) + (per_epoch if last_steps is None else min(per_epoch, last_steps))
        step.scheduler = build_scheduler(step.optimizer, self.optim, per_epoch, epochs, total_steps=total)
        fast_forward(step.scheduler, self.state.step, total)

    def _adopt(self, plan: BudgetPlan, why: str) -> None:
        self.budget.adopt(plan)
        self.state.plan = plan
        self._lay(plan.epochs, plan.last_steps)
        if self.accelerator.is_main_process:
            log.info("%s: %s", why, describe_plan(plan, self.started, self.budget.shape, self.state.batches))
