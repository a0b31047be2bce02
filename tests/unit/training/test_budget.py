"""brainmri/training/budget.py and the train.epochs / train.budget alternatives: plans from a
measured step time, the re-plans that keep a budget, and the job's time left."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from brainmri.config import budget_seconds, load_config
from brainmri.errors import ConfigError
from brainmri.training import budget as B

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
SHAPE = B.RunShape(train_batches=100, eval_batches=20, test_batches=40, tta_passes=1, checkpoint_seconds=1.0)
# masoud_cpu30's proportions: about 40 epochs in 30 minutes, so one epoch is 2-3% of the budget
LONG = B.RunShape(train_batches=40, eval_batches=5, test_batches=10, tta_passes=2, checkpoint_seconds=1.0)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("40s", 40), ("slurm", None)]
)
def test_budgets_read_as_seconds(text, seconds):
    assert budget_seconds(text) == seconds


@pytest.mark.parametrize("text", ["30", "m", "1.5h", "30 min", "0m", ""])
def test_a_bad_budget_is_one_line(text):
    with pytest.raises(ConfigError, match="train.budget=.* is invalid: expected a duration such as 30m"):
        budget_seconds(text)


def test_the_plan_is_whole_epochs_then_one_cut_where_the_time_runs_out():
    # A step of 1 s: an epoch is 100 + 20 x 0.4 + 1 = 109 s; the end 60 x 0.4 + 3 = 27 s.
    plan = B.plan_budget("30m", 1800.0, 1.0, SHAPE, epochs_done=0, batches_done=11)
    assert plan.epoch_seconds == pytest.approx(109.0) and plan.reserve_seconds == pytest.approx(27.0)
    # The rest of the first epoch (89 batches, 9 s of validation and checkpoint), 15 whole epochs,
    # then a 17th cut to the 22 batches that fit with its validation: the budget, less the safety margin.
    assert (plan.epochs, plan.last_steps) == (17, 22)
    end = 98.0 + 15 * 109.0 + (22 + 9.0) + 27.0
    assert end == pytest.approx(1800 * B.SAFETY)
    assert B.projected_seconds(plan, SHAPE, 0, 11) == pytest.approx(end)
    assert B.planned_batches(plan, SHAPE) == 16 * 100 + 22
    twice_as_slow = B.plan_budget("30m", 1800.0, 2.0, SHAPE, epochs_done=0, batches_done=11)
    assert (twice_as_slow.epochs, twice_as_slow.last_steps) == (9, 4)  # an fp32 CPU trains less, not longer
    assert B.projected_seconds(twice_as_slow, SHAPE, 0, 11) == pytest.approx(1800 * B.SAFETY, abs=2.0)
    # Less time than the epoch under way: it is the last, cut at the step the plan came at.
    assert B.plan_budget("1m", 60.0, 2.0, SHAPE, 0, 11).epochs == 1
    assert B.plan_budget("1m", 60.0, 2.0, SHAPE, 0, 11).last_steps == 11


def test_a_cut_epoch_ends_on_a_whole_optimizer_step():
    accumulating = B.RunShape(train_batches=100, eval_batches=20, test_batches=40, tta_passes=1, accum=4)
    plan = B.plan_budget("30m", 1800.0, 1.0, accumulating, 0, 11)
    assert (plan.epochs, plan.last_steps) == (17, 5)  # 22 batches fit: 5 whole steps of 4
    assert B.planned_batches(plan, accumulating) == 16 * 100 + 20
    # Under way at batch 11 with no time: the step under way (batches 9-12) completes.
    assert B.plan_budget("1m", 60.0, 2.0, accumulating, 0, 11).last_steps == 3
    # An epoch that fits whole is not cut.
    exact = B.RunShape(train_batches=100, eval_batches=0, test_batches=0, tta_passes=1, checkpoint_seconds=0.0)
    whole = B.plan_budget("5m", (300 + B.END_SECONDS) / B.SAFETY, 1.0, exact, 0, 0)
    assert (whole.epochs, whole.last_steps) == (3, None)


def test_an_fp32_cpus_ten_epoch_budget_ends_on_time():
    """masoud_cpu30 in fp32 on an AVX2-only Zen 3 (issue 23): 179 steps an epoch of ~1 s, ten epochs
    in 30 minutes. Whole epochs planned 10 and would have ended at 103%; the cut one ends on time."""
    shape = B.RunShape(train_batches=179, eval_batches=0, test_batches=41, tta_passes=2)
    plan = B.plan_budget("30m", 1800.0, 0.992, shape, 0, 11)
    assert plan.last_steps is not None
    end = B.projected_seconds(plan, shape, 0, 11)
    assert 0.985 * 1800 <= end <= 1800


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
    on_plan = 1800.0 - (98.0 + 4 * 109.0)  # 5 epochs trained as planned (the first from batch 11)
    roomy = B.Budget(B.BudgetClock("30m", started=now, seconds=on_plan), SHAPE, plan)
    assert roomy.on_resume(epochs_done=5, batches_done=0) is None
    tight = B.Budget(B.BudgetClock("30m", started=now, seconds=600.0), SHAPE, plan)
    new = tight.on_resume(epochs_done=5, batches_done=0)
    assert new is not None and new.replans == 1 and new.planned_after == 5
    assert 5 < new.epochs < plan.epochs
    assert 0.98 * 600 <= B.projected_seconds(new, SHAPE, 5, 0) <= 600


def end_epoch(budget: B.Budget, epoch: int, took: float, elapsed: float):
    """Epoch ``epoch`` ended after ``took`` seconds, ``elapsed`` since the start: the budget's
    re-plan, adopted as the Schedule adopts it (None: the plan stands)."""
    budget.clock = B.BudgetClock("30m", started=time.time() - elapsed, seconds=1800.0)
    new = budget.after_epoch(epoch, took)
    if new is not None:
        budget.adopt(new)
    return new


def run_epochs(budget: B.Budget, seconds: list[float], first: int = 1) -> list:
    """Epochs ``first``, ``first + 1``... taking ``seconds`` each by the budget's clock; what each re-plan said."""
    plans, elapsed = [], 109.0 * first  # epochs before ``first`` ran as planned
    for epoch, took in enumerate(seconds, start=first + 1):
        elapsed += took
        plans.append(end_epoch(budget, epoch, took, elapsed))
    return plans


