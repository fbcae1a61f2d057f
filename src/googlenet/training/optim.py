"""The optimizer, the weight average and fine-tuning: what the loop updates besides the model.

- SGD with Nesterov momentum, weight decay on conv and linear weights only, one fused kernel for all
  parameters where torch has one.
- An exponential moving average of the weights (the paper's Polyak averaging, in its modern form).
- Fine-tuning: loading another checkpoint's weights, freezing the features, a lower backbone learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from googlenet.model import GoogLeNet
from googlenet.training.checkpoint import preferred_state
from googlenet.training.config import Config, ConfigError

FUSED_SGD_DEVICES = ("cpu", "cuda")  # where torch.optim.SGD has a fused kernel (fused=True)
HEAD_PREFIXES = ("fc.", "aux1.", "aux2.")  # the classifiers; everything else is the backbone


def is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def param_groups(model: nn.Module, weight_decay: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights only (decaying BatchNorm scales and biases only hurts), and
    the backbone's learning-rate multiplier for discriminative fine-tuning. Frozen parameters are left out."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((p.dim() > 1, is_head(name)), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decays else 0.0,
            "lr_mult": 1.0 if head else backbone_lr_mult,
        }
        for (decays, head), params in sorted(groups.items(), key=lambda item: item[0])
    ]


def build_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.SGD:
    return torch.optim.SGD(
        param_groups(model, cfg.optim.weight_decay, cfg.optim.backbone_lr_mult),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
        # one kernel for all parameters instead of several per tensor
        fused=device.type in FUSED_SGD_DEVICES,
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]


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


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """The weight average, over parameters and BatchNorm statistics alike; None when ``decay`` is 0."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=ema_with_warmup(decay), use_buffers=True)


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
        elif not is_head(key):
            raise ConfigError(
                f"model.init {source}: {key} has shape {tuple(tensor.shape)}, the model needs {tuple(own[key].shape)}"
            )
    model.load_state_dict(loaded, strict=False)
    fresh = sorted({k.rsplit(".", 1)[0] for k in own if k not in loaded and not k.endswith("num_batches_tracked")})
    note = f"; freshly initialised: {', '.join(fresh)}" if fresh else ""
    return f"initialised from {source}: {len(loaded)} of {len(own)} tensors loaded{note}"


def freeze_features(model: nn.Module) -> None:
    """Train only the classifier heads: the backbone's parameters stop learning."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_head(name))


def keep_frozen_statistics(model: nn.Module) -> None:
    """After ``model.train()``: frozen features keep their BatchNorm statistics too."""
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and not is_head(name + "."):
            module.eval()
