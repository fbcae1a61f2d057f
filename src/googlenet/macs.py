"""Shapes and multiply-adds of every layer, measured by forward hooks on a live module.

Runs on the meta device by default, so profiling the full network at 224 px costs no arithmetic.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LayerProfile:
    """One submodule call: its input and output shapes (batch dimension dropped) and cost."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int  # multiply-adds for one image: the paper's "ops"


def layer_macs(module: nn.Module, output: Tensor) -> int:
    """Multiply-adds of one image through a conv or linear layer; zero for everything else."""
    per_image = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


def profile_modules(
    module: nn.Module,
    input_shape: tuple[int, ...],
    call: Callable[[nn.Module, Tensor], object] | None = None,
    device: str | torch.device = "meta",
) -> list[LayerProfile]:
    """Run ``call(module, x)`` (default ``module(x)``) on one zero image of ``input_shape`` (C, H, W) and
    record every submodule call as it finished (children before their parents). Only conv and linear
    records carry multiply-adds, so summing a name prefix counts each layer once. The module must live
    on ``device``."""
    records: list[LayerProfile] = []
    names = {m: n for n, m in module.named_modules()}

    def hook(mod: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        records.append(
            LayerProfile(
                name=names[mod],
                module=mod,
                input_shape=tuple(inputs[0].shape[1:]),
                output_shape=tuple(output.shape[1:]),
                macs=layer_macs(mod, output),
            )
        )

    handles = [m.register_forward_hook(hook) for m in module.modules() if m is not module]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            x = torch.zeros((1, *input_shape), device=device)
            (call or (lambda m, t: m(t)))(module, x)
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return records


def sum_macs(records: list[LayerProfile], prefix: str = "") -> int:
    """Total multiply-adds of the records whose module name starts with ``prefix``."""
    if not prefix:
        return sum(r.macs for r in records)
    return sum(r.macs for r in records if r.name == prefix or r.name.startswith(prefix + "."))


def forward_macs(model: nn.Module, in_channels: int, image_size: int, *, training: bool = False) -> int:
    """Multiply-adds of one image through ``model`` (a GoogLeNet), on a meta-device copy: the inference
    forward, or with ``training`` the training forward, which also runs the auxiliary heads."""
    meta = copy.deepcopy(model).to("meta")

    def call(m: nn.Module, x: Tensor) -> object:
        return m.forward_train(x) if training else m(x)  # type: ignore[operator]

    return sum_macs(profile_modules(meta, (in_channels, image_size, image_size), call=call))
