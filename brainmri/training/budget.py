"""Wall-clock budgets (``train.budget``): how many epochs fit, planned from timed steps.

A recipe named for 30 minutes should end in 30 minutes on any machine, not after an epoch count
tuned on one CPU. The Trainer times training steps after a warm-up, and :func:`plan_budget`
turns that into the training that fits: what is left of the budget, less the rest of the current
epoch and the reserve for the end (test phase, calibration, final files), in whole epochs and a
last epoch cut short where the time runs out (at a whole optimizer step). Whole epochs alone
would miss the budget by up to half an epoch: a tenth of 30 minutes where an fp32 CPU trains
ten. The learning-rate schedule is then laid over the planned steps. After every
epoch :meth:`Budget.after_epoch` compares the recent epochs with the plan: it cuts epochs when the
machine got slower, and adds them when it is faster than the first steps showed (those include
kernel selection and a cold cache) or than a slow stretch that made it cut; past the run's middle
only cut epochs are given back. A requeued run keeps its plan unless the time left cannot hold it.
"""

from __future__ import annotations

import math
import subprocess
import time
from dataclasses import dataclass, replace
from typing import Mapping, Optional

from brainmri.config import budget_seconds
from brainmri.errors import ConfigError
from brainmri.records import BudgetPlan

WARMUP_STEPS = 3  # the first steps of a process are slow (allocator, kernels, caches): not timed
TIMED_STEPS = 8  # steps timed for the plan
EVAL_RATIO = 0.4  # an evaluation batch (forward only, no augmentation) against a training step
END_SECONDS = 3.0  # loading the best weights, fitting the temperature, writing results.json
SAFETY = 0.995  # aim this early: a noisy machine has room to be slower
RECENT_EPOCHS = 4  # the epoch time a re-plan goes by: the mean of the last four, not one noisy epoch
EXTEND_WITHIN = 0.5  # any amount of training added in the first half; later see LATE_GROWTH
# Past the middle a plan grows only back to its longest, or by this share: a few steps more barely
# move the learning-rate schedule, and they keep a run whose last epochs ran fast from ending early.
LATE_GROWTH = 0.03
REPLAN_MARGIN = 1.02  # add only what fits 2% slower epochs, cut only when 2% faster ones overrun
EXTEND_AT_LEAST = 0.01  # a plan grows by at least this share of the window: noise must not add a step at a time
SLURM_SIGNAL_SECONDS = 90.0  # submitit's USR2 warning before the time limit: the run must end before it
# SLURM checks time limits on a cycle and "may send the signal up to 60 seconds earlier than
# specified" (sbatch --signal): a run that filled the window up to the nominal warning was
# stopped 20 s short of its end on the local cluster.
SLURM_SIGNAL_EARLY_SECONDS = 60.0
PROVISIONAL_EPOCHS = 1000  # the schedule's length until the plan: its first steps are its start


@dataclass(frozen=True)
class RunShape:
    """What one epoch and the end of the run consist of, in batches."""

    train_batches: int
    eval_batches: int  # validation, every epoch
    test_batches: int
    tta_passes: int  # 2 with hflip test-time augmentation
    checkpoint_seconds: float = 1.0
    accum: int = 1  # batches an optimizer step accumulates: a cut epoch ends on a whole step


def epoch_overhead(shape: RunShape, step_seconds: float) -> float:
    """What an epoch costs besides its training batches: validation and its checkpoint."""
    return shape.eval_batches * step_seconds * EVAL_RATIO + shape.checkpoint_seconds


def epoch_cost(shape: RunShape, step_seconds: float) -> float:
    """One epoch: training, validation and its checkpoint."""
    return shape.train_batches * step_seconds + epoch_overhead(shape, step_seconds)


def end_cost(shape: RunShape, step_seconds: float) -> float:
    """After the last epoch: validation again for the temperature, the test split (with TTA), files."""
    eval_step = step_seconds * EVAL_RATIO
    return (shape.eval_batches + shape.test_batches) * eval_step * shape.tta_passes + END_SECONDS


