"""Where and in what precision tensors run: shared by training and evaluation."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from googlenet.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """ "auto" -> CUDA when present, else the CPU; "cuda" without a GPU is a user error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available; use train.device=cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CPU (AVX-512 bf16) or CUDA; nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x: Tensor, y: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)
