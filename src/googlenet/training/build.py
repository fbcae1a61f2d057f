"""Everything a run needs, made from its config: the device, the data, the model with its speed-ups, the
training forward (DDP-wrapped across processes), the optimizer, the weight average and the plan."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from googlenet.config import Config, ConfigError
from googlenet.data import DataBundle, Preprocessing, build_data, keep_on_device
from googlenet.model import GoogLeNet, create_model, get_variant
from googlenet.run.checkpoint import load_checkpoint
from googlenet.run.device import resolve_device
from googlenet.training.distributed import DistInfo, initialise
from googlenet.training.loss import TrainForward, training_loss
from googlenet.training.optim import (
    build_ema,
    build_optimizer,
    describe_optimizer,
    freeze_features,
    initialise_from,
)
from googlenet.training.state import Log, LossFn, Plan, Run


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
    return create_model(
        config.model.name,
        num_classes=num_classes,
        in_channels=in_channels,
        aux=config.model.aux,
        dropout=config.model.dropout if config.model.dropout >= 0 else None,
    )


def build_run(cfg: Config, out: Path, dist: DistInfo, resumed: dict[str, Any] | None, log: Log) -> Run:
    """The run ``cfg`` describes, in the state of a fresh start (`state.restore` moves it to a checkpoint's)."""
    device = _device(cfg, dist)
    init = load_checkpoint(cfg.model.init) if cfg.model.init and resumed is None else None
    data = _data(cfg, dist, device, Preprocessing.from_dict(init["preprocessing"]) if init else None)
    model = _model(cfg, dist, device, data, log, init)
    use_aux = trains_aux_heads(cfg, model)
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
    optimizer = build_optimizer(model, cfg, device)
    if cfg.optim.name != "sgd":
        log(describe_optimizer(optimizer, model))
    return Run(
        cfg=cfg,
        out=out,
        dist=dist,
        device=device,
        data=data,
        model=model,
        forward=forward,
        loss_fn=loss_fn,
        optimizer=optimizer,
        ema=build_ema(model, cfg.train.ema_decay),
        plan=make_plan(cfg, len(data.train)),
        log=log,
    )


def _device(cfg: Config, dist: DistInfo) -> torch.device:
    """train.device, one GPU per process under torchrun; the process group is set up for it."""
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
        if dist.enabled:
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
    initialise(dist, device.type)
    return device


def _data(cfg: Config, dist: DistInfo, device: torch.device, init_prep: Preprocessing | None) -> DataBundle:
    """The train and validation splits; fine-tuning keeps the channels and normalisation of the weights it
    starts from."""
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
    return data


def _model(
    cfg: Config, dist: DistInfo, device: torch.device, data: DataBundle, log: Log, init: dict[str, Any] | None
) -> GoogLeNet:  # six arguments: each is a separate input of the model's making, none derivable from another
    """The model on its device, initialised from train.init's weights, frozen, converted and sped up as asked."""
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
    return model


def trains_aux_heads(cfg: Config, model: GoogLeNet) -> bool:
    """Whether the auxiliary heads are run and their losses added: the model has them and they weigh something."""
    return cfg.model.aux_weight > 0 and model.has_aux


def make_plan(cfg: Config, batches_per_epoch: int) -> Plan:
    """train.epochs of ``batches_per_epoch`` batches as optimizer steps (with gradient accumulation up to
    train.global_batch)."""
    if cfg.train.global_batch % cfg.data.batch_size:
        raise ConfigError(
            f"train.global_batch={cfg.train.global_batch} must be a multiple of data.batch_size={cfg.data.batch_size}"
        )
    accumulate = max(cfg.train.global_batch // cfg.data.batch_size, 1)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
    return Plan(batches_per_epoch, accumulate, steps_per_epoch, cfg.train.epochs * steps_per_epoch)


@contextlib.contextmanager
def torch_settings(cfg: Config) -> Iterator[None]:
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


def for_evaluation(run: Run, model: nn.Module) -> nn.Module:
    """What validation runs: with train.speedups, a copy with BatchNorm folded into the convolutions (as the
    torch inference engine runs it; the same outputs within float rounding, less time), else the model."""
    if not run.cfg.train.speedups or run.cfg.train.sync_bn or not isinstance(model, GoogLeNet):
        return model
    from googlenet.speedups import optimize_for_inference

    return optimize_for_inference(model, channels_last=run.cfg.train.channels_last)
