"""The training loop: `train(config, out_dir)` starts a run, `resume(out_dir)` continues one.

Read top to bottom:

1. `_build` makes everything a run needs (device, data, model with its speed-ups, optimizer, EMA, plan);
   with a wall-clock budget, `_plan_budget` then measures this machine and sets the number of steps
   (googlenet.training.budget);
2. `_fit` runs epochs; each batch goes through `_train_batch` (forward, backward, and every
   ``accumulate`` batches `_optimizer_step`); after each optimizer step `_stop_reason` is the one place
   that decides whether to stop (the plan's last step, signal, train.max_steps, the budget), reading the
   run's one `Clock`; every train.log_every_steps steps `_log_steps` writes a row of steps.jsonl;
3. `_end_epoch` validates, logs and writes metrics.jsonl and the checkpoints; a run that stops inside an
   epoch does the same there, marked partial.

A run stopped early writes DIR/checkpoints/last.pt at the exact step, and `resume` continues from it bit for
bit (on CPU with deterministic settings): batches are regenerated from (seed, epoch, index), the learning
rate is a pure function of the step and the stored plan, and the RNG, optimizer and EMA states travel in
the checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from googlenet.config import Config, ConfigError, apply_overrides, config_from_dict
from googlenet.data import (
    Batches,
    DataBundle,
    Preprocessing,
    build_data,
    keep_on_device,
    test_split_size,
)
from googlenet.errors import GoogLeNetError
from googlenet.files import atomic_write_text, writable_dir
from googlenet.model import GoogLeNet, create_model, get_variant
from googlenet.run.checkpoint import check_current_seeding, load_checkpoint, save_checkpoint
from googlenet.run.device import autocast, resolve_device, to_device
from googlenet.run.metrics import evaluate_batches, predict_logits
from googlenet.training.budget import (
    CHECKPOINT_SECONDS,
    BudgetPlan,
    Timing,
    TrainingPace,
    Workload,
    plan_steps,
    replan,
)
from googlenet.training.distributed import (
    DistInfo,
    any_rank,
    barrier,
    from_environment,
    initialise,
    max_over_ranks,
    shutdown,
)
from googlenet.training.loss import TrainForward, training_loss
from googlenet.training.optim import (
    Lookahead,
    build_ema,
    build_lookahead,
    build_optimizer,
    freeze_features,
    initialise_from,
    keep_frozen_statistics,
    set_learning_rate,
)
from googlenet.training.progress import EpochBar, EpochStats
from googlenet.training.resizing import resize_batch, size_at, step_cost, training_sizes
from googlenet.training.schedule import decay_progress, lr_factor

Log = Callable[[str], None]
LossFn = Callable[..., tuple[Tensor, Tensor]]
RESUMABLE_KEYS = frozenset({"train.epochs", "train.max_steps", "train.max_minutes"})


class TrainingDiverged(GoogLeNetError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    history: list[dict[str, Any]]
    stopped: str  # "finished", "max_steps", "max_minutes", "interrupted", "stopped by another process"
    step: int


# ----------------------------------------------------------------------------------------- entry points


def train(config: Config, out_dir: str | Path, *, progress: bool = False, log: Log = print) -> TrainResult:
    """Train as ``config`` says into ``out_dir``: metrics.jsonl, tensorboard/, checkpoints/last.pt and best.pt."""
    out = Path(out_dir)
    if _last_path(out).exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    return _run(config, out, None, progress, log)


def resume(
    out_dir: str | Path, overrides: list[str] | None = None, *, progress: bool = False, log: Log = print
) -> TrainResult:
    """Continue the run in ``out_dir`` from its last.pt, under the config it was started with. ``overrides``
    may change only how long it runs (train.epochs, train.max_steps, train.max_minutes)."""
    out = Path(out_dir)
    payload = load_checkpoint(_last_path(out))
    check_current_seeding(payload, _last_path(out), "--resume")
    config = config_from_dict(payload["config"])
    apply_overrides(config, overrides or [], allowed=RESUMABLE_KEYS)
    return _run(config, out, payload, progress, log)


def build_model(config: Config, num_classes: int, in_channels: int) -> GoogLeNet:
    """The plain model ``config`` names, for ``num_classes`` classes of ``in_channels``-channel images."""
    spec = get_variant(config.model.name)
    if config.data.image_size < spec.min_input_size:
        raise ConfigError(
            f"data.image_size={config.data.image_size} is below the {spec.name} variant's minimum of "
            f"{spec.min_input_size} px; use model.name=small for small images"
        )
    start = config.data.start_size
    if start and not spec.min_input_size <= start <= config.data.image_size:
        raise ConfigError(
            f"data.start_size={start} must lie between the {spec.name} variant's minimum of {spec.min_input_size} "
            f"px and data.image_size={config.data.image_size} (or be 0: no progressive resizing)"
        )
    model = create_model(config.model.name, num_classes=num_classes, in_channels=in_channels, aux=config.model.aux)
    if config.model.dropout >= 0:
        model.dropout.p = config.model.dropout
    return model


# ------------------------------------------------------------------------------------------- the run


@dataclass
class Plan:
    """How the data maps onto optimizer steps, and how many steps the run takes."""

    batches_per_epoch: int
    accumulate: int  # batches per optimizer step (gradient accumulation)
    steps_per_epoch: int
    total_steps: int  # the schedule's length: train.epochs worth, or what fits the budget
    budget: BudgetPlan | None = None  # set when train.max_minutes planned the run

    @property
    def epochs(self) -> int:
        """Epochs begun by the schedule; a budgeted run's re-plans may change it at an epoch end."""
        return math.ceil(self.total_steps / self.steps_per_epoch)


