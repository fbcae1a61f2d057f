"""What a run writes as it goes: steps.jsonl rows, and at each epoch end the validation, the log line,
metrics.jsonl, TensorBoard and the checkpoints (last.pt always, best.pt when validation improved)."""

from __future__ import annotations

from typing import Any

from googlenet.run import records
from googlenet.run.checkpoint import save_checkpoint
from googlenet.run.metrics import evaluate_batches
from googlenet.training.build import for_evaluation
from googlenet.training.distributed import barrier
from googlenet.training.planner import replan_at_epoch_end
from googlenet.training.progress import EpochStats
from googlenet.training.state import TRAINING_STATE, Run, check_finite, payload, random_state_kept


def log_steps(run: Run, window: EpochStats) -> None:
    """One steps.jsonl row (and TensorBoard points) for the steps since the last: a short run still has curves."""
    state = run.state
    if not run.dist.is_main or window.seen == 0:
        return
    row: dict[str, Any] = {
        "step": state.step,
        "epoch": round(state.epoch + state.batch / run.plan.batches_per_epoch, 4),
        **window.as_dict(),
        "lr": run.learning_rate(state.step - 1),
        "image_size": run.train_size(state.step - 1),
        "elapsed_minutes": run.clock.elapsed() / 60,
    }
    state.steps_log.append(row)
    records.write_rows(run.out / records.STEPS, state.steps_log)
    if run.writer is not None:
        for key in ("train_loss", "train_top1", "lr", "img_per_s"):
            run.writer.add_scalar(f"steps/{key}", row[key], state.step)


def end_epoch(run: Run, stats: EpochStats, timed: tuple[float, int], *, partial: bool) -> None:
    """Validate the model (and its EMA), refit a budgeted run's plan to the speed measured (``timed``: the
    epoch's seconds and steps), log a line, write metrics.jsonl, TensorBoard, last.pt and, when validation
    improved, best.pt. Only rank 0 validates and writes; the others wait for it. A ``partial`` epoch (the run
    stopped inside it) keeps its position, so a resumed run finishes the epoch."""
    state, (epoch_seconds, epoch_steps) = run.state, timed
    if not run.dist.is_main:
        if not partial:
            replan_at_epoch_end(run, epoch_seconds, epoch_steps, val_seconds=0.0)
            state.epoch, state.batch = state.epoch + 1, 0
        barrier(run.dist)
        return
    entry: dict[str, Any] = {
        "epoch": round(state.epoch + state.batch / run.plan.batches_per_epoch, 4) if partial else state.epoch + 1,
        "step": state.step,
        **stats.as_dict(),
        "lr": run.learning_rate(max(state.step - 1, 0)),
        "epoch_seconds": epoch_seconds,
    }
    if partial:
        entry["partial"] = True
    validation_started = run.clock.elapsed()
    entry.update(validate(run))
    entry["elapsed_minutes"] = run.clock.elapsed() / 60
    replanned = None
    if not partial:  # a stop inside an epoch ends the run: nothing to refit
        val_seconds = run.clock.elapsed() - validation_started
        replanned = replan_at_epoch_end(run, epoch_seconds, epoch_steps, val_seconds)
    if run.plan.budget is not None:
        entry["planned_steps"] = run.plan.total_steps
    state.history.append(entry)
    if not partial:
        state.epoch, state.batch = state.epoch + 1, 0
    run.log(epoch_line(entry))
    if replanned:
        run.log(replanned)
    _write_epoch(run, entry)
    barrier(run.dist)


def _write_epoch(run: Run, entry: dict[str, Any]) -> None:
    """metrics.jsonl, TensorBoard, last.pt and (when validation improved) best.pt for the epoch row ``entry``."""
    state = run.state
    records.write_rows(run.out / records.METRICS, state.history)
    if run.writer is not None:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                run.writer.add_scalar(key, value, entry["step"])
        run.writer.flush()
    if "val_top1" in entry:
        weights = "ema" if entry.get("ema_val_top1", -1) > entry["val_top1"] else "model"
        best = max(entry["val_top1"], entry.get("ema_val_top1", -1.0))
        improved = best > state.best_top1 or not run.best_path.exists()
    else:  # nothing held out to judge by: best.pt is the latest, with the averaged weights when there are some
        weights, best, improved = ("ema" if run.ema is not None else "model"), -1.0, True
    state.best_top1 = max(best, state.best_top1)
    state.elapsed = run.clock.elapsed()
    check_finite(run)
    saved = payload(run, weights=weights)
    save_checkpoint(run.last_path, saved)
    if improved:
        save_checkpoint(run.best_path, {k: v for k, v in saved.items() if k not in TRAINING_STATE})


def validate(run: Run) -> dict[str, float]:
    """val_* (and ema_val_*) metrics on the held-out split; nothing where none was held out."""
    val = run.data.val
    if val is None:
        return {}
    with random_state_kept(run.device):
        settings: dict[str, Any] = {
            "device": run.device,
            "precision": run.cfg.train.precision,
            "channels_last": run.cfg.train.channels_last,
        }
        classes = len(run.data.class_names)
        metrics = evaluate_batches(for_evaluation(run, run.model), val, classes, **settings).as_dict("val_")
        if run.ema is not None:
            ema = for_evaluation(run, run.ema.module)
            metrics.update(evaluate_batches(ema, val, classes, **settings).as_dict("ema_val_"))
    run.hooks.after_validation(run)
    return metrics


def save_last(run: Run) -> None:
    """last.pt at the exact position, with the optimizer, EMA and RNG state needed to continue bit for bit."""
    check_finite(run)
    run.state.elapsed = run.clock.elapsed()
    if run.dist.is_main:
        save_checkpoint(run.last_path, payload(run, weights="model"))


def epoch_line(entry: dict[str, Any]) -> str:
    epoch = f"epoch {entry['epoch']}" + (" (partial)" if entry.get("partial") else "")
    parts = [epoch, f"train loss {entry['train_loss']:.4f} acc {entry['train_top1']:.4f}"]
    if "val_top1" in entry:
        parts.append(f"val loss {entry['val_loss']:.4f} top1 {entry['val_top1']:.4f}")
    if "ema_val_top1" in entry:
        parts.append(f"EMA top1 {entry['ema_val_top1']:.4f}")
    parts.append(f"{entry['img_per_s']:.0f} img/s, lr {entry['lr']:.4g}, {entry['elapsed_minutes']:.1f} min")
    return " | ".join(parts)


def tensorboard(run: Run) -> Any:
    """A TensorBoard writer into RUN/tensorboard, or None (with a line saying why) without the [viz] extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        run.log("TensorBoard is not installed (the [viz] extra): metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(run.out / "tensorboard"))
