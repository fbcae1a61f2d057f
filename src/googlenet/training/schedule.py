"""Learning-rate schedules as pure functions of the step: nothing to save, exact on resume."""

from __future__ import annotations

import math

from googlenet.config import ScheduleConfig


def lr_factor(
    step: int, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig, anchor: tuple[int, float] = (0, 0.0)
) -> float:
    """The multiplier of the peak learning rate at optimizer step ``step`` (0-based) of ``total_steps``.
    ``anchor`` (step, progress) is where a budgeted run last re-planned: from that step the rest of the decay
    is stretched or squeezed into the new total, so the learning rate stays continuous."""
    epoch = step / max(steps_per_epoch, 1)
    warmup = cfg.warmup_epochs * steps_per_epoch
    if warmup > 0 and step < warmup and cfg.name in ("cosine", "onecycle", "step", "constant"):
        # Linear warm-up from 1/10 of the peak: large early steps break BatchNorm statistics.
        return 0.1 + 0.9 * step / warmup
    if cfg.name in ("paper", "step"):
        # Step decay; the paper's is "decreasing the learning rate by 4% every 8 epochs", without a warm-up.
        return float(cfg.gamma ** math.floor(epoch / cfg.step_epochs))
    if cfg.name == "constant":
        return 1.0
    # cosine and onecycle anneal from the end of warm-up to min_lr_ratio; onecycle goes linearly.
    progress = decay_progress(step, total_steps, warmup, anchor)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.name == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def decay_progress(step: int, total_steps: int, warmup: float, anchor: tuple[int, float] = (0, 0.0)) -> float:
    """How far the decay after the warm-up has gone at ``step``, from 0 to 1. Without a re-plan it is linear
    from the end of the warm-up to ``total_steps``; after one at ``anchor = (step, progress)`` it goes on
    linearly from that point to 1 at the new ``total_steps``."""
    anchor_step, anchor_progress = anchor
    start, at_start = (anchor_step, anchor_progress) if anchor_step > warmup else (warmup, 0.0)
    if step < start:  # a step before the last re-plan: only logs ask, and the old total is gone
        start, at_start = warmup, 0.0
    progress = at_start + (1 - at_start) * (step - start) / max(total_steps - start, 1)
    return min(max(progress, 0.0), 1.0)