def planned_budget() -> B.Budget:
    plan = B.plan_budget("30m", 1800.0, 1.0, SHAPE, 0, 11)  # 16 epochs of 109 s
    return B.Budget(B.BudgetClock("30m", started=time.time(), seconds=1800.0), SHAPE, plan)


def run_to_end(budget: B.Budget, pace) -> tuple[int, float, list[int]]:
    """Epochs taking ``pace(epoch)`` seconds until the plan is done (a cut last epoch its share of
    that): the epochs trained, start to results in seconds (the plan's end at the last pace), and
    every plan's epoch count."""
    elapsed, epoch, counts = 0.0, 0, [budget.plan.epochs]
    while epoch < budget.plan.epochs:
        epoch += 1
        took = pace(epoch)
        plan, shape = budget.plan, budget.shape
        if epoch == plan.epochs and plan.last_steps is not None:
            took *= plan.last_steps * shape.accum / shape.train_batches
        elapsed += took
        new = end_epoch(budget, epoch, took, elapsed)
        if new is not None:
            counts.append(new.epochs)
    return epoch, elapsed + budget.plan.reserve_seconds, counts


def test_epochs_slower_than_planned_cut_epochs_to_end_near_the_budget():
    budget = planned_budget()
    plans = run_epochs(budget, [109.0, 160.0, 160.0])
    cut = [p for p in plans if p is not None][-1]
    assert cut.epochs < 16 and cut.replans >= 1
    epochs, end, _ = run_to_end(planned_budget(), lambda epoch: 109.0 if epoch == 1 else 160.0)
    assert epochs < 16 and abs(end - 1800) <= 0.03 * 1800  # the recipe promise: +-3%


