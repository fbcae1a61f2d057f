"""Planning a run to a wall-clock budget: how many optimizer steps fit in `train.max_minutes` on this machine.

A user does not know their CPU's images per second; the trainer measures it. Before the first real step it
times a few throw-away training steps and evaluation batches on a copy of the model (`measure` in the loop),
then `plan_steps` picks the largest number of steps whose training, per-epoch validations, checkpoints and
final test evaluation fit the budget. The whole schedule (warm-up, decay to the floor, EMA) then runs in
exactly that many steps, and the plan is stored in the checkpoint, so the learning rate stays a function of
the step and a resumed run follows the same schedule.

A shared machine rarely keeps the speed of its first seconds, so at every epoch end `replan` refits the rest
of the run to what that epoch and its validation took: the decay is stretched or squeezed from that step on
(the anchor, stored in the plan), and the run still ends its schedule as the budget ends.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from googlenet.errors import GoogLeNetError

# Seconds kept aside per epoch end for writing last.pt / best.pt and metrics (measured: about 0.3 s for the
# small model); and a share of the time left kept back because a run is rarely as fast as its measurement.
CHECKPOINT_SECONDS = 1.0
SAFETY_SHARE = 0.03


class BudgetError(GoogLeNetError):
    """A wall-clock budget too small for one training step, one validation and the test evaluation."""


@dataclass(frozen=True)
class Timing:
    """What the trainer measured on this machine before training."""

    step_seconds: float  # one optimizer step at the full image size, data included (median over the measured steps)
    images_per_step: int
    eval_images_per_second: float  # forward-only, as validation and testing run
    overhead_seconds: float  # on the run's clock before the next real step: set-up, measuring, earlier steps
    # Progressive resizing: each training size's step time as a share of the full size's; empty without it.
    size_costs: dict[int, float] = field(default_factory=dict)


@dataclass
class TrainingPace:
    """The training seconds and full-size steps of the epochs this process has timed, for the re-plans."""

    seconds: float = 0.0
    steps: float = 0.0

    def add_epoch(self, seconds: float, steps: float) -> float:
        """Count an epoch in; return the seconds per full-size step to plan the rest of the run with: the mean
        of this epoch's pace and the whole run's. On a shared machine one epoch can run 7% off the next, and a
        plan fitted to each epoch alone swings by as much; the whole run's pace alone would follow a lasting
        slow-down too late, and the run would meet its hard limit before the end of its schedule."""
        self.seconds += seconds
        self.steps += steps
        return (seconds / steps + self.seconds / self.steps) / 2


@dataclass(frozen=True)
class Workload:
    """What the run must do besides training steps."""

    steps_per_epoch: int
    max_steps: int  # the configured ceiling: train.epochs worth of steps
    done_steps: int  # already taken (a resumed run re-planned to a new budget)
    val_images: int  # per validation, all models counted (the EMA doubles it)
    test_images: int  # the final test evaluation, all views counted (flip TTA doubles it)
    # Progressive resizing: the steps from done_steps to a candidate total, counted in full-size steps (a
    # step on smaller images counts less); None: every step counts one.
    step_cost: Callable[[int], float] | None = None


@dataclass(frozen=True)
class BudgetPlan:
    """The plan a budgeted run follows; saved in its checkpoints."""

    budget_minutes: float
    total_steps: int
    step_seconds: float
    images_per_step: int
    eval_images_per_second: float
    val_seconds: float
    test_seconds: float
    overhead_seconds: float
    limited_by: str  # "budget" or "epochs"
    # The last re-plan: from this step, where the decay had reached this share, the rest of it is refitted.
    anchor_step: int = 0
    anchor_progress: float = 0.0
    replans: int = 0
    size_costs: dict[int, float] = field(default_factory=dict)  # as in Timing; step_seconds is the full size's

    @property
    def anchor(self) -> tuple[int, float]:
        return self.anchor_step, self.anchor_progress

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> BudgetPlan:
        costs = {int(size): float(cost) for size, cost in table.get("size_costs", {}).items()}
        return cls(**{**table, "size_costs": costs})

    @property
    def images_per_second(self) -> float:
        return self.images_per_step / self.step_seconds

    def describe(self, steps_per_epoch: int) -> str:
        epochs = self.total_steps / steps_per_epoch
        fits = "fit in" if self.limited_by == "budget" else "(the configured epochs) take about"
        smaller = sorted(size for size, cost in self.size_costs.items() if cost != 1.0)
        at_sizes = "".join(f", {self.images_per_second / self.size_costs[s]:,.0f} at {s} px" for s in smaller)
        full = f" at {max(self.size_costs)} px" if self.size_costs else ""
        return (
            f"measured {self.images_per_second:,.0f} img/s training{full}{at_sizes}, "
            f"{self.eval_images_per_second:,.0f} img/s "
            f"evaluating: {epochs:.2f} epochs = {self.total_steps:,} steps {fits} {self.budget_minutes:g} min "
            f"(each validation {self.val_seconds:.0f} s, test evaluation {self.test_seconds:.0f} s kept aside)"
        )


def seconds_for(steps: int, timing: Timing, work: Workload) -> float:
    """Wall-clock seconds a run of ``steps`` optimizer steps takes, start to finish, by the measured timing."""
    # Every epoch end validates, and so does a run that ends mid-epoch.
    epoch_ends = math.ceil(steps / work.steps_per_epoch) - work.done_steps // work.steps_per_epoch
    val_seconds = work.val_images / timing.eval_images_per_second
    test_seconds = work.test_images / timing.eval_images_per_second
    full_size_steps = work.step_cost(steps) if work.step_cost is not None else steps - work.done_steps
    return (
        timing.overhead_seconds
        + full_size_steps * timing.step_seconds
        + epoch_ends * (val_seconds + CHECKPOINT_SECONDS)
        + test_seconds
    )


def plan_steps(budget_minutes: float, timing: Timing, work: Workload) -> BudgetPlan:
    """The largest number of steps (at most ``work.max_steps``) that fits ``budget_minutes``, a safety share of
    the time left kept back; BudgetError naming the minimum when not even one step and one validation fit."""
    spent = timing.overhead_seconds
    usable = spent + (budget_minutes * 60 - spent) * (1 - SAFETY_SHARE)
    first = work.done_steps + 1
    minimum = spent + (seconds_for(first, timing, work) - spent) / (1 - SAFETY_SHARE)
    if minimum > budget_minutes * 60:
        raise BudgetError(
            f"train.max_minutes={budget_minutes:g} is too small for this run: one step takes "
            f"{timing.step_seconds:.2f} s, one validation {work.val_images / timing.eval_images_per_second:.1f} s "
            f"and the test evaluation {work.test_images / timing.eval_images_per_second:.1f} s here, after "
            f"{timing.overhead_seconds:.0f} s of set-up; it needs at least {math.ceil(minimum / 6) / 10:g} minutes"
        )
    # seconds_for grows with the step count, so a bisection finds the largest count that fits.
    low, high = first, max(work.max_steps, first)
    while low < high:
        middle = (low + high + 1) // 2
        if seconds_for(middle, timing, work) <= usable:
            low = middle
        else:
            high = middle - 1
    return BudgetPlan(
        budget_minutes=budget_minutes,
        total_steps=low,
        step_seconds=timing.step_seconds,
        images_per_step=timing.images_per_step,
        eval_images_per_second=timing.eval_images_per_second,
        val_seconds=work.val_images / timing.eval_images_per_second,
        test_seconds=work.test_images / timing.eval_images_per_second,
        overhead_seconds=timing.overhead_seconds,
        limited_by="epochs" if low >= work.max_steps else "budget",
        size_costs=dict(timing.size_costs),
    )


def replan(plan: BudgetPlan, timing: Timing, work: Workload, progress: float) -> BudgetPlan:
    """The plan refitted at an epoch end to what this machine measured over the epoch (``timing``, its
    overhead the clock so far): ``plan`` itself when the same number of steps fits, else a plan anchored at
    ``work.done_steps``, where the decay had reached ``progress``. When not one more step fits, the run
    ends its schedule here."""
    try:
        fresh = plan_steps(plan.budget_minutes, timing, work)
    except BudgetError:
        fresh = dataclasses.replace(plan, total_steps=work.done_steps, limited_by="budget")
    if fresh.total_steps == plan.total_steps:
        return plan
    return dataclasses.replace(fresh, anchor_step=work.done_steps, anchor_progress=progress, replans=plan.replans + 1)
