"""brainmri/training/budget.py and the train.epochs / train.budget alternatives: plans from a
measured step time, the re-plans that keep a budget, and the job's time left."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from brainmri.config import budget_seconds, load_config
from brainmri.errors import ConfigError
from brainmri.training import budget as B

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
SHAPE = B.RunShape(train_batches=100, eval_batches=20, test_batches=40, tta_passes=1, checkpoint_seconds=1.0)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("40s", 40), ("slurm", None)]
)
def test_budgets_read_as_seconds(text, seconds):
    assert budget_seconds(text) == seconds


@pytest.mark.parametrize("text", ["30", "m", "1.5h", "30 min", "0m", ""])
def test_a_bad_budget_is_one_line(text):
    with pytest.raises(ConfigError, match="train.budget=.* is invalid: expected a duration such as 30m"):
        budget_seconds(text)


def test_the_plan_is_the_epochs_that_fit_after_the_rest_of_this_epoch_and_the_end():
    # A step of 1 s: an epoch is 100 + 20 x 0.4 + 1 = 109 s; the end 60 x 0.4 + 3 = 27 s.
    plan = B.plan_budget("30m", 1800.0, 1.0, SHAPE, epochs_done=0, batches_done=11)
    assert plan.epoch_seconds == pytest.approx(109.0) and plan.reserve_seconds == pytest.approx(27.0)
    rest = 109.0 - 11  # of the first epoch
    assert plan.epochs == 1 + int((1800 * B.SAFETY - rest - 27.0) // 109.0) == 15
    assert plan.epochs * 109.0 - 11 + 27.0 <= 1800  # the plan ends inside its budget
    twice_as_slow = B.plan_budget("30m", 1800.0, 2.0, SHAPE, epochs_done=0, batches_done=11)
    assert twice_as_slow.epochs == 7  # an fp32 CPU gets fewer epochs, not a longer run
    assert B.plan_budget("1m", 60.0, 2.0, SHAPE, 0, 11).epochs == 1  # at least the epoch under way


def test_tta_doubles_the_end():
    hflip = B.RunShape(100, 20, 40, tta_passes=2)
    assert B.end_cost(hflip, 1.0) == pytest.approx(60 * 0.4 * 2 + B.END_SECONDS)


def test_the_step_timer_skips_warm_up_and_epoch_boundaries():
    timer = B.StepTimer()
    readings = []
    for ticks in ([0.0, 10.0, 20.0, 30.0], [100.0 + i for i in range(8)]):  # a slow first epoch, then 1 s steps
        timer.new_epoch()
        readings += [timer.tick(t) for t in ticks]
    # Timed: the 4th step of epoch 1 (after 3 warm-up steps: 10 s), then 7 intervals of epoch 2 (not the
    # gap across the boundary, where validation ran): 8 steps, ready at the last tick.
    assert readings[:-1] == [None] * 11 and readings[-1] == pytest.approx((10 + 7) / 8)


def test_the_step_timer_is_ready_after_a_count_so_every_rank_plans_at_one_step():
    steps = []
    for speed in (0.1, 3.0):  # a fast and a slow rank
        timer, n = B.StepTimer(), 0
        while timer.tick(n * speed) is None:
            n += 1
        steps.append(n)
    assert steps[0] == steps[1] == B.WARMUP_STEPS + B.TIMED_STEPS - 1


def test_a_requeue_keeps_the_plan_when_the_time_left_holds_it_and_replans_when_not():
    plan = B.plan_budget("30m", 1800.0, 1.0, SHAPE, 0, 11)
    now = time.time()
    roomy = B.Budget(B.BudgetClock("30m", started=now, seconds=1800.0 - 5 * 109.0), SHAPE, plan)  # 5 epochs used
    assert roomy.on_resume(epochs_done=5, batches_done=0) is None
    tight = B.Budget(B.BudgetClock("30m", started=now, seconds=600.0), SHAPE, plan)
    new = tight.on_resume(epochs_done=5, batches_done=0)
    assert new is not None and new.replans == 1 and new.planned_after == 5
    assert 5 < new.epochs < plan.epochs
    assert (new.epochs - 5) * new.epoch_seconds + new.reserve_seconds <= 600


def test_an_epoch_slower_than_planned_cuts_epochs_and_a_faster_one_keeps_them():
    plan = B.plan_budget("30m", 1800.0, 1.0, SHAPE, 0, 11)
    budget = B.Budget(B.BudgetClock("30m", started=0.0, seconds=1800.0), SHAPE, plan)
    now = time.time()
    budget.clock = B.BudgetClock("30m", started=now - 4 * 109.0, seconds=1800.0)  # 4 epochs as planned
    assert budget.after_epoch(4, 100.0) is None
    budget.clock = B.BudgetClock("30m", started=now - 4 * 160.0, seconds=1800.0)  # they took 160 s each
    cut = budget.after_epoch(4, 160.0)
    assert cut is not None and cut.epochs < plan.epochs and cut.replans == 1
    assert (cut.epochs - 4) * 160.0 + cut.reserve_seconds <= budget.clock.left()


def test_the_slurm_budget_is_the_jobs_time_left_less_submitits_warning():
    clock = B.attempt_clock("slurm", started=0.0, used_before=999.0, slurm_seconds_left=3600.0)
    assert clock.seconds == 3600.0 - B.SLURM_SIGNAL_SECONDS  # per attempt: earlier attempts do not count
    assert B.attempt_clock("30m", 0.0, 600.0, None).seconds == 1200.0
    with pytest.raises(ConfigError, match="train.budget=slurm outside a SLURM job"):
        B.attempt_clock("slurm", 0.0, 0.0, None)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7:00", 420), ("1:02:03", 3723), ("2-00:00:10", 172810), ("0:05", 5), ("UNLIMITED", None), ("", None)],
)
def test_squeues_time_left_reads_as_seconds(text, seconds):
    assert B.parse_time_left(text) == seconds


def test_outside_a_job_there_is_no_time_left():
    assert B.slurm_time_left({}) is None


def test_epochs_and_budget_are_alternatives():
    assert load_config(["recipe=demo", "train.budget=2m"], RECIPES).train.budget == "2m"
    with pytest.raises(ConfigError, match="train.epochs and train.budget are alternatives: set one of them"):
        load_config(["recipe=demo", "train.budget=2m", "train.epochs=3"], RECIPES)
    budgeted = load_config(["recipe=masoud_cpu30"], RECIPES)
    assert budgeted.train.budget == "30m"
    fixed = load_config(["recipe=masoud_cpu30", "train.epochs=5"], RECIPES)  # the command line replaces it
    assert fixed.train.budget is None and fixed.train.epochs == 5
