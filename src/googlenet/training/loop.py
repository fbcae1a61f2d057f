"""The training loop: data, model, SGD, schedule, EMA, checkpoints, metrics, budget, resume.

Read top to bottom: `train()` builds everything, then runs epochs of `_train_steps` with a validation
pass and checkpoints after each. A run stopped by `train.max_steps`, `train.max_minutes` or a signal
writes DIR/checkpoints/last.pt at the exact step, and `resume=True` continues from it bit for bit (on CPU
with deterministic settings): batches are regenerated from (seed, epoch, index), the learning rate is a
pure function of the step, and the RNG, optimizer and EMA states travel in the checkpoint.
"""

from __future__ import annotations

import contextlib
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
from tqdm import tqdm

from googlenet.errors import GoogLeNetError
from googlenet.evaluation.metrics import (
    FUSED_SGD_DEVICES,
    EvalResult,
    TrainForward,
    autocast,
    evaluate,
    to_device,
    training_loss,
)
from googlenet.files import atomic_write_text
from googlenet.model import GoogLeNet, create_model, get_variant
from googlenet.training.checkpoint import load_checkpoint, preferred_state, save_checkpoint
from googlenet.training.config import Config, ConfigError, apply_overrides, config_from_dict
from googlenet.training.data import DataBundle, Preprocessing, build_data
from googlenet.training.distributed import DistInfo, any_rank, barrier, from_environment, initialise, shutdown
from googlenet.training.schedule import lr_factor

Log = Callable[[str], None]
RESUMABLE_KEYS = frozenset({"train.epochs", "train.max_steps", "train.max_minutes"})


class TrainingDiverged(GoogLeNetError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    history: list[dict[str, Any]]
    stopped: str  # "finished", "max_steps", "max_minutes", "interrupted"
    step: int


@dataclass
class _State:
    """Where a run stands; saved in last.pt."""

    epoch: int = 0  # the epoch in progress
    batch: int = 0  # the next batch index within it
    step: int = 0  # optimizer steps taken in total
    elapsed: float = 0.0  # seconds of training before this process
    best_top1: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available; use train.device=cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


TensorList = tuple[Tensor, ...] | list[Tensor]


def ema_with_warmup(decay: float) -> Callable[[TensorList, TensorList, Tensor | int], None]:
    """EMA whose decay ramps up as (1 + n) / (10 + n): early averages are not dominated by the random init.
    Updates all tensors of one device and dtype at once (foreach), reading the step count once: a per-tensor
    update would cost hundreds of kernel launches and GPU synchronisations per step. Integer buffers (the
    BatchNorm batch counters) are copied."""

    def average(averaged: TensorList, current: TensorList, num_averaged: Tensor | int) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1 - d)  # averaged + (1 - d)(current - averaged)

    return average


HEAD_PREFIXES = ("fc.", "aux1.", "aux2.")


def _is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def _param_groups(model: nn.Module, weight_decay: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights only (decaying BatchNorm scales and biases only hurts), and
    the backbone's learning-rate multiplier for discriminative fine-tuning. Frozen parameters are left out."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((p.dim() > 1, _is_head(name)), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decays else 0.0,
            "lr_mult": 1.0 if head else backbone_lr_mult,
        }
        for (decays, head), params in sorted(groups.items(), key=lambda item: item[0])
    ]


def initialise_from(model: GoogLeNet, payload: dict[str, Any], source: str) -> str:
    """Load a checkpoint's weights into ``model`` for fine-tuning. Classifier layers whose class count differs
    (fc, the auxiliary fc2) keep their fresh initialisation; every other tensor must fit."""
    if payload["model"]["name"] != model.variant:
        raise ConfigError(f"model.init {source} holds a {payload['model']['name']} model, not {model.variant}")
    state = preferred_state(payload)
    own = model.state_dict()
    loaded = {}
    for key, tensor in state.items():
        if key not in own:
            continue  # e.g. auxiliary heads the new model does not have
        if own[key].shape == tensor.shape:
            loaded[key] = tensor
        elif not _is_head(key):
            raise ConfigError(
                f"model.init {source}: {key} has shape {tuple(tensor.shape)}, the model needs {tuple(own[key].shape)}"
            )
    model.load_state_dict(loaded, strict=False)
    fresh = sorted({k.rsplit(".", 1)[0] for k in own if k not in loaded and not k.endswith("num_batches_tracked")})
    note = f"; freshly initialised: {', '.join(fresh)}" if fresh else ""
    return f"initialised from {source}: {len(loaded)} of {len(own)} tensors loaded{note}"


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