def fit_training(
    usable: float, step_seconds: float, shape: RunShape, epochs_done: int, batches_done: int
) -> tuple[int, Optional[int]]:
    """(epochs, optimizer steps of the last one or None when it is whole): the training that fits
    in ``usable`` seconds from ``epochs_done`` whole epochs and ``batches_done`` batches of the next.

    Whole epochs while they fit, then one cut where the time runs out; the epoch under way is
    always part of the plan (cut no earlier than the next whole step)."""
    total, accum = shape.train_batches, shape.accum
    overhead, epoch = epoch_overhead(shape, step_seconds), epoch_cost(shape, step_seconds)
    done = min(batches_done, total)
    this_epoch = (total - done) * step_seconds + overhead
    if usable < this_epoch:  # the epoch under way is the last
        cut = max(_whole_steps(done + (usable - overhead) / step_seconds, accum), _whole_steps(done, accum, up=True))
        return epochs_done + 1, _cut_steps(max(cut, accum), total, accum)
    whole = int((usable - this_epoch) // epoch)
    left = usable - this_epoch - whole * epoch
    cut = _whole_steps((left - overhead) / step_seconds, accum)
    if cut <= 0:
        return epochs_done + 1 + whole, None
    return epochs_done + 2 + whole, _cut_steps(cut, total, accum)


def _whole_steps(batches: float, accum: int, up: bool = False) -> int:
    """``batches`` rounded to whole optimizer steps (down, or ``up``), in batches; never below 0."""
    steps = math.ceil(batches / accum) if up else math.floor(batches / accum)
    return max(0, steps) * accum


def _cut_steps(batches: int, total: int, accum: int) -> Optional[int]:
    """An epoch cut after ``batches`` of its ``total`` in optimizer steps; None when it is whole."""
    return None if batches >= total else batches // accum


def planned_batches(plan: BudgetPlan, shape: RunShape) -> int:
    """All the training batches ``plan`` trains, from the run's start."""
    last = shape.train_batches if plan.last_steps is None else min(shape.train_batches, plan.last_steps * shape.accum)
    return (plan.epochs - 1) * shape.train_batches + last


def training_of(batches: int, shape: RunShape) -> tuple[int, Optional[int]]:
    """(epochs, optimizer steps of the last one or None) of ``batches`` training batches from the
    run's start, the inverse of :func:`planned_batches` (down to a whole step)."""
    epochs = max(1, math.ceil(batches / shape.train_batches))
    last = _whole_steps(batches - (epochs - 1) * shape.train_batches, shape.accum)
    if last == 0 and epochs > 1:
        return epochs - 1, None
    return epochs, _cut_steps(max(last, shape.accum), shape.train_batches, shape.accum)


def plan_budget(
    budget: str,
    seconds_left: float,
    step_seconds: float,
    shape: RunShape,
    epochs_done: int,
    batches_done: int,
    replans: int = 0,
) -> BudgetPlan:
    """The training that fits in ``seconds_left`` (at least the current epoch), from a training
    step's time. ``batches_done``: batches of the current epoch already trained."""
    reserve = end_cost(shape, step_seconds)
    epochs, last = fit_training(seconds_left * SAFETY - reserve, step_seconds, shape, epochs_done, batches_done)
    return BudgetPlan(
        budget=budget,
        seconds=seconds_left,
        step_seconds=step_seconds,
        epoch_seconds=epoch_cost(shape, step_seconds),
        reserve_seconds=reserve,
        epochs=epochs,
        planned_after=epochs_done,
        replans=replans,
        last_steps=last,
    )


def projected_seconds(plan: BudgetPlan, shape: RunShape, epochs_done: int, batches_done: int) -> float:
    """Seconds still needed to finish ``plan`` from this position, at its step time."""
    batches = planned_batches(plan, shape) - epochs_done * shape.train_batches - batches_done
    epochs = plan.epochs - epochs_done
    overhead = epoch_overhead(shape, plan.step_seconds)
    return max(0, batches) * plan.step_seconds + max(0, epochs) * overhead + plan.reserve_seconds


class StepTimer:
    """Times training steps after :data:`WARMUP_STEPS`, never across an epoch boundary (the
    validation and the loader's start lie between). Ready after :data:`TIMED_STEPS` timed
    steps: a count, so every rank is ready at the same step and can agree on one plan."""

    def __init__(self) -> None:
        self.seen = 0
        self.timed = 0
        self.total = 0.0
        self.last: Optional[float] = None

    def new_epoch(self) -> None:
        self.last = None

    def tick(self, now: Optional[float] = None) -> Optional[float]:
        """Call after each step; the mean step time once enough steps are timed, else None."""
        now = time.perf_counter() if now is None else now
        self.seen += 1
        if self.last is not None and self.seen > WARMUP_STEPS:
            self.total += now - self.last
            self.timed += 1
        self.last = now
        return self.total / self.timed if self.timed >= TIMED_STEPS else None


@dataclass(frozen=True)
class BudgetClock:
    """This attempt's window: its start, and the seconds it may use (for ``slurm``: the job's
    time left; for a duration: the budget less what earlier attempts used)."""

    budget: str
    started: float  # time.time() when the attempt started
    seconds: float

    def left(self, now: Optional[float] = None) -> float:
        return self.seconds - ((time.time() if now is None else now) - self.started)


def attempt_clock(budget: str, started: float, used_before: float, slurm_seconds_left: Optional[float]) -> BudgetClock:
    """The window of this attempt; ``slurm_seconds_left``: the job's time left at ``started``."""
    total = budget_seconds(budget)
    if total is not None:
        return BudgetClock(budget, started, total - used_before)
    if slurm_seconds_left is None:
        raise ConfigError("train.budget=slurm outside a SLURM job: give a duration such as train.budget=30m")
    return BudgetClock(budget, started, slurm_seconds_left - SLURM_SIGNAL_SECONDS - SLURM_SIGNAL_EARLY_SECONDS)


def parse_time_left(text: str) -> Optional[float]:
    """``squeue -o %L`` (``[days-]hours:minutes:seconds``, ``minutes:seconds``) in seconds; None when unlimited."""
    text = text.strip()
    if not text or text.upper() in ("UNLIMITED", "NOT_SET", "INVALID"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return float(((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds)


def slurm_time_left(environ: Mapping[str, str]) -> Optional[float]:
    """The job's time left, from ``squeue`` (SLURM exports no end time to the job); None outside a job."""
    job = environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}" if job else environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_time_left(out.stdout.splitlines()[0] if out.stdout.strip() else "")


class Budget:
    """``train.budget`` during a run: the step timer, the plan, and the checks that keep it.

    Its methods only compute; the Trainer shares their result from the main process (every
    rank must train the same epochs) and lays the schedule over the plan."""

    def __init__(self, clock: BudgetClock, shape: RunShape, plan: Optional[BudgetPlan]):
        self.clock = clock
        self.shape = shape
        self.plan = plan
        self.timer = StepTimer() if plan is None else None
        self.epoch_times: list[float] = []  # measured epochs of this attempt since its plan
        # The longest plan (compared in batches): late re-plans give back up to it.
        self.most = plan
        self.late_cap: Optional[int] = None  # see _late_cap

    def adopt(self, plan: BudgetPlan) -> None:
        self.plan = plan
        if self.most is None or self.batches(plan) > self.batches(self.most):
            self.most = plan
        self.timer = None

    def batches(self, plan: BudgetPlan) -> int:
        return planned_batches(plan, self.shape)

    def new_epoch(self) -> None:
        if self.timer is not None:
            self.timer.new_epoch()

    def after_step(self, epochs_done: int, batches_done: int) -> Optional[BudgetPlan]:
        """The first plan, once enough steps are timed; None before and after."""
        if self.timer is None:
            return None
        step = self.timer.tick()
        if step is None:
            return None
        return plan_budget(self.clock.budget, self.clock.left(), step, self.shape, epochs_done, batches_done)

    def on_resume(self, epochs_done: int, batches_done: int) -> Optional[BudgetPlan]:
        """A new plan when the time left cannot hold the saved one (a requeue with less time)."""
        plan = self.plan
        if plan is None:
            return None
        if projected_seconds(plan, self.shape, epochs_done, batches_done) <= self.clock.left():
            return None
        return plan_budget(
            plan.budget, self.clock.left(), plan.step_seconds, self.shape, epochs_done, batches_done, plan.replans + 1
        )

    def after_epoch(self, epochs_done: int, epoch_seconds: float) -> Optional[BudgetPlan]:
        """A new plan when the recent epochs say the plan misses the budget: less training when
        they would overrun it, more when they would leave a share of it unused. None while the
        plan holds. Both need a margin (noise must not add and then cut), and after the first
        half more training only gives back what an earlier re-plan cut."""
        plan = self.plan
        if plan is None or epochs_done >= plan.epochs:
            return None
        self.epoch_times.append(epoch_seconds)
        recent = self.epoch_times[-RECENT_EPOCHS:]
        paced = self._at_pace(plan, epochs_done, sum(recent) / len(recent))
        usable = paced.seconds * SAFETY - paced.reserve_seconds  # one reading of the clock

        def fits(margin: float) -> BudgetPlan:
            epochs, last = fit_training(usable, paced.step_seconds * margin, self.shape, epochs_done, 0)
            return replace(paced, epochs=epochs, last_steps=last)

        planned = self.batches(plan)
        if self.batches(fits(1 / REPLAN_MARGIN)) < planned:  # overruns even if the epochs get 2% faster
            return fits(1.0)
        at_least = max(self.shape.accum, EXTEND_AT_LEAST * self.clock.seconds / paced.step_seconds)
        if len(self.epoch_times) < 2 or self.batches(fits(REPLAN_MARGIN)) < planned + at_least:
            return None  # one epoch is not a pace; or too little to add even 2% slower
        more = fits(1.0)
        if epochs_done > plan.epochs * EXTEND_WITHIN and self.batches(more) > self._late_cap():
            epochs, last = training_of(self._late_cap(), self.shape)
            more = replace(paced, epochs=epochs, last_steps=last)
        return more if self.batches(more) > planned else None

    def _late_cap(self) -> int:
        """The most training a plan may hold past the run's middle: the longest plan until then, and
        LATE_GROWTH more. Fixed when first asked, so late re-plans cannot ratchet it up."""
        if self.late_cap is None:
            self.late_cap = int(self.batches(self.most) * (1 + LATE_GROWTH))
        return self.late_cap

    def _at_pace(self, plan: BudgetPlan, epochs_done: int, epoch_seconds: float) -> BudgetPlan:
        """``plan`` re-timed at the measured pace (its epoch count unchanged): the step and the
        end's evaluation scale with the epoch; the files at the end do not."""
        pace = epoch_seconds / plan.epoch_seconds
        return BudgetPlan(
            budget=plan.budget,
            seconds=self.clock.left(),
            step_seconds=plan.step_seconds * pace,
            epoch_seconds=epoch_seconds,
            reserve_seconds=END_SECONDS + (plan.reserve_seconds - END_SECONDS) * pace,
            epochs=plan.epochs,
            planned_after=epochs_done,
            replans=plan.replans + 1,
        )


def describe_plan(plan: BudgetPlan, started: float, shape: RunShape, batches_done: int = 0) -> str:
    """One line: ``budget 30m: step 1.210 s, epoch 64.0 s, end 21.2 s: 27 epochs (the last cut to 41 of
    89 steps), expected end 14:02:11, 1776 s into this attempt``; ``batches_done``: of the epoch under way."""
    planned_end = time.time() + projected_seconds(plan, shape, plan.planned_after, batches_done)
    per_epoch = math.ceil(shape.train_batches / shape.accum)
    cut = f" (the last cut to {plan.last_steps} of {per_epoch} steps)" if plan.last_steps is not None else ""
    return (
        f"budget {plan.budget}: step {plan.step_seconds:.3f} s, epoch {plan.epoch_seconds:.1f} s, "
        f"end {plan.reserve_seconds:.1f} s: {plan.epochs} epochs{cut}, expected end "
        f"{time.strftime('%H:%M:%S', time.localtime(planned_end))}, {planned_end - started:.0f} s into this attempt"
    )
