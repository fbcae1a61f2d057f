"""The wall-clock budget, on a run: measure this machine, fit the schedule to train.max_minutes before the first
step, and refit it at each epoch end to the speed measured since. The arithmetic is googlenet.training.budget;
the measuring is a `Speedometer` (`MeasuredSpeed` here, a simulated one in tests)."""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

from torch import nn

from googlenet.data import test_split_size
from googlenet.run.metrics import predict_logits
from googlenet.training.budget import CHECKPOINT_SECONDS, BudgetPlan, Timing, Workload, plan_steps, replan
from googlenet.training.build import for_evaluation, trains_aux_heads
from googlenet.training.distributed import max_over_ranks
from googlenet.training.loss import TrainForward
from googlenet.training.optim import build_ema, build_optimizer
from googlenet.training.progress import EpochStats
from googlenet.training.resizing import resize_batch, step_cost, training_sizes
from googlenet.training.schedule import decay_progress
from googlenet.training.state import Clock, Hooks, Run, RunState, Speedometer, random_state_kept, synchronize
from googlenet.training.steps import train_batch

# Steps timed to plan a budget: the first ones pay for memory allocation and are left out.
WARMUP_STEPS, TIMED_STEPS = 3, 10
# A re-plan needs an epoch of at least this many steps to time (a resumed run's short remainder is not).
REPLAN_MIN_STEPS = 5