@dataclass
class RunState:
    """Where a run stands; saved in last.pt."""

    epoch: int = 0  # the epoch in progress
    batch: int = 0  # the next batch index within it
    step: int = 0  # optimizer steps taken in total
    elapsed: float = 0.0  # seconds of training so far, earlier processes included
    best_top1: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl: one row per epoch end
    steps_log: list[dict[str, Any]] = field(default_factory=list)  # steps.jsonl: one row per log_every_steps


class Clock:
    """The run's one clock: wall-clock seconds of training, counting the time before a resume."""

    def __init__(self, already: float = 0.0) -> None:
        self._start = time.monotonic() - already

    def elapsed(self) -> float:
        return time.monotonic() - self._start


@dataclass
class Run:
    """Everything `_build` makes for one run."""

    cfg: Config
    out: Path
    dist: DistInfo
    device: torch.device
    data: DataBundle
    model: GoogLeNet
    forward: nn.Module  # TrainForward, DDP-wrapped across processes
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None
    lookahead: Lookahead | None
    plan: Plan
    log: Log
    pace: TrainingPace = field(default_factory=TrainingPace)  # the epochs timed so far, for the re-plans

    @property
    def last_path(self) -> Path:
        return _last_path(self.out)

    @property
    def best_path(self) -> Path:
        return self.out / "checkpoints" / "best.pt"

    @property
    def anchor(self) -> tuple[int, float]:
        return self.plan.budget.anchor if self.plan.budget is not None else (0, 0.0)

    @property
    def settle_every(self) -> int:
        """Optimizer steps between reads of the training statistics from the device (`settle_interval`)."""
        return settle_interval(self.device)

    @property
    def warmup_steps(self) -> float:
        return self.cfg.schedule.warmup_epochs * self.plan.steps_per_epoch

    def learning_rate(self, step: int) -> float:
        factor = lr_factor(step, self.plan.total_steps, self.plan.steps_per_epoch, self.cfg.schedule, self.anchor)
        return self.cfg.optim.lr * factor

    def train_size(self, step: int, total: int | None = None, anchor: tuple[int, float] | None = None) -> int:
        """The size of the training images at optimizer step ``step``: data.image_size, or smaller early in
        the run with progressive resizing (data.start_size). ``total`` and ``anchor`` default to the plan's; a
        budget asks about candidate plans."""
        total = self.plan.total_steps if total is None else total
        anchor = self.anchor if anchor is None else anchor
        return size_at(decay_progress(step, total, self.warmup_steps, anchor), self.cfg.data)


def _last_path(out: Path) -> Path:
    return out / "checkpoints" / "last.pt"


def _run(cfg: Config, out: Path, resumed: dict[str, Any] | None, progress: bool, log: Log) -> TrainResult:
    dist = from_environment()
    if dist.is_main:
        writable_dir(out / "checkpoints")
    else:
        log, progress = _silent, False  # one process logs and writes files: rank 0
    with _torch_settings(cfg):
        try:
            clock = Clock(float(resumed.get("elapsed", 0.0)) if resumed else 0.0)  # set-up counts in a budget
            run = _build(cfg, out, dist, resumed, log)
            state = RunState()
            if resumed is not None:
                state = _restore(resumed, run)
                log(f"resuming {run.last_path} at epoch {state.epoch + 1}, batch {state.batch}, step {state.step}")
            if cfg.train.max_minutes:
                _plan_budget(run, state, clock, resumed)
            return _fit(run, state, clock, progress)
        finally:
            shutdown(dist)