def test_epochs_faster_than_the_first_steps_showed_add_epochs_in_the_first_half_only():
    # The timed steps (warm-up, cold caches) said 109 s an epoch; the epochs take 80 s.
    budget = planned_budget()
    plans = run_epochs(budget, [80.0, 80.0, 80.0])
    assert plans[0] is None  # one epoch is not a pace
    more = plans[1]
    assert more is not None and more.epochs > 16 and more.planned_after == 3
    end = 109.0 + 2 * 80.0 + (more.epochs - 3) * 80.0 + more.reserve_seconds
    assert abs(end - 1800) <= 0.03 * 1800  # the recipe promise: +-3%
    # The same pace found in the second half: the schedule is past its middle, the plan grows by
    # 3% at most (a few steps), not by the epochs the first half would have added.
    late = planned_budget()
    planned = late.batches(late.plan)
    grown = [p for p in run_epochs(late, [80.0] * 3, first=8) if p is not None]
    assert grown and all(planned < late.batches(p) <= planned * (1 + B.LATE_GROWTH) for p in grown)
    assert late.plan.epochs == 17


def test_noise_within_the_margin_neither_adds_nor_cuts():
    budget = planned_budget()
    assert run_epochs(budget, [109.0, 108.0, 110.0, 107.5, 109.5, 111.0, 107.0]) == [None] * 7


def long_budget(step_seconds: float = 1.0) -> B.Budget:
    plan = B.plan_budget("30m", 1800.0, step_seconds, LONG, 0, 11)  # 1 s: 41 epochs of 43 s
    return B.Budget(B.BudgetClock("30m", started=time.time(), seconds=1800.0), LONG, plan)


def test_a_slow_stretch_late_in_the_run_cuts_and_then_gives_the_epochs_back():
    # masoud_cpu30 seed 2 (issue 23): a slow stretch past the middle cut 43 epochs to 39 and
    # nothing gave them back when the pace recovered; the run ended at 94.7% of its budget.
    budget = long_budget()
    planned = budget.plan.epochs
    epochs, end, counts = run_to_end(budget, lambda epoch: 55.0 if 24 <= epoch <= 28 else 43.0)
    assert min(counts) < planned  # the stretch did cut
    assert epochs > min(counts) and max(counts) == planned  # given back, never past the longest plan
    assert abs(end - 1800) <= 0.03 * 1800


@pytest.mark.parametrize("epochs_in_budget", [(36, 60), (9, 12)], ids=["bf16-cpu", "fp32-cpu"])
def test_jittery_epochs_end_within_the_promise(epochs_in_budget):
    """Epochs -8% to +12% off their mean at random, one in ten 15% slower still, a slow stretch in
    every third run, and first steps that misjudge the pace by -15..+20%: every run ends within
    its budget +-3%, with 36-60 epochs in it and with 9-12 (where half an epoch is 4-5%)."""
    fewest, most = epochs_in_budget
    for seed in range(100):
        rng = random.Random(seed)
        base = rng.uniform(1800.0 / most, 1800.0 / fewest)
        budget = long_budget(base / 43.0 * rng.uniform(0.85, 1.2))

        def pace(epoch: int, rng=rng, base=base, seed=seed) -> float:
            stretch = 0.2 * base if seed % 3 == 0 and 18 <= epoch <= 23 else 0.0
            return base * rng.uniform(0.92, 1.12) + (0.15 * base if rng.random() < 0.1 else 0.0) + stretch

        _, end, _ = run_to_end(budget, pace)
        assert abs(end - 1800) <= 0.03 * 1800, f"seed {seed}: {end:.0f} s"


def test_the_slurm_budget_is_the_jobs_time_left_less_submitits_warning_and_slurms_early_margin():
    clock = B.attempt_clock("slurm", started=0.0, used_before=999.0, slurm_seconds_left=3600.0)
    assert clock.seconds == 3600.0 - 90.0 - 60.0  # per attempt: earlier attempts do not count
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