class MeasuredSpeed:
    """This machine's speed, timed: before training on a throw-away copy of the model and optimizer over the
    first batches (so the real run starts untouched), and at each epoch end from the epoch itself."""

    def measure(self, run: Run) -> tuple[dict[int, float], float]:
        """(seconds per optimizer step at each training size, seconds per evaluated image). The random state is
        put back, so a measured run takes the same steps as one that was not measured."""
        with random_state_kept(run.device):
            model = copy.deepcopy(run.model)
            trial = dataclasses.replace(
                run,
                model=model,
                forward=TrainForward(model, trains_aux_heads(run.cfg, model)),
                optimizer=build_optimizer(model, run.cfg, run.device),
                ema=build_ema(model, run.cfg.train.ema_decay),
                log=lambda _: None,
                hooks=Hooks(),
            )
            # The full size first: the smaller ones then reuse its allocations, as they will in the run.
            sizes = sorted(training_sizes(run.cfg.data), reverse=True)
            size_seconds = {size: self.time_size(trial, size) for size in sizes}
            return size_seconds, self.evaluation_seconds(run, for_evaluation(run, model))

    def time_size(self, trial: Run, size: int) -> float:
        """The median seconds of an optimizer step on ``size``-px images, over the first batches of the epoch."""
        trial.state, trial.clock = RunState(), Clock()
        stats, marks = EpochStats(), []
        for x, y in trial.data.train.epoch(0):
            if train_batch(trial, resize_batch(x, size), y, stats):
                synchronize(trial.device)
                marks.append(trial.clock.elapsed())
            if len(marks) > WARMUP_STEPS + TIMED_STEPS or trial.state.batch == trial.plan.batches_per_epoch:
                break
        gaps = sorted(b - a for a, b in zip(marks[WARMUP_STEPS - 1 :], marks[WARMUP_STEPS:], strict=False))
        return gaps[len(gaps) // 2] if gaps else marks[-1] / len(marks)  # the median: robust to a hiccup

    def evaluation_seconds(self, run: Run, model: nn.Module) -> float:
        """Seconds per image of forward-only evaluation, as validation runs it; the first batch warms up."""
        batches = run.data.val if run.data.val is not None else run.data.train
        settings = (run.device, run.cfg.train.precision, run.cfg.train.channels_last)
        times, images = [], []
        started = time.monotonic()
        for index, (logits, _) in enumerate(predict_logits(model, batches.epoch(0), *settings)):
            now = time.monotonic()
            times.append(now - started)
            images.append(int(logits.shape[0]))
            started = now
            if index == 2:
                break
        timed = slice(1, None) if len(times) > 1 else slice(None)
        return sum(times[timed]) / max(sum(images[timed]), 1)

    def at_epoch_end(self, run: Run, step_seconds: float, val_seconds: float) -> tuple[float, float]:
        """(seconds per step, seconds per evaluated image) as the epoch just ended measured them. Only rank 0
        validates: the other processes give 0, so the maximum over the processes is rank 0's figure. Where
        there is no split to validate, the plan's evaluation speed stands."""
        budget = run.plan.budget
        assert budget is not None
        images = validated_images(run)
        if images and val_seconds > 0:
            return step_seconds, val_seconds / images
        return step_seconds, 1 / budget.eval_images_per_second if run.dist.is_main else 0.0


def speedometer(run: Run) -> Speedometer:
    return run.hooks.speed if run.hooks.speed is not None else MeasuredSpeed()


def plan_budget(run: Run, resumed: dict[str, Any] | None) -> None:
    """Fit the run's schedule to train.max_minutes: measure this machine, then set plan.total_steps. A resumed
    run keeps the plan it started with unless its budget or epochs were changed."""
    cfg = run.cfg
    stored = resumed.get("plan") if resumed else None
    if resumed is not None and stored is not None:
        before = resumed["config"]["train"]
        if before["max_minutes"] == cfg.train.max_minutes and before["epochs"] == cfg.train.epochs:
            run.plan.budget = BudgetPlan.from_dict(stored)
            run.plan.total_steps = run.plan.budget.total_steps
            return
    if run.state.step >= run.plan.total_steps:
        return  # nothing left to plan
    size_seconds, eval_seconds_per_image = speedometer(run).measure(run)
    timing = _timing(run, size_seconds, eval_seconds_per_image, run.clock.elapsed())
    run.plan.budget = plan_steps(cfg.train.max_minutes, timing, _workload(run, timing.size_costs))
    run.plan.total_steps = run.plan.budget.total_steps
    run.log(run.plan.budget.describe(run.plan.steps_per_epoch))


def replan_at_epoch_end(run: Run, epoch_seconds: float, epoch_steps: int, val_seconds: float) -> str | None:
    """At an epoch end of a budgeted run, refit the rest of the schedule to the speed measured (training: this
    epoch's pace blended with the whole run's; validation: this epoch's): a shared machine is rarely as fast
    over half an hour as in its first seconds. Every process calls it at the same epoch ends (rank 0 alone
    knows the validation time); the new plan is in the checkpoint written next, so a resumed run follows it.
    Returns the line to log when the plan changed."""
    budget, state = run.plan.budget, run.state
    if budget is None or not run.cfg.train.replan or epoch_steps < REPLAN_MIN_STEPS:
        return None
    if state.step >= run.plan.total_steps:
        return None  # the schedule is done: nothing left to refit
    # The epoch's steps in full-size steps: with progressive resizing some were cheaper.
    epoch_range = range(state.step - epoch_steps, state.step)
    full_size_steps = sum(budget.size_costs.get(run.train_size(s), 1.0) for s in epoch_range)
    step_seconds = run.pace.add_epoch(epoch_seconds, full_size_steps)
    step_seconds, eval_seconds_per_image = speedometer(run).at_epoch_end(run, step_seconds, val_seconds)
    # The sizes keep the shares of the full size's step time they were measured at.
    size_seconds = {s: step_seconds * c for s, c in budget.size_costs.items()}
    size_seconds = size_seconds or {run.cfg.data.image_size: step_seconds}
    timing = _timing(run, size_seconds, eval_seconds_per_image, run.clock.elapsed() + CHECKPOINT_SECONDS)
    progress = decay_progress(state.step, run.plan.total_steps, run.warmup_steps, budget.anchor)
    fresh = replan(budget, timing, _workload(run, budget.size_costs, (state.step, progress)), progress)
    if fresh is budget:
        return None
    run.plan.budget, run.plan.total_steps = fresh, fresh.total_steps
    change = fresh.total_steps - budget.total_steps
    return f"re-planned at step {state.step:,} ({change:+,} steps): {fresh.describe(run.plan.steps_per_epoch)}"


def hard_limit(run: Run) -> float:
    """Seconds on the clock after which a budgeted run stops whatever its plan: early enough that the last
    validation and the test evaluation still fit, if this machine got slower than it measured."""
    budget = run.cfg.train.max_minutes * 60
    if run.plan.budget is None:
        return budget
    return budget - run.plan.budget.val_seconds - run.plan.budget.test_seconds


def validated_images(run: Run) -> int:
    """Images one validation evaluates, every model counted (the EMA doubles it)."""
    val_images = run.data.val.num_samples if run.data.val is not None else 0
    return val_images * (2 if run.ema is not None else 1)


def _timing(run: Run, size_seconds: dict[int, float], eval_seconds_per_image: float, elapsed: float) -> Timing:
    """The plan's figures from seconds per step at each training size (the full size's is the plan's step
    time; the others become shares of it)."""
    sizes = sorted(size_seconds)
    # Every process must plan the same steps (their learning rates must agree): all plan by the slowest.
    *seconds, eval_seconds_per_image, overhead = max_over_ranks(
        [*(size_seconds[s] for s in sizes), eval_seconds_per_image, elapsed], run.dist
    )
    full = seconds[-1]
    return Timing(
        step_seconds=full,
        images_per_step=run.cfg.data.batch_size * run.plan.accumulate,
        eval_images_per_second=1 / eval_seconds_per_image,
        overhead_seconds=overhead,
        size_costs={s: t / full for s, t in zip(sizes, seconds, strict=True)} if len(sizes) > 1 else {},
    )


def _workload(run: Run, size_costs: dict[int, float], anchor: tuple[int, float] = (0, 0.0)) -> Workload:
    """What the rest of the run must do. With progressive resizing a step's cost depends on its size, and
    its size on the candidate total and the ``anchor`` the plan will have."""
    cost = None
    if size_costs:
        cost = step_cost(run.state.step, lambda step, total: run.train_size(step, total, anchor), size_costs)
    return Workload(
        steps_per_epoch=run.plan.steps_per_epoch,
        max_steps=run.cfg.train.epochs * run.plan.steps_per_epoch,
        done_steps=run.state.step,
        val_images=validated_images(run),
        test_images=test_split_size(run.cfg.data) * run.cfg.train.budget_test_views,
        step_cost=cost,
    )
