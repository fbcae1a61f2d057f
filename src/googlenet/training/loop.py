"""The training loop: `train(config, out_dir)` starts a run, `resume(out_dir)` continues one.

Read top to bottom:

1. `build_run` (googlenet.training.build) makes everything a run needs (device, data, model with its
   speed-ups, optimizer, EMA, plan) as one `Run`; with a wall-clock budget, `plan_budget`
   (googlenet.training.planner) then measures this machine and sets the number of steps;
2. `fit` runs epochs; `train_one_epoch` hands each batch to `train_batch` (googlenet.training.steps: forward,
   backward, and every ``accumulate`` batches the optimizer step); after each optimizer step `stop_reason` is
   the one place that decides whether to stop (the plan's last step, a signal, train.max_steps, the budget),
   reading the run's one `Clock`; every train.log_every_steps steps a row goes to steps.jsonl;
3. `end_epoch` (googlenet.training.records) validates, logs and writes metrics.jsonl and the checkpoints; a
   run that stops inside an epoch does the same there, marked partial.

A run stopped early writes DIR/checkpoints/last.pt at the exact step, and `resume` continues from it bit for
bit (on CPU with deterministic settings): batches are regenerated from (seed, epoch, index), the learning
rate is a pure function of the step and the stored plan, and the RNG, optimizer and EMA states travel in
the checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from googlenet.config import Config, ConfigError, apply_overrides, config_from_dict
from googlenet.files import writable_dir
from googlenet.run.checkpoint import check_current_seeding, load_checkpoint
from googlenet.training.build import build_model, build_run, torch_settings
from googlenet.training.distributed import any_rank, from_environment, shutdown
from googlenet.training.optim import keep_frozen_statistics
from googlenet.training.planner import hard_limit, plan_budget
from googlenet.training.progress import EpochBar, EpochStats
from googlenet.training.records import end_epoch, log_steps, save_last, tensorboard
from googlenet.training.resizing import resize_batch, training_sizes
from googlenet.training.state import (
    Clock,
    Hooks,
    Log,
    Run,
    TrainingDiverged,
    TrainResult,
    last_path,
    restore,
)
from googlenet.training.steps import timed_settle, train_batch

__all__ = ["Hooks", "TrainResult", "TrainingDiverged", "build_model", "resume", "train"]

RESUMABLE_KEYS = frozenset({"train.epochs", "train.max_steps", "train.max_minutes"})


def train(
    config: Config, out_dir: str | Path, *, progress: bool = False, log: Log = print, hooks: Hooks | None = None
) -> TrainResult:
    """Train as ``config`` says into ``out_dir``: metrics.jsonl, tensorboard/, checkpoints/last.pt and best.pt.
    ``hooks`` replace the clock and the speed measurement, or observe the steps (tests, tools)."""
    out = Path(out_dir)
    if last_path(out).exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    return _run(config, out, None, progress, log, hooks or Hooks())


def resume(
    out_dir: str | Path,
    overrides: list[str] | None = None,
    *,
    progress: bool = False,
    log: Log = print,
    hooks: Hooks | None = None,
) -> TrainResult:
    """Continue the run in ``out_dir`` from its last.pt, under the config it was started with. ``overrides``
    may change only how long it runs (train.epochs, train.max_steps, train.max_minutes)."""
    out = Path(out_dir)
    saved = load_checkpoint(last_path(out))
    check_current_seeding(saved, last_path(out), "--resume")
    config = config_from_dict(saved["config"])
    apply_overrides(config, overrides or [], allowed=RESUMABLE_KEYS)
    return _run(config, out, saved, progress, log, hooks or Hooks())


def _run(
    cfg: Config, out: Path, resumed: dict[str, Any] | None, progress: bool, log: Log, hooks: Hooks
) -> TrainResult:  # six arguments: train and resume each pass all of them on
    dist = from_environment()
    if dist.is_main:
        writable_dir(out / "checkpoints")
    else:
        log, progress = _silent, False  # one process logs and writes files: rank 0
    with torch_settings(cfg):
        try:
            # Started before the set-up: in a budget, the set-up's seconds count.
            clock = Clock(float(resumed.get("elapsed", 0.0)) if resumed else 0.0, now=hooks.now)
            run = build_run(cfg, out, dist, resumed, log)
            run.clock, run.hooks = clock, hooks
            if resumed is not None:
                restore(resumed, run)
                state = run.state
                log(f"resuming {run.last_path} at epoch {state.epoch + 1}, batch {state.batch}, step {state.step}")
            if cfg.train.max_minutes:
                plan_budget(run, resumed)
            return fit(run, progress)
        finally:
            shutdown(dist)


def fit(run: Run, progress: bool) -> TrainResult:
    """Epochs until the plan, a limit or a signal ends the run; returns how and where it stopped."""
    state, plan = run.state, run.plan
    run.log(_start_line(run))
    run.writer = tensorboard(run) if run.dist.is_main else None
    stopped = "finished"
    with _StopFlag() as signals, contextlib.closing(EpochBar(progress)) as bar:
        already = stop_reason(run, signals) if state.step else None
        if already and already != "finished":  # resumed with its limit already reached: nothing to add
            run.log(f"nothing to do: the run already stopped ({already}) at step {state.step}")
            stopped = already
        while stopped == "finished" and state.epoch < plan.epochs and state.step < plan.total_steps:
            reason = train_one_epoch(run, signals, bar)
            if reason and reason != "finished":
                stopped = reason
    if run.writer is not None:
        run.writer.close()
    best = run.best_path if run.best_path.exists() else None
    return TrainResult(run.out, run.last_path, best, state.history, stopped, state.step)


def train_one_epoch(run: Run, signals: _StopFlag, bar: EpochBar) -> str | None:
    """The rest of the current epoch, then its end (validation, records, checkpoints). Returns why the run
    stops, or None to go on."""
    cfg, plan, state = run.cfg, run.plan, run.state
    epoch_started, epoch_first_step = run.clock.elapsed(), state.step
    stats = EpochStats()
    logged = stats.snapshot()  # the window since the last steps.jsonl row
    reason: str | None = None
    run.model.train()
    if cfg.model.freeze_features:
        keep_frozen_statistics(run.model)
    bar.start(state.epoch, plan.epochs, plan.batches_per_epoch, state.batch)
    for x, y in run.data.train.epoch(state.epoch, state.batch):
        x = resize_batch(x, run.train_size(state.step))
        run.hooks.before_batch(run, x)
        stepped = train_batch(run, x, y, stats)
        bar.batch_done()
        if not stepped:
            continue
        if state.step % run.settle_every == 0:
            bar.show(stats, run.learning_rate(state.step - 1))
        if cfg.train.log_every_steps and state.step % cfg.train.log_every_steps == 0:
            timed_settle(run, stats)  # no-op where this step already settled
            log_steps(run, stats.since(logged))
            logged = stats.snapshot()
        reason = stop_reason(run, signals)
        if reason:
            break
        if cfg.train.save_every_steps and state.step % cfg.train.save_every_steps == 0:
            save_last(run)
    bar.close()
    timed_settle(run, stats)  # the epoch's last steps, read back
    # Stopped inside the epoch: keep the exact position. (A stream that simply ran short ends its epoch.)
    partial = reason is not None and state.batch < plan.batches_per_epoch
    timed = (run.clock.elapsed() - epoch_started, state.step - epoch_first_step)
    end_epoch(run, stats, timed, partial=partial)
    if reason and reason != "finished":
        where = f"at step {state.step}" if partial else f"after epoch {state.epoch}"
        run.log(f"stopped ({reason}) {where}; checkpoint {run.last_path}")
    return reason


def stop_reason(run: Run, signals: _StopFlag) -> str | None:
    """Whether the run stops after this optimizer step, and why: the only place that decides. Every process
    asks it at every step, and all of them stop if any one must."""
    cfg, step = run.cfg.train, run.state.step
    reason = signals.reason
    if reason is None and step >= run.plan.total_steps:
        reason = "finished"  # the schedule's last step, which may fall inside an epoch
    if reason is None and cfg.max_steps and step >= cfg.max_steps:
        reason = "max_steps"
    if reason is None and cfg.max_minutes and run.clock.elapsed() > hard_limit(run):
        reason = "max_minutes"
    if any_rank(reason is not None, run.dist) and reason is None:
        reason = "stopped by another process"
    return reason


def _start_line(run: Run) -> str:
    cfg, plan = run.cfg, run.plan
    sizes = training_sizes(cfg.data)
    if len(sizes) == 1:
        size_text = f"{sizes[0]} px"
    else:
        size_text = f"{'-'.join(map(str, sizes))} px, growing until {cfg.data.grow_until:.0%} of the decay"
    return (
        f"training {cfg.model.name} on {cfg.data.dataset} ({run.data.train.num_samples:,} images, "
        f"{len(run.data.class_names)} classes, {size_text}) for "
        f"{plan.total_steps / plan.steps_per_epoch:.3g} epochs = {plan.total_steps:,} steps on {run.device.type} "
        f"({cfg.train.precision})" + (f", {run.dist.world_size} processes" if run.dist.enabled else "")
    )


class _StopFlag:
    """SIGINT / SIGTERM ask the loop to stop after the current step and save a checkpoint."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.reason = "interrupted"

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _silent(_: str) -> None:
    pass