@contextlib.contextmanager
def _torch_settings(cfg: Config) -> Iterator[None]:
    """The run's seed, threads and determinism; process-wide settings are restored afterwards, since a library
    call must not change its caller's torch."""
    torch.manual_seed(cfg.train.seed)
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(cfg.train.deterministic or was_deterministic)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- 1. build


def _trains_aux_heads(cfg: Config, model: GoogLeNet) -> bool:
    """Whether the auxiliary heads are run and their losses added: the model has them and they weigh something."""
    return cfg.model.aux_weight > 0 and model.has_aux


def _build(cfg: Config, out: Path, dist: DistInfo, resumed: dict[str, Any] | None, log: Log) -> Run:
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
        if dist.enabled:
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
    initialise(dist, device.type)

    init = load_checkpoint(cfg.model.init) if cfg.model.init and resumed is None else None
    init_prep = Preprocessing.from_dict(init["preprocessing"]) if init else None
    data = build_data(
        cfg.data,
        in_channels=cfg.model.in_channels or (init_prep.in_channels if init_prep else 0),
        seed=cfg.train.seed,
        pin_memory=device.type == "cuda",
        norm=(init_prep.mean, init_prep.std) if init_prep else None,
        shard=(dist.rank, dist.world_size),
    )
    if device.type == "cuda":
        keep_on_device(data, device)  # batches cut and augmented on the GPU: nothing to copy per step
    model = build_model(cfg, len(data.class_names), data.preprocessing.in_channels)
    if init is not None:
        log(initialise_from(model, init, cfg.model.init))
    if cfg.model.freeze_features:
        freeze_features(model)
    if dist.enabled and cfg.train.sync_bn:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]  # swaps BN children in place
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.speedups:
        from googlenet.speedups import optimize_for_training

        optimize_for_training(model)  # exact module swaps: same weights, outputs and gradients, less time
        if device.type == "cpu" and cfg.train.channels_last and not cfg.train.compile:
            from googlenet import kernels

            log(kernels.describe())

    use_aux = _trains_aux_heads(cfg, model)
    forward: nn.Module = TrainForward(model, use_aux)
    if dist.enabled:
        # Unused auxiliary heads (aux_weight 0) would otherwise stall DDP's gradient reduction.
        forward = DistributedDataParallel(
            forward,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=model.has_aux and not use_aux,
        )
        torch.manual_seed(cfg.train.seed + dist.rank)  # different dropout masks on each process
    # Compiling the loss function traces forward_train and both auxiliary heads with it.
    loss_fn: LossFn = torch.compile(training_loss, mode=cfg.train.compile_mode) if cfg.train.compile else training_loss
    return Run(
        cfg=cfg,
        out=out,
        dist=dist,
        device=device,
        data=data,
        model=model,
        forward=forward,
        loss_fn=loss_fn,
        optimizer=build_optimizer(model, cfg, device),
        ema=build_ema(model, cfg.train.ema_decay),
        lookahead=build_lookahead(model, cfg),
        plan=_plan(cfg, len(data.train)),
        log=log,
    )


# On a GPU every read of a value (the loss, to log it or to check it is finite) waits for all the work queued
# before it, and a batch-128 step is short enough that this waiting would rule the step time: the loop reads
# the running statistics back every this many optimizer steps. On the CPU nothing is queued: every step.
GPU_SETTLE_STEPS = 25


def settle_interval(device: torch.device) -> int:
    """Optimizer steps between reads of the training statistics from ``device``."""
    return GPU_SETTLE_STEPS if device.type == "cuda" else 1


def _plan(cfg: Config, batches_per_epoch: int) -> Plan:
    if cfg.train.global_batch % cfg.data.batch_size:
        raise ConfigError(
            f"train.global_batch={cfg.train.global_batch} must be a multiple of data.batch_size={cfg.data.batch_size}"
        )
    accumulate = max(cfg.train.global_batch // cfg.data.batch_size, 1)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
    return Plan(batches_per_epoch, accumulate, steps_per_epoch, cfg.train.epochs * steps_per_epoch)


# Steps timed to plan a budget: the first ones pay for memory allocation and are left out.
WARMUP_STEPS, TIMED_STEPS = 3, 10


def _plan_budget(run: Run, state: RunState, clock: Clock, resumed: dict[str, Any] | None) -> None:
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
    if state.step >= run.plan.total_steps:
        return  # nothing left to plan
    size_seconds, eval_seconds_per_image = _measure(run)
    timing = _timing(run, size_seconds, eval_seconds_per_image, clock.elapsed())
    run.plan.budget = plan_steps(cfg.train.max_minutes, timing, _workload(run, state, timing.size_costs))
    run.plan.total_steps = run.plan.budget.total_steps
    run.log(run.plan.budget.describe(run.plan.steps_per_epoch))


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


def _validated_images(run: Run) -> int:
    """Images one validation evaluates, every model counted (the EMA doubles it)."""
    val_images = run.data.val.num_samples if run.data.val is not None else 0
    return val_images * (2 if run.ema is not None else 1)


def _workload(
    run: Run, state: RunState, size_costs: dict[int, float], anchor: tuple[int, float] = (0, 0.0)
) -> Workload:
    """What the rest of the run must do. With progressive resizing a step's cost depends on its size, and
    its size on the candidate total and the ``anchor`` the plan will have."""
    cost = None
    if size_costs:
        cost = step_cost(state.step, lambda step, total: run.train_size(step, total, anchor), size_costs)
    return Workload(
        steps_per_epoch=run.plan.steps_per_epoch,
        max_steps=run.cfg.train.epochs * run.plan.steps_per_epoch,
        done_steps=state.step,
        val_images=_validated_images(run),
        test_images=test_split_size(run.cfg.data) * run.cfg.train.budget_test_views,
        step_cost=cost,
    )


# A re-plan needs an epoch of at least this many steps to time (a resumed run's short remainder is not).
REPLAN_MIN_STEPS = 5


def _replan(
    run: Run, state: RunState, clock: Clock, epoch_seconds: float, epoch_steps: int, val_seconds: float
) -> str | None:
    """At an epoch end of a budgeted run, refit the rest of the schedule to the speed measured (training: this
    epoch's pace blended with the whole run's; validation: this epoch's): a shared machine is rarely as fast
    over half an hour as in its first seconds. Every process calls it at the same epoch ends (rank 0 alone
    knows the validation time); the new plan is in the checkpoint written next, so a resumed run follows it.
    Returns the line to log when the plan changed."""
    budget = run.plan.budget
    if budget is None or not run.cfg.train.replan or epoch_steps < REPLAN_MIN_STEPS:
        return None
    if state.step >= run.plan.total_steps:
        return None  # the schedule is done: nothing left to refit
    # The epoch's steps in full-size steps: with progressive resizing some were cheaper.
    epoch_range = range(state.step - epoch_steps, state.step)
    full_size_steps = sum(budget.size_costs.get(run.train_size(s), 1.0) for s in epoch_range)
    step_seconds = run.pace.add_epoch(epoch_seconds, full_size_steps)
    step_seconds, eval_seconds_per_image = _replan_timing(run, step_seconds, val_seconds)
    # The sizes keep the shares of the full size's step time they were measured at.
    size_seconds = {s: step_seconds * c for s, c in budget.size_costs.items()}
    size_seconds = size_seconds or {run.cfg.data.image_size: step_seconds}
    timing = _timing(run, size_seconds, eval_seconds_per_image, clock.elapsed() + CHECKPOINT_SECONDS)
    progress = decay_progress(state.step, run.plan.total_steps, run.warmup_steps, budget.anchor)
    fresh = replan(budget, timing, _workload(run, state, budget.size_costs, (state.step, progress)), progress)
    if fresh is budget:
        return None
    run.plan.budget, run.plan.total_steps = fresh, fresh.total_steps
    change = fresh.total_steps - budget.total_steps
    return f"re-planned at step {state.step:,} ({change:+,} steps): {fresh.describe(run.plan.steps_per_epoch)}"


def _replan_timing(run: Run, step_seconds: float, val_seconds: float) -> tuple[float, float]:
    """(seconds per step, seconds per evaluated image) as the epoch just ended measured them. Only rank 0
    validates: the other processes give 0, so the maximum over the processes is rank 0's figure. Where
    there is no split to validate, the plan's evaluation speed stands."""
    budget = run.plan.budget
    assert budget is not None
    images = _validated_images(run)
    if images and val_seconds > 0:
        return step_seconds, val_seconds / images
    return step_seconds, 1 / budget.eval_images_per_second if run.dist.is_main else 0.0


def _measure(run: Run) -> tuple[dict[int, float], float]:
    """(seconds per optimizer step at each training size, seconds per evaluated image), timed on a throw-away
    copy of the model and optimizer over the first batches, so the real run starts untouched. The random
    state is put back, so a measured run takes the same steps as one that was not measured."""
    with _random_state_kept(run.device):
        return _time_steps(run)


def _time_steps(run: Run) -> tuple[dict[int, float], float]:
    model = copy.deepcopy(run.model)
    trial = dataclasses.replace(
        run,
        model=model,
        forward=TrainForward(model, _trains_aux_heads(run.cfg, model)),
        optimizer=build_optimizer(model, run.cfg, run.device),
        ema=build_ema(model, run.cfg.train.ema_decay),
        lookahead=build_lookahead(model, run.cfg),
        log=_silent,
    )
    # The full size first: the smaller ones then reuse its allocations, as they will in the run.
    sizes = sorted(training_sizes(run.cfg.data), reverse=True)
    size_seconds = {size: _time_size(trial, size) for size in sizes}
    return size_seconds, _measure_evaluation(run, _for_evaluation(run, model))


def _time_size(trial: Run, size: int) -> float:
    """The median seconds of an optimizer step on ``size``-px images, over the first batches of the epoch."""
    state, stats, clock = RunState(), EpochStats(), Clock()
    marks: list[float] = []
    for x, y in trial.data.train.epoch(0):
        if _train_batch(trial, state, resize_batch(x, size), y, stats, clock):
            _synchronize(trial.device)
            marks.append(clock.elapsed())
        if len(marks) > WARMUP_STEPS + TIMED_STEPS or state.batch == trial.plan.batches_per_epoch:
            break
    gaps = sorted(b - a for a, b in zip(marks[WARMUP_STEPS - 1 :], marks[WARMUP_STEPS:], strict=False))
    return gaps[len(gaps) // 2] if gaps else marks[-1] / len(marks)  # the median: robust to a hiccup


def _measure_evaluation(run: Run, model: nn.Module) -> float:
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


def _random_state_kept(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Whatever runs inside leaves the random state as it found it: measuring and validating (whose inference
    copy builds new layers, and layers draw their initial weights) must not change the dropout masks of the
    steps that follow, or a run validated mid-epoch would differ from one that was not."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------- 2. fit


def _fit(run: Run, state: RunState, clock: Clock, progress: bool) -> TrainResult:
    cfg, plan = run.cfg, run.plan
    run.log(
        f"training {cfg.model.name} on {cfg.data.dataset} ({run.data.train.num_samples:,} images, "
        f"{len(run.data.class_names)} classes, {_sizes_text(cfg)}) for "
        f"{plan.total_steps / plan.steps_per_epoch:.3g} epochs = {plan.total_steps:,} steps on {run.device.type} "
        f"({cfg.train.precision})" + (f", {run.dist.world_size} processes" if run.dist.enabled else "")
    )
    writer = _tensorboard(run) if run.dist.is_main else None
    stopped = "finished"
    with _StopFlag() as signals, contextlib.closing(EpochBar(progress)) as bar:
        already = _stop_reason(run, state, clock, signals) if state.step else None
        if already and already != "finished":  # resumed with its limit already reached: nothing to add
            run.log(f"nothing to do: the run already stopped ({already}) at step {state.step}")
            stopped = already
        while stopped == "finished" and state.epoch < plan.epochs and state.step < plan.total_steps:
            epoch_started, epoch_first_step = clock.elapsed(), state.step
            stats = EpochStats()
            logged = stats.snapshot()  # the window since the last steps.jsonl row
            reason: str | None = None
            _training_mode(run)
            bar.start(state.epoch, plan.epochs, plan.batches_per_epoch, state.batch)
            for x, y in run.data.train.epoch(state.epoch, state.batch):
                stepped = _train_batch(run, state, resize_batch(x, run.train_size(state.step)), y, stats, clock)
                bar.batch_done()
                if not stepped:
                    continue
                if state.step % run.settle_every == 0:
                    bar.show(stats, run.learning_rate(state.step - 1))
                if cfg.train.log_every_steps and state.step % cfg.train.log_every_steps == 0:
                    _timed_settle(run, state, stats, clock)  # no-op where this step already settled
                    _log_steps(run, state, stats.since(logged), clock, writer)
                    logged = stats.snapshot()
                reason = _stop_reason(run, state, clock, signals)
                if reason:
                    break
                if cfg.train.save_every_steps and state.step % cfg.train.save_every_steps == 0:
                    _save_last(run, state, clock)
            bar.close()
            _timed_settle(run, state, stats, clock)  # the epoch's last steps, read back
            # Stopped inside the epoch: keep the exact position. (A stream that simply ran short ends its epoch.)
            partial = reason is not None and state.batch < plan.batches_per_epoch
            timed = (clock.elapsed() - epoch_started, state.step - epoch_first_step)
            _end_epoch(run, state, stats, clock, timed, writer, partial=partial)
            if reason and reason != "finished":
                where = f"at step {state.step}" if partial else f"after epoch {state.epoch}"
                run.log(f"stopped ({reason}) {where}; checkpoint {run.last_path}")
                stopped = reason
                break
    if writer is not None:
        writer.close()
    best = run.best_path if run.best_path.exists() else None
    return TrainResult(run.out, run.last_path, best, state.history, stopped, state.step)


def _sizes_text(cfg: Config) -> str:
    sizes = training_sizes(cfg.data)
    if len(sizes) == 1:
        return f"{sizes[0]} px"
    return f"{'-'.join(map(str, sizes))} px, growing until {cfg.data.grow_until:.0%} of the decay"


def _training_mode(run: Run) -> None:
    run.model.train()
    if run.cfg.model.freeze_features:
        keep_frozen_statistics(run.model)


def _train_batch(run: Run, state: RunState, x: Tensor, y: Tensor, stats: EpochStats, clock: Clock) -> bool:
    """Forward and backward of one batch; with gradient accumulation, ``accumulate`` batches make one
    optimizer step. True when this batch completed a step."""
    cfg, plan = run.cfg, run.plan
    started = clock.elapsed()
    x, y = to_device(x, y, run.device, cfg.train.channels_last)
    group_start = state.batch - state.batch % plan.accumulate
    group_size = min(plan.accumulate, plan.batches_per_epoch - group_start)  # the epoch's last group may be short
    first, last = state.batch == group_start, state.batch + 1 == group_start + group_size
    lr = run.learning_rate(state.step)
    set_learning_rate(run.optimizer, lr)
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
        _settle(run, state, stats)
    stats.seconds += clock.elapsed() - started
    if not last:
        return False
    state.step += 1
    _optimizer_step(run, state.step)
    return True


def _settle(run: Run, state: RunState, stats: EpochStats) -> None:
    """Read the running statistics back from the device and stop if the loss is no longer finite."""
    stats.settle()
    if not math.isfinite(stats.loss_sum):
        raise TrainingDiverged(
            f"the loss became {stats.loss_sum / max(stats.seen, 1)} by step {state.step} "
            f"(lr {run.learning_rate(state.step):.4g}); the last good checkpoint is kept: lower optim.lr "
            "or set optim.grad_clip"
        )


def _timed_settle(run: Run, state: RunState, stats: EpochStats, clock: Clock) -> None:
    """`_settle` outside a batch, its wait for the GPU counted in the batches' time."""
    started = clock.elapsed()
    _settle(run, state, stats)
    stats.seconds += clock.elapsed() - started


def _optimizer_step(run: Run, step: int) -> None:
    """Optimizer step number ``step`` (from 1), then the lookahead and the weight average."""
    if run.cfg.optim.grad_clip > 0:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.optim.grad_clip)
    run.optimizer.step()
    if run.lookahead is not None:
        run.lookahead.after_step(step)
    if run.ema is not None:
        run.ema.update_parameters(run.model)


def _stop_reason(run: Run, state: RunState, clock: Clock, signals: _StopFlag) -> str | None:
    """Whether the run stops after this optimizer step, and why: the only place that decides. Every process
    asks it at every step, and all of them stop if any one must."""
    cfg = run.cfg.train
    reason = signals.reason
    if reason is None and state.step >= run.plan.total_steps:
        reason = "finished"  # the schedule's last step, which may fall inside an epoch
    if reason is None and cfg.max_steps and state.step >= cfg.max_steps:
        reason = "max_steps"
    if reason is None and cfg.max_minutes and clock.elapsed() > _hard_limit(run):
        reason = "max_minutes"
    if any_rank(reason is not None, run.dist) and reason is None:
        reason = "stopped by another process"
    return reason


# ---------------------------------------------------------------------------------------- 3. epoch end


def _hard_limit(run: Run) -> float:
    """Seconds on the clock after which a budgeted run stops whatever its plan: early enough that the last
    validation and the test evaluation still fit, if this machine got slower than it measured."""
    budget = run.cfg.train.max_minutes * 60
    if run.plan.budget is None:
        return budget
    return budget - run.plan.budget.val_seconds - run.plan.budget.test_seconds


def _log_steps(run: Run, state: RunState, window: EpochStats, clock: Clock, writer: Any) -> None:
    """One steps.jsonl row (and TensorBoard points) for the steps since the last: a short run still has curves."""
    if not run.dist.is_main or window.seen == 0:
        return
    row: dict[str, Any] = {
        "step": state.step,
        "epoch": round(state.epoch + state.batch / run.plan.batches_per_epoch, 4),
        **window.as_dict(),
        "lr": run.learning_rate(state.step - 1),
        "image_size": run.train_size(state.step - 1),
        "elapsed_minutes": clock.elapsed() / 60,
    }
    state.steps_log.append(row)
    atomic_write_text(run.out / "steps.jsonl", "".join(json.dumps(r) + "\n" for r in state.steps_log))
    if writer is not None:
        for key in ("train_loss", "train_top1", "lr", "img_per_s"):
            writer.add_scalar(f"steps/{key}", row[key], state.step)


def _end_epoch(
    run: Run,
    state: RunState,
    stats: EpochStats,
    clock: Clock,
    timed: tuple[float, int],
    writer: Any,
    *,
    partial: bool,
) -> None:
    """Validate the model (and its EMA), refit a budgeted run's plan to the speed measured (``timed``: the
    epoch's seconds and steps), log a line, write metrics.jsonl, TensorBoard, last.pt and, when validation
    improved, best.pt. Only rank 0 validates and writes; the others wait for it. A ``partial`` epoch (the run
    stopped inside it) keeps its position, so a resumed run finishes the epoch."""
    epoch_seconds, epoch_steps = timed
    if not run.dist.is_main:
        if not partial:
            _replan(run, state, clock, epoch_seconds, epoch_steps, val_seconds=0.0)
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
    validation_started = clock.elapsed()
    entry.update(_validate(run))
    entry["elapsed_minutes"] = clock.elapsed() / 60
    replanned = None
    if not partial:  # a stop inside an epoch ends the run: nothing to refit
        replanned = _replan(run, state, clock, epoch_seconds, epoch_steps, clock.elapsed() - validation_started)
    if run.plan.budget is not None:
        entry["planned_steps"] = run.plan.total_steps
    state.history.append(entry)
    if not partial:
        state.epoch, state.batch = state.epoch + 1, 0
    run.log(_epoch_line(entry))
    if replanned:
        run.log(replanned)
    atomic_write_text(run.out / "metrics.jsonl", "".join(json.dumps(e) + "\n" for e in state.history))
    if writer is not None:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                writer.add_scalar(key, value, entry["step"])
        writer.flush()
    if "val_top1" in entry:
        weights = "ema" if entry.get("ema_val_top1", -1) > entry["val_top1"] else "model"
        best = max(entry["val_top1"], entry.get("ema_val_top1", -1.0))
        improved = best > state.best_top1 or not run.best_path.exists()
    else:  # nothing held out to judge by: best.pt is the latest, with the averaged weights when there are some
        weights, best, improved = ("ema" if run.ema is not None else "model"), -1.0, True
    state.best_top1 = max(best, state.best_top1)
    state.elapsed = clock.elapsed()
    _check_finite(run.model, state)
    payload = _payload(run, state, weights=weights)
    save_checkpoint(run.last_path, payload)
    if improved:
        save_checkpoint(run.best_path, {k: v for k, v in payload.items() if k not in TRAINING_STATE})
    barrier(run.dist)


def _validate(run: Run) -> dict[str, float]:
    if run.data.val is None:
        return {}
    with _random_state_kept(run.device):
        return _validate_split(run, run.data.val)


def _validate_split(run: Run, val: Batches) -> dict[str, float]:
    kwargs: dict[str, Any] = {
        "device": run.device,
        "precision": run.cfg.train.precision,
        "channels_last": run.cfg.train.channels_last,
    }
    classes = len(run.data.class_names)
    metrics = evaluate_batches(_for_evaluation(run, run.model), val, classes, **kwargs).as_dict("val_")
    if run.ema is not None:
        ema = _for_evaluation(run, run.ema.module)
        metrics.update(evaluate_batches(ema, val, classes, **kwargs).as_dict("ema_val_"))
    return metrics


def _for_evaluation(run: Run, model: nn.Module) -> nn.Module:
    """What validation runs: with train.speedups, a copy with BatchNorm folded into the convolutions (as the
    torch inference engine runs it; the same outputs within float rounding, less time), else the model."""
    if not run.cfg.train.speedups or run.cfg.train.sync_bn or not isinstance(model, GoogLeNet):
        return model
    from googlenet.speedups import optimize_for_inference

    return optimize_for_inference(model, channels_last=run.cfg.train.channels_last)


def _epoch_line(entry: dict[str, Any]) -> str:
    epoch = f"epoch {entry['epoch']}" + (" (partial)" if entry.get("partial") else "")
    parts = [epoch, f"train loss {entry['train_loss']:.4f} acc {entry['train_top1']:.4f}"]
    if "val_top1" in entry:
        parts.append(f"val loss {entry['val_loss']:.4f} top1 {entry['val_top1']:.4f}")
    if "ema_val_top1" in entry:
        parts.append(f"EMA top1 {entry['ema_val_top1']:.4f}")
    parts.append(f"{entry['img_per_s']:.0f} img/s, lr {entry['lr']:.4g}, {entry['elapsed_minutes']:.1f} min")
    return " | ".join(parts)


def _tensorboard(run: Run) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        run.log("TensorBoard is not installed (the [viz] extra): metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(run.out / "tensorboard"))


# ----------------------------------------------------------------------------- checkpoints and signals


def _save_last(run: Run, state: RunState, clock: Clock) -> None:
    """last.pt at the exact position, with the optimizer, EMA and RNG state needed to continue bit for bit."""
    _check_finite(run.model, state)
    state.elapsed = clock.elapsed()
    if run.dist.is_main:
        save_checkpoint(run.last_path, _payload(run, state, weights="model"))


# What only a resumed run needs: best.pt leaves it out.
TRAINING_STATE = ("optimizer", "lookahead", "rng")


def _payload(run: Run, state: RunState, *, weights: str) -> dict[str, Any]:
    model, ema = run.model, run.ema
    payload: dict[str, Any] = {
        "model": {"name": model.variant, "num_classes": model.num_classes, "in_channels": model.in_channels},
        "state_dict": model.state_dict(),
        "ema_state_dict": ema.module.state_dict() if ema is not None else None,
        "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0,
        "weights": weights,  # which weights evaluate / predict use: "ema" or "model"
        "preprocessing": run.data.preprocessing.to_dict(),
        "class_names": list(run.data.class_names),
        "config": run.cfg.to_dict(),
        "position": {"epoch": state.epoch, "batch": state.batch, "step": state.step},
        "elapsed": state.elapsed,
        "best_top1": state.best_top1,
        "history": state.history,
        "steps_log": state.steps_log,
        "plan": run.plan.budget.to_dict() if run.plan.budget else None,
        "optimizer": run.optimizer.state_dict(),
        "lookahead": run.lookahead.state_dict() if run.lookahead is not None else None,
        "rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    return payload


def _restore(payload: dict[str, Any], run: Run) -> RunState:
    run.model.load_state_dict(payload["state_dict"])
    fused = [group.get("fused") for group in run.optimizer.param_groups]
    run.optimizer.load_state_dict(payload["optimizer"])
    for group, flag in zip(run.optimizer.param_groups, fused, strict=True):
        group["fused"] = flag  # the kernel this device supports, not the one the checkpoint's machine used
    if run.lookahead is not None and payload.get("lookahead") is not None:
        run.lookahead.load_state_dict(payload["lookahead"])
    if run.ema is not None and payload.get("ema_state_dict") is not None:
        run.ema.module.load_state_dict(payload["ema_state_dict"])
        run.ema.n_averaged.fill_(int(payload["ema_n_averaged"]))
    torch.set_rng_state(payload["rng"])
    if "cuda_rng" in payload and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    position = payload["position"]
    return RunState(
        epoch=int(position["epoch"]),
        batch=int(position["batch"]),
        step=int(position["step"]),
        elapsed=float(payload.get("elapsed", 0.0)),
        best_top1=float(payload.get("best_top1", -1.0)),
        history=list(payload.get("history", [])),
        steps_log=list(payload.get("steps_log", [])),
    )


def _check_finite(model: nn.Module, state: RunState) -> None:
    """Never overwrite a good checkpoint with weights that overflowed."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise TrainingDiverged(
            f"the weights overflowed by step {state.step}; the last good checkpoint is kept: lower optim.lr "
            "or set optim.grad_clip"
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
