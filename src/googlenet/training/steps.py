"""One training batch: forward, backward and, every ``accumulate`` batches, the optimizer step and the weight
average; and reading the running statistics back from the device, where a diverged loss stops the run."""

from __future__ import annotations

import contextlib
import math

from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from googlenet.run.device import autocast, to_device
from googlenet.training.optim import set_learning_rate
from googlenet.training.progress import EpochStats
from googlenet.training.state import Run, TrainingDiverged


def train_batch(run: Run, x: Tensor, y: Tensor, stats: EpochStats) -> bool:
    """Forward and backward of one batch; with gradient accumulation, ``accumulate`` batches make one
    optimizer step. True when this batch completed a step."""
    cfg, plan, state = run.cfg, run.plan, run.state
    started = run.clock.elapsed()
    x, y = to_device(x, y, run.device, cfg.train.channels_last)
    group_start = state.batch - state.batch % plan.accumulate
    group_size = min(plan.accumulate, plan.batches_per_epoch - group_start)  # the epoch's last group may be short
    first, last = state.batch == group_start, state.batch + 1 == group_start + group_size
    set_learning_rate(run.optimizer, run.learning_rate(state.step))
    # DDP averages gradients only on the group's last backward; the others accumulate locally.
    no_sync = run.forward.no_sync() if isinstance(run.forward, DistributedDataParallel) and not last else None
    with no_sync or contextlib.nullcontext():
        with autocast(run.device, cfg.train.precision):
            loss, logits = run.loss_fn(
                run.forward, x, y, aux_weight=cfg.model.aux_weight, label_smoothing=cfg.optim.label_smoothing
            )
        if first:
            run.optimizer.zero_grad(set_to_none=True)
        (loss / group_size).backward()  # type: ignore[no-untyped-call]
    state.batch += 1
    stats.add(loss, logits, y)
    # Read back (and check) before the optimizer step, so that a diverged loss never reaches the weights
    # where the loss is read at every step; on a GPU the read's wait then counts in the batch's time.
    if run.settle_every == 1 or (last and (state.step + 1) % run.settle_every == 0):
        settle(run, stats)
    if last:
        state.step += 1
        optimizer_step(run)
    # The optimizer step counts in the batch's time: Muon's orthogonalisation is a quarter of a CPU step.
    stats.seconds += run.clock.elapsed() - started
    if last:
        run.hooks.after_step(run)
    return last


def optimizer_step(run: Run) -> None:
    """The optimizer step (gradients clipped to optim.grad_clip if set), then the weight average."""
    if run.cfg.optim.grad_clip > 0:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.optim.grad_clip)
    run.optimizer.step()
    if run.ema is not None:
        run.ema.update_parameters(run.model)


def settle(run: Run, stats: EpochStats) -> None:
    """Read the running statistics back from the device and stop if the loss is no longer finite."""
    stats.settle()
    if not math.isfinite(stats.loss_sum):
        raise TrainingDiverged(
            f"the loss became {stats.loss_sum / max(stats.seen, 1)} by step {run.state.step} "
            f"(lr {run.learning_rate(run.state.step):.4g}); the last good checkpoint is kept: lower optim.lr "
            "or set optim.grad_clip"
        )


def timed_settle(run: Run, stats: EpochStats) -> None:
    """`settle` outside a batch, its wait for the GPU counted in the batches' time."""
    started = run.clock.elapsed()
    settle(run, stats)
    stats.seconds += run.clock.elapsed() - started
