"""What a training run is made of: its plan, where it stands, its clock, the seams a test can replace, and the
one `Run` object every step reads; and how a run is saved to last.pt and restored from it."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from googlenet.config import Config
from googlenet.data import DataBundle
from googlenet.errors import GoogLeNetError
from googlenet.model import GoogLeNet
from googlenet.training.budget import BudgetPlan, TrainingPace
from googlenet.training.distributed import DistInfo
from googlenet.training.optim import Optimizer, WarmupEMA
from googlenet.training.resizing import size_at
from googlenet.training.schedule import decay_progress, lr_factor

Log = Callable[[str], None]
LossFn = Callable[..., tuple[Tensor, Tensor]]


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
    """The run's one clock: seconds of training, counting the time before a resume. ``now`` is its time
    source: the wall clock, or a test's simulated one."""

    def __init__(self, already: float = 0.0, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._start = now() - already

    def elapsed(self) -> float:
        return self._now() - self._start


class Speedometer(Protocol):
    """How fast this machine trains and evaluates, for the budget planner (googlenet.training.planner)."""

    def measure(self, run: Run) -> tuple[dict[int, float], float]:
        """Before training: (seconds per optimizer step at each training size, seconds per evaluated image)."""
        ...

    def at_epoch_end(self, run: Run, step_seconds: float, val_seconds: float) -> tuple[float, float]:
        """At an epoch end, from its timings: (seconds per step, seconds per evaluated image) to re-plan by."""
        ...


def _ignore(_run: Run) -> None:
    pass


@dataclass
class Hooks:
    """The seams of a run, so that tests and tools observe or simulate without patching the loop: the clock's
    time source, the speed the budget plans by (None: measured on this machine), and calls after each
    optimizer step, after each validation and before each training batch."""

    now: Callable[[], float] = time.monotonic
    speed: Speedometer | None = None
    after_step: Callable[[Run], None] = _ignore
    after_validation: Callable[[Run], None] = _ignore
    before_batch: Callable[[Run, Tensor], None] = lambda _run, _x: None


# On a GPU every read of a value (the loss, to log it or to check it is finite) waits for all the work queued
# before it, and a batch-128 step is short enough that this waiting would rule the step time: the loop reads
# the running statistics back every this many optimizer steps. On the CPU nothing is queued: every step.
GPU_SETTLE_STEPS = 25


def settle_interval(device: torch.device) -> int:
    """Optimizer steps between reads of the training statistics from ``device``."""
    return GPU_SETTLE_STEPS if device.type == "cuda" else 1


@dataclass
class Run:
    """Everything one run needs at a step: what `build_run` made, where the run stands, its clock and hooks."""

    cfg: Config
    out: Path
    dist: DistInfo
    device: torch.device
    data: DataBundle
    model: GoogLeNet
    forward: nn.Module  # TrainForward, DDP-wrapped across processes
    loss_fn: LossFn
    optimizer: Optimizer
    ema: WarmupEMA | None
    plan: Plan
    log: Log
    state: RunState = field(default_factory=RunState)
    clock: Clock = field(default_factory=Clock)
    hooks: Hooks = field(default_factory=Hooks)
    writer: Any = None  # TensorBoard's SummaryWriter on rank 0, when installed
    pace: TrainingPace = field(default_factory=TrainingPace)  # the epochs timed so far, for the re-plans

    @property
    def last_path(self) -> Path:
        return last_path(self.out)

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


def last_path(out: Path) -> Path:
    return out / "checkpoints" / "last.pt"


def random_state_kept(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Whatever runs inside leaves the random state as it found it: measuring and validating (whose inference
    copy builds new layers, and layers draw their initial weights) must not change the dropout masks of the
    steps that follow, or a run validated mid-epoch would differ from one that was not."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ saving and restoring

# What only a resumed run needs: best.pt leaves it out.
TRAINING_STATE = ("optimizer", "rng")


def payload(run: Run, *, weights: str) -> dict[str, Any]:
    """last.pt's contents: the model and its EMA, how to preprocess and name its classes, and the exact position
    with the optimizer and RNG state needed to continue bit for bit."""
    model, ema, state = run.model, run.ema, run.state
    saved: dict[str, Any] = {
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
        "rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        saved["cuda_rng"] = torch.cuda.get_rng_state_all()
    return saved


def restore(saved: dict[str, Any], run: Run) -> None:
    """Put ``run`` back where last.pt's ``saved`` left it."""
    run.model.load_state_dict(saved["state_dict"])
    fused = [(("fused" in group), group.get("fused")) for group in run.optimizer.param_groups]
    run.optimizer.load_state_dict(saved["optimizer"])
    for group, (has_flag, flag) in zip(run.optimizer.param_groups, fused, strict=True):
        if has_flag:  # SGD's groups; Muon's have no fused kernel to choose
            group["fused"] = flag  # the kernel this device supports, not the one the checkpoint's machine used
    if run.ema is not None and saved.get("ema_state_dict") is not None:
        run.ema.module.load_state_dict(saved["ema_state_dict"])
        run.ema.n_averaged.fill_(int(saved["ema_n_averaged"]))
    torch.set_rng_state(saved["rng"])
    if "cuda_rng" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    position = saved["position"]
    run.state = RunState(
        epoch=int(position["epoch"]),
        batch=int(position["batch"]),
        step=int(position["step"]),
        elapsed=float(saved.get("elapsed", 0.0)),
        best_top1=float(saved.get("best_top1", -1.0)),
        history=list(saved.get("history", [])),
        steps_log=list(saved.get("steps_log", [])),
    )


def check_finite(run: Run) -> None:
    """Never overwrite a good checkpoint with weights that overflowed."""
    if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters()):
        raise TrainingDiverged(
            f"the weights overflowed by step {run.state.step}; the last good checkpoint is kept: lower optim.lr "
            "or set optim.grad_clip"
        )
