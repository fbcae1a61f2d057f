"""Learning-rate schedules as pure functions of the step: nothing to save, exact on resume."""

from __future__ import annotations

import math

from googlenet.training.config import ScheduleConfig


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float:
    """The multiplier of the peak learning rate at optimizer step ``step`` (0-based) of ``total_steps``."""
    epoch = step / max(steps_per_epoch, 1)
    warmup = cfg.warmup_epochs * steps_per_epoch
    if warmup > 0 and step < warmup and cfg.name in ("cosine", "onecycle", "step", "constant"):
        # Linear warm-up from 1/10 of the peak: large early steps break BatchNorm statistics.
        return 0.1 + 0.9 * step / warmup
    if cfg.name == "paper":
        # The paper: "decreasing the learning rate by 4% every 8 epochs".
        return float(cfg.gamma ** math.floor(epoch / cfg.step_epochs))
    if cfg.name == "step":
        return float(cfg.gamma ** math.floor(epoch / cfg.step_epochs))
    if cfg.name == "constant":
        return 1.0
    # cosine and onecycle anneal from the end of warm-up to min_lr_ratio; onecycle goes linearly.
    progress = min(max((step - warmup) / max(total_steps - warmup, 1), 0.0), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.name == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape
