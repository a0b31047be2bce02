"""How close to its budget a ``train.budget`` run ends, replayed over jittery epochs.

    python tools/budget_replay.py
    git show c87e238:brainmri/training/budget.py > /tmp/budget_c87e238.py
    python tools/budget_replay.py --budget-module /tmp/budget_c87e238.py   # the whole-epoch rule before

Runs :class:`brainmri.training.budget.Budget` (or the module given) through 100 seeded 30-minute
runs for each epoch length: epochs -8% to +12% off their mean, one in ten 15% slower still, a
20% slower stretch (epochs 18-23) in every third run, first steps that misjudge the pace by -15%
to +20%, and a cut last epoch taking its share of an epoch. The pace model is the one
``tests/unit/training/test_budget.py`` asserts on. Prints, per epoch length, the range and mean of
the end (start to results) as a share of the budget and how many runs missed it by over 3%.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
from types import ModuleType

from brainmri.training import budget as current

BUDGET = 1800.0
EPOCH_LENGTHS = [(30.0, 50.0), (150.0, 200.0), (300.0, 450.0)]  # 36-60, 9-12 and 4-6 epochs in 30 minutes


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("budget_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def replay(B: ModuleType, seed: int, shortest: float, longest: float) -> float:
    """One run: its end as a share of the budget."""
    shape = B.RunShape(train_batches=40, eval_batches=5, test_batches=10, tta_passes=2, checkpoint_seconds=1.0)
    rng = random.Random(seed)
    base = rng.uniform(shortest, longest)
    first_steps = base / 43.0 * rng.uniform(0.85, 1.2)  # 43 s: an epoch of 1 s steps in this shape
    plan = B.plan_budget("30m", BUDGET, first_steps, shape, 0, 11)
    budget = B.Budget(B.BudgetClock("30m", started=time.time(), seconds=BUDGET), shape, plan)
    elapsed, epoch = 0.0, 0
    while epoch < budget.plan.epochs:
        epoch += 1
        stretch = 0.2 * base if seed % 3 == 0 and 18 <= epoch <= 23 else 0.0
        took = base * rng.uniform(0.92, 1.12) + (0.15 * base if rng.random() < 0.1 else 0.0) + stretch
        last_steps = getattr(budget.plan, "last_steps", None)
        if epoch == budget.plan.epochs and last_steps is not None:
            took *= last_steps / shape.train_batches
        elapsed += took
        budget.clock = B.BudgetClock("30m", started=time.time() - elapsed, seconds=BUDGET)
        new = budget.after_epoch(epoch, took)
        if new is not None:
            budget.adopt(new)
    return (elapsed + budget.plan.reserve_seconds) / BUDGET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-module", help="a budget.py to replay instead of the installed one")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    B = load(args.budget_module) if args.budget_module else current
    for shortest, longest in EPOCH_LENGTHS:
        ends = [replay(B, seed, shortest, longest) for seed in range(args.runs)]
        missed = sum(abs(end - 1) > 0.03 for end in ends)
        print(
            f"epochs of {shortest:.0f}-{longest:.0f} s ({BUDGET / longest:.0f}-{BUDGET / shortest:.0f} in 30 min): "
            f"end {min(ends):.1%}-{max(ends):.1%} of the budget, mean {sum(ends) / len(ends):.1%}, "
            f"outside +-3%: {missed} of {len(ends)}"
        )


if __name__ == "__main__":
    main()