def build_model(config: Config, num_classes: int, in_channels: int) -> GoogLeNet:
    spec = get_variant(config.model.name)
    if config.data.image_size < spec.min_input_size:
        raise ConfigError(
            f"data.image_size={config.data.image_size} is below the {spec.name} variant's minimum of "
            f"{spec.min_input_size} px; use model.name=small for small images"
        )
    return create_model(config.model.name, num_classes=num_classes, in_channels=in_channels, aux=config.model.aux)


def _payload(
    config: Config,
    model: GoogLeNet,
    data: DataBundle,
    ema: AveragedModel | None,
    state: _State,
    *,
    optimizer: torch.optim.Optimizer | None,
    weights: str,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": {"name": model.variant, "num_classes": model.num_classes, "in_channels": model.in_channels},
        "state_dict": model.state_dict(),
        "ema_state_dict": ema.module.state_dict() if ema is not None else None,
        "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0,
        "weights": weights,  # which weights evaluate / predict use: "ema" or "model"
        "preprocessing": data.preprocessing.to_dict(),
        "class_names": list(data.class_names),
        "config": config.to_dict(),
        "position": {"epoch": state.epoch, "batch": state.batch, "step": state.step},
        "elapsed": state.elapsed,
        "best_top1": state.best_top1,
        "history": state.history,
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
        payload["rng"] = torch.get_rng_state()
        if torch.cuda.is_available():
            payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    return payload


def train(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    resume_overrides: list[str] | None = None,
    progress: bool = False,
    log: Log = print,
) -> TrainResult:
    """Train as ``config`` says into ``out_dir`` (metrics.jsonl, tensorboard/, checkpoints/last.pt, best.pt).
    With ``resume``, the run in ``out_dir`` continues under its own config; ``resume_overrides`` may change
    only how long it runs (train.epochs, train.max_steps, train.max_minutes)."""
    out = Path(out_dir)
    last_path, best_path = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
    resumed: dict[str, Any] | None = None
    if resume:
        resumed = load_checkpoint(last_path)
        config = config_from_dict(resumed["config"])
        apply_overrides(config, resume_overrides or [], allowed=RESUMABLE_KEYS)
    elif last_path.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    info = from_environment()
    if info.is_main:
        _check_writable(out)

    cfg = config
    torch.manual_seed(cfg.train.seed)
    # Process-wide settings are restored afterwards: a library call must not change its caller's torch.
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(cfg.train.deterministic or was_deterministic)
    try:
        return _train(cfg, out, last_path, best_path, resumed, progress if info.is_main else False, log, info)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)
        shutdown(info)


def resume(
    out_dir: str | Path, overrides: list[str] | None = None, *, progress: bool = False, log: Log = print
) -> TrainResult:
    """Continue the run in ``out_dir`` from its last.pt under its own config; ``overrides`` may change only how
    long it runs (train.epochs, train.max_steps, train.max_minutes)."""
    payload = load_checkpoint(Path(out_dir) / "checkpoints" / "last.pt")
    config = config_from_dict(payload["config"])
    apply_overrides(config, overrides or [], allowed=RESUMABLE_KEYS)
    return train(config, out_dir, resume=True, progress=progress, log=log)


