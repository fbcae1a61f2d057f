"""The optimizer, the weight average and fine-tuning: what the loop updates besides the model.

- SGD with Nesterov momentum, weight decay on conv and linear weights only, one fused kernel for all
  parameters where torch has one; or Muon for the backbone's weights and SGD for the rest (optim.name).
- An exponential moving average of the weights (the paper's Polyak averaging, in its modern form).
- Fine-tuning: loading another checkpoint's weights, freezing the features, a lower backbone learning rate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from googlenet.config import Config, ConfigError
from googlenet.model import GoogLeNet
from googlenet.run.checkpoint import preferred_state
from googlenet.training.muon import MatrixMuon, Optimizers, matrix_view

FUSED_SGD_DEVICES = ("cpu", "cuda")  # where torch.optim.SGD has a fused kernel (fused=True)
HEAD_PREFIXES = ("fc.", "aux1.", "aux2.")  # the classifiers; everything else is the backbone


def is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def param_groups(
    named: list[tuple[str, nn.Parameter]], weight_decay: float, backbone_lr_mult: float, lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights only (decaying BatchNorm scales and biases only hurts), and
    the backbone's learning-rate multiplier for discriminative fine-tuning. Frozen parameters are left out."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in named:
        if p.requires_grad:
            groups.setdefault((p.dim() > 1, is_head(name)), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decays else 0.0,
            "lr_mult": lr_mult * (1.0 if head else backbone_lr_mult),
        }
        for (decays, head), params in sorted(groups.items(), key=lambda item: item[0])
    ]


def takes_muon(name: str, p: nn.Parameter) -> bool:
    """Whether optim.name = "muon" trains ``p`` with Muon: the backbone's conv and linear weights, as (out,
    fan-in) matrices. BatchNorm scales, biases (1-D: no matrix to orthogonalise) and the classifiers (whose
    rows are classes, not features to decorrelate) stay with SGD, as in the records Muon set."""
    return p.dim() > 1 and not is_head(name) and matrix_view(p) is not None


Optimizer = torch.optim.Optimizer | Optimizers


def build_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> Optimizer:
    """optim.name's optimizer over the model's trainable parameters (`param_groups`)."""
    named = list(model.named_parameters())
    muon = [(n, p) for n, p in named if cfg.optim.name == "muon" and p.requires_grad and takes_muon(n, p)]
    taken = {id(p) for _, p in muon}
    sgd = torch.optim.SGD(
        param_groups(
            [(n, p) for n, p in named if id(p) not in taken], cfg.optim.weight_decay, cfg.optim.backbone_lr_mult
        ),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
        # one kernel for all parameters instead of several per tensor
        fused=device.type in FUSED_SGD_DEVICES,
    )
    if not muon:
        return sgd
    muon_groups = param_groups(
        muon, cfg.optim.muon_weight_decay, cfg.optim.backbone_lr_mult, lr_mult=cfg.optim.muon_lr / cfg.optim.lr
    )
    muon_optimizer = MatrixMuon(
        muon_groups, lr=cfg.optim.muon_lr, momentum=cfg.optim.muon_momentum, ns_steps=cfg.optim.muon_ns_steps
    )
    return Optimizers([muon_optimizer, sgd])


def describe_optimizer(optimizer: Optimizer, model: nn.Module) -> str:
    """One line for the log: which optimizer trains what, naming any backbone weight Muon could not take."""
    if not isinstance(optimizer, Optimizers):
        return "optimizer: SGD (Nesterov momentum) for all parameters"
    muon = next(part for part in optimizer.parts if isinstance(part, MatrixMuon))
    rest = [p for part in optimizer.parts if part is not muon for g in part.param_groups for p in g["params"]]
    taken = {id(w) for w in muon.weights}
    fell_back = [n for n, p in model.named_parameters() if p.dim() > 1 and not is_head(n) and id(p) not in taken]
    note = f"; no matrix view, so SGD: {', '.join(fell_back)}" if fell_back else ""
    weights = sum(w.numel() for w in muon.weights)
    return (
        f"optimizer: Muon for {len(muon.weights)} conv and linear weights of the backbone ({weights:,} parameters), "
        f"SGD for the other {len(rest)} tensors (BatchNorm, biases, classifiers: Muon takes only matrices){note}"
    )


def set_learning_rate(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]


def ema_decay(decay: float, updates: int) -> float:
    """The EMA's decay after ``updates`` earlier updates: it ramps up as (1 + n) / (10 + n), so that early
    averages are not dominated by the random initialisation."""
    return min(decay, (1 + updates) / (10 + updates))


class WarmupEMA(AveragedModel):
    """An exponential moving average of the parameters and BatchNorm statistics (an AveragedModel, so its
    state dict and ``n_averaged`` are torch's), updated with no GPU synchronisation: the update count is read
    from the CPU copy that AveragedModel keeps, and all floating-point tensors are updated at once
    (foreach). torch's own update_parameters would hand the count to the averaging function as a device
    tensor, and reading it there waits for the GPU at every step. Integer buffers (the BatchNorm batch
    counters) are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, use_buffers=True)
        self.decay = decay

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [t.detach() for t in (*model.parameters(), *model.buffers())]
        updates = int(self.n_averaged)  # a CPU tensor: no synchronisation
        floats = [i for i, t in enumerate(averaged) if t.is_floating_point()]
        others = [i for i, t in enumerate(averaged) if not t.is_floating_point()]
        if others:
            torch._foreach_copy_([averaged[i] for i in others], [current[i] for i in others])
        if updates == 0:  # the first update copies
            torch._foreach_copy_([averaged[i] for i in floats], [current[i] for i in floats])
        else:  # averaged + (1 - d)(current - averaged)
            weight = 1 - ema_decay(self.decay, updates)
            torch._foreach_lerp_([averaged[i] for i in floats], [current[i] for i in floats], weight)
        self.n_averaged += 1


def build_ema(model: nn.Module, decay: float) -> WarmupEMA | None:
    """The weight average, over parameters and BatchNorm statistics alike; None when ``decay`` is 0."""
    if decay <= 0:
        return None
    return WarmupEMA(model, decay)


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