def _train(
    cfg: Config,
    out: Path,
    last_path: Path,
    best_path: Path,
    resumed: dict[str, Any] | None,
    progress: bool,
    log: Log,
    info: DistInfo,
) -> TrainResult:
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
        if info.enabled:
            device = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(device)
    initialise(info, device.type)
    main = info.is_main
    if not main:
        log = _silent  # one process logs and writes files: rank 0

    init = load_checkpoint(cfg.model.init) if cfg.model.init and resumed is None else None
    init_prep = Preprocessing.from_dict(init["preprocessing"]) if init else None
    data = build_data(
        cfg.data,
        in_channels=cfg.model.in_channels or (init_prep.in_channels if init_prep else 0),
        seed=cfg.train.seed,
        pin_memory=device.type == "cuda",
        norm=(init_prep.mean, init_prep.std) if init_prep else None,
        shard=(info.rank, info.world_size),
    )
    model = build_model(cfg, len(data.class_names), data.preprocessing.in_channels)
    if cfg.model.dropout >= 0:
        model.dropout.p = cfg.model.dropout
    if init is not None:
        log(initialise_from(model, init, cfg.model.init))
    if cfg.model.freeze_features:
        for name, p in model.named_parameters():
            p.requires_grad_(_is_head(name))
    if info.enabled and cfg.train.sync_bn:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]  # swaps BN children in place
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    use_aux = cfg.model.aux_weight > 0 and model.has_aux
    forward: nn.Module = TrainForward(model, use_aux)
    if info.enabled:
        # Unused auxiliary heads (aux_weight 0) would otherwise stall DDP's gradient reduction.
        forward = DistributedDataParallel(
            forward,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=model.has_aux and not use_aux,
        )
        torch.manual_seed(cfg.train.seed + info.rank)  # different dropout masks on each process
    optimizer = torch.optim.SGD(
        _param_groups(model, cfg.optim.weight_decay, cfg.optim.backbone_lr_mult),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
        # one kernel for all parameters instead of several per tensor
        fused=device.type in FUSED_SGD_DEVICES,
    )
    ema = (
        AveragedModel(model, multi_avg_fn=ema_with_warmup(cfg.train.ema_decay), use_buffers=True)
        if cfg.train.ema_decay > 0
        else None
    )
    state = _State()
    if resumed is not None:
        state = _restore(resumed, model, optimizer, ema)
        log(f"resuming {last_path} at epoch {state.epoch + 1}, batch {state.batch}, step {state.step}")

    if cfg.train.global_batch % cfg.data.batch_size:
        raise ConfigError(
            f"train.global_batch={cfg.train.global_batch} must be a multiple of data.batch_size={cfg.data.batch_size}"
        )
    accumulate = max(cfg.train.global_batch // cfg.data.batch_size, 1)
    batches_per_epoch = len(data.train)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
    total_steps = cfg.train.epochs * steps_per_epoch
    # Compiling the loss function traces forward_train and both auxiliary heads with it.
    loss_fn: Callable[..., tuple[Tensor, Tensor]] = torch.compile(training_loss) if cfg.train.compile else training_loss
    writer = _tensorboard(out / "tensorboard") if main else None
    started = time.monotonic() - state.elapsed
    stopped = "finished"
    log(
        f"training {cfg.model.name} on {cfg.data.dataset} ({data.train.num_samples:,} images, "
        f"{len(data.class_names)} classes, {cfg.data.image_size} px) for {cfg.train.epochs} epochs "
        f"= {total_steps:,} steps on {device.type} ({cfg.train.precision})"
        + (f", {info.world_size} processes" if info.enabled else "")
    )

    def save_position() -> None:
        _check_finite(model, state)
        state.elapsed = time.monotonic() - started
        if main:
            save_checkpoint(last_path, _payload(cfg, model, data, ema, state, optimizer=optimizer, weights="model"))

    with _StopFlag() as stop:
        while state.epoch < cfg.train.epochs:
            epoch_start = time.monotonic()
            bar = tqdm(
                data.train.epoch(state.epoch, state.batch),
                total=batches_per_epoch,
                initial=state.batch,
                desc=f"epoch {state.epoch + 1}/{cfg.train.epochs}",
                disable=not progress,
                dynamic_ncols=True,
                leave=False,
            )
            stats = _train_steps(
                cfg,
                loss_fn,
                forward,
                model,
                optimizer,
                ema,
                bar,
                state,
                device,
                (total_steps, batches_per_epoch, accumulate),
                stop,
                save_position,
                info,
            )
            bar.close()
            # Why the loop left the epoch early, if it did; all processes must agree to stop.
            if stop.reason:
                stopped = stop.reason
            elif cfg.train.max_steps and state.step >= cfg.train.max_steps:
                stopped = "max_steps"
            elif cfg.train.max_minutes and time.monotonic() - started > cfg.train.max_minutes * 60:
                stopped = "max_minutes"
            if any_rank(stopped != "finished", info) and stopped == "finished":
                stopped = "stopped by another process"
            state.elapsed = time.monotonic() - started
            if state.batch < batches_per_epoch and stopped != "finished":
                save_position()
                log(f"stopped ({stopped}) at step {state.step}; checkpoint {last_path}")
                break
            if not main:  # validation, metrics and checkpoints are rank 0's
                state.epoch, state.batch = state.epoch + 1, 0
                barrier(info)
                if stopped != "finished":
                    break
                continue
            entry = _end_epoch(cfg, model, ema, data, state, stats, device, time.monotonic() - epoch_start, started)
            state.epoch, state.batch = state.epoch + 1, 0
            log(_epoch_line(entry))
            _write_jsonl(out / "metrics.jsonl", state.history)
            if writer is not None:
                for key, value in entry.items():
                    if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                        writer.add_scalar(key, value, entry["epoch"])
                writer.flush()
            weights = "ema" if entry.get("ema_val_top1", -1) > entry.get("val_top1", -1) else "model"
            best = max(entry.get("val_top1", -1.0), entry.get("ema_val_top1", -1.0))
            improved = best > state.best_top1 or not best_path.exists()
            state.best_top1 = max(best, state.best_top1)
            _check_finite(model, state)
            payload = _payload(cfg, model, data, ema, state, optimizer=optimizer, weights=weights)
            save_checkpoint(last_path, payload)
            if improved:
                save_checkpoint(best_path, {k: v for k, v in payload.items() if k not in ("optimizer", "rng")})
            barrier(info)
            if stopped != "finished":
                log(f"stopped ({stopped}) after epoch {state.epoch}; checkpoint {last_path}")
                break
    if writer is not None:
        writer.close()
    return TrainResult(out, last_path, best_path if best_path.exists() else None, state.history, stopped, state.step)


def _train_steps(
    cfg: Config,
    loss_fn: Callable[..., tuple[Tensor, Tensor]],
    forward: nn.Module,
    model: GoogLeNet,
    optimizer: torch.optim.Optimizer,
    ema: AveragedModel | None,
    batches: Iterator[tuple[Tensor, Tensor]],
    state: _State,
    device: torch.device,
    counts: tuple[int, int, int],
    stop: _StopFlag,
    save_position: Callable[[], None],
    info: DistInfo,
) -> dict[str, float]:
    """Optimizer steps over one epoch's batches, until the epoch ends or a stop condition holds. With
    gradient accumulation, ``accumulate`` batches make one step; runs stop and save only between steps."""
    total_steps, batches_per_epoch, accumulate = counts
    steps_per_epoch = total_steps // cfg.train.epochs
    model.train()
    if cfg.model.freeze_features:
        # Frozen features keep their BatchNorm statistics too: only the heads learn.
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d) and not _is_head(name + "."):
                module.eval()
    loss_sum, correct, seen, images_time = 0.0, 0, 0, 0.0
    budget = cfg.train.max_minutes * 60
    run_started = time.monotonic() - state.elapsed
    for x, y in batches:
        tick = time.monotonic()
        x, y = to_device(x, y, device, cfg.train.channels_last)
        group_start = state.batch - state.batch % accumulate
        group_size = min(accumulate, batches_per_epoch - group_start)  # the epoch's last group may be short
        first, last = state.batch == group_start, state.batch + 1 == group_start + group_size
        lr = cfg.optim.lr * lr_factor(state.step, total_steps, steps_per_epoch, cfg.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        # DDP averages gradients only on the group's last backward; the others accumulate locally.
        no_sync = forward.no_sync() if isinstance(forward, DistributedDataParallel) and not last else None
        with no_sync or contextlib.nullcontext():
            with autocast(device, cfg.train.precision):
                loss, logits = loss_fn(
                    forward, x, y, aux_weight=cfg.model.aux_weight, label_smoothing=cfg.optim.label_smoothing
                )
            if not math.isfinite(loss.item()):
                raise TrainingDiverged(
                    f"the loss became {loss.item()} at step {state.step} (lr {lr:.4g}); the last good checkpoint "
                    "is kept: lower optim.lr or set optim.grad_clip"
                )
            if first:
                optimizer.zero_grad(set_to_none=True)
            (loss / group_size).backward()  # type: ignore[no-untyped-call]
        state.batch += 1
        batch = int(y.numel())
        loss_sum += loss.item() * batch
        correct += int((logits.argmax(1) == y).sum())
        seen += batch
        images_time += time.monotonic() - tick
        if not last:
            continue
        if cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        state.step += 1
        if hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / images_time:.0f}", lr=f"{lr:.3g}")  # fmt: skip
        if any_rank(stop.reason is not None or _out_of_budget(cfg, state, run_started, budget), info):
            break
        if cfg.train.save_every_steps and state.step % cfg.train.save_every_steps == 0:
            save_position()
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_top1": correct / max(seen, 1),
        "img_per_s": seen / max(images_time, 1e-9),
        "lr": cfg.optim.lr * lr_factor(max(state.step - 1, 0), total_steps, steps_per_epoch, cfg.schedule),
    }


def _silent(_: str) -> None:
    pass


def _check_finite(model: nn.Module, state: _State) -> None:
    """Never overwrite a good checkpoint with weights that overflowed."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise TrainingDiverged(
            f"the weights overflowed by step {state.step}; the last good checkpoint is kept: lower optim.lr "
            "or set optim.grad_clip"
        )


def _out_of_budget(cfg: Config, state: _State, run_started: float, budget: float) -> bool:
    if cfg.train.max_steps and state.step >= cfg.train.max_steps:
        return True
    return bool(budget) and time.monotonic() - run_started > budget


def _end_epoch(
    cfg: Config,
    model: GoogLeNet,
    ema: AveragedModel | None,
    data: DataBundle,
    state: _State,
    stats: dict[str, float],
    device: torch.device,
    seconds: float,
    started: float,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step, **stats, "epoch_seconds": seconds}
    if data.val is not None:
        kwargs: dict[str, Any] = {
            "device": device,
            "precision": cfg.train.precision,
            "channels_last": cfg.train.channels_last,
        }
        result: EvalResult = evaluate(model, data.val, len(data.class_names), **kwargs)
        entry.update(result.as_dict("val_"))
        if ema is not None:
            entry.update(evaluate(ema.module, data.val, len(data.class_names), **kwargs).as_dict("ema_val_"))
    entry["elapsed_minutes"] = (time.monotonic() - started) / 60
    state.history.append(entry)
    return entry


def _epoch_line(entry: dict[str, Any]) -> str:
    parts = [f"epoch {entry['epoch']}", f"train loss {entry['train_loss']:.4f} acc {entry['train_top1']:.4f}"]
    if "val_top1" in entry:
        parts.append(f"val loss {entry['val_loss']:.4f} top1 {entry['val_top1']:.4f}")
    if "ema_val_top1" in entry:
        parts.append(f"EMA top1 {entry['ema_val_top1']:.4f}")
    parts.append(f"{entry['img_per_s']:.0f} img/s, lr {entry['lr']:.4g}, {entry['elapsed_minutes']:.1f} min")
    return " | ".join(parts)


def _write_jsonl(path: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole from the history that travels in the checkpoint, atomically: a run killed between
    # writing metrics and its checkpoint never ends up with a duplicated or half-written line.
    text = "".join(json.dumps(entry) + "\n" for entry in history)
    atomic_write_text(path, text)


def _tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a pinned dependency; tolerate its absence rather than fail a run
        return None
    return SummaryWriter(str(path))


def _check_writable(out: Path) -> None:
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"cannot write to output folder {out}: {error.strerror or error}") from None


def _restore(
    payload: dict[str, Any], model: GoogLeNet, optimizer: torch.optim.Optimizer, ema: AveragedModel | None
) -> _State:
    model.load_state_dict(payload["state_dict"])
    fused = [group.get("fused") for group in optimizer.param_groups]
    optimizer.load_state_dict(payload["optimizer"])
    for group, flag in zip(optimizer.param_groups, fused, strict=True):
        group["fused"] = flag  # the kernel this device supports, not the one the checkpoint's machine used
    if ema is not None and payload.get("ema_state_dict") is not None:
        ema.module.load_state_dict(payload["ema_state_dict"])
        ema.n_averaged.fill_(int(payload["ema_n_averaged"]))
    torch.set_rng_state(payload["rng"])
    if "cuda_rng" in payload and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    position = payload["position"]
    return _State(
        epoch=int(position["epoch"]),
        batch=int(position["batch"]),
        step=int(position["step"]),
        elapsed=float(payload.get("elapsed", 0.0)),
        best_top1=float(payload.get("best_top1", -1.0)),
        history=list(payload.get("history", [])),
    )
