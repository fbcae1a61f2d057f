"""CPU training kernels that ATen lacks, with ATen as the fallback.

Two operations of GoogLeNet's training step are bound by memory traffic on a CPU, not by arithmetic:

- ``max_pool2d``: ATen's max-pool saves an int64 offset per output element for its backward pass (8 bytes,
  where a 3x3 window needs 4 bits) and scatters the gradient into a zero-filled tensor. The kernel saves each
  maximum's position inside its window in one byte and gathers the gradient. With ``relu=True`` it also applies
  the ReLU that follows the pool (exact: see ``googlenet.speedups``), keeping its mask in the same byte.
- ``batch_norm_relu``: training-mode BatchNorm followed by ReLU in one pass forward and one pair of passes
  backward, where ATen makes separate passes for each.

And one that is slow in oneDNN on small maps:

- ``conv2d``: a convolution whose weight gradient (and, for 1x1, input gradient) is computed as matrix products
  where oneDNN's backward kernels are several times slower (``conv.py``; plain PyTorch, nothing to build).

They are C++ (``csrc/kernels.cpp``), built per environment by the set-up (``python -m googlenet.kernels build``,
see ``build.py``), and used only where they compute exactly what ATen does: CPU tensors in channels_last memory
format, float32/bfloat16/float64, a gradient being recorded, plain ``nn.BatchNorm2d`` in training mode with
running statistics, and not under ``torch.compile``. Everywhere else, and where nothing was built, the same
functions call ATen. ``GOOGLENET_KERNELS=aten`` (or ``use_aten()``) turns the kernels off.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from googlenet.kernels import build, conv

__all__ = [
    "batch_norm_relu",
    "conv2d",
    "describe",
    "fusable_batchnorm",
    "loaded",
    "max_pool2d",
    "module_batch_norm_relu",
    "use_aten",
]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float64)
_OFF_VALUES = {"0", "aten", "off", "false", "no"}

_state: dict[str, Any] = {"checked": False, "module": None, "reason": "", "enabled": True}
# Read once: the switch holds for the process, and conv2d consults it on every training convolution.
_OFF_BY_ENVIRONMENT = os.environ.get("GOOGLENET_KERNELS", "").strip().lower() in _OFF_VALUES


def _library() -> ModuleType | None:
    """The built kernels, loaded on first use; None (with the reason kept for ``describe``) where unavailable."""
    if not _state["checked"]:
        _state["checked"] = True
        if _OFF_BY_ENVIRONMENT:
            _state["reason"] = "turned off by GOOGLENET_KERNELS"
        else:
            try:
                _state["module"] = build.load_built()
            except FileNotFoundError:
                _state["reason"] = (
                    "not built for this environment: run `make setup` or `python -m googlenet.kernels build`"
                    if build.compiler()
                    else "not built: no C++ compiler was found"
                )
            except (ImportError, OSError) as error:
                _state["reason"] = f"could not be loaded ({error})"
    return cast(ModuleType | None, _state["module"]) if _state["enabled"] else None


def conv2d(x: Tensor, layer: nn.Conv2d, weight: Tensor | None = None) -> Tensor:
    """``layer(x)``, or with ``weight`` in place of the layer's own (same geometry, any number of output
    channels): with its backward as matrix products where ``conv.takes`` it, else by ATen. Only
    ``GOOGLENET_KERNELS=aten`` and ``use_aten()`` turn it off: it needs nothing built."""
    own = weight is None
    weight = layer.weight if weight is None else weight
    on = _matmul_gradients_on() and layer.padding_mode == "zeros"
    if on and conv.takes(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups):
        return conv.conv2d_matmul_backward(x, weight)
    if own:
        return cast(Tensor, layer(x))  # through the module, so that its hooks see it as they would
    return layer._conv_forward(x, weight, layer.bias)  # nn.Conv2d's own call with another weight


def _matmul_gradients_on() -> bool:
    """Whether conv2d takes its gradients as matrix products: neither use_aten() nor GOOGLENET_KERNELS turned
    it off (it needs nothing built, unlike the C++ kernels)."""
    return bool(_state["enabled"]) and not _OFF_BY_ENVIRONMENT


def loaded() -> bool:
    """Whether the C++ kernels are built, loaded and turned on."""
    return _library() is not None


def describe() -> str:
    """One line for logs: which training kernels run."""
    matmul = "; convolution gradients as matrix products on small maps" if _matmul_gradients_on() else ""
    if loaded():
        return "C++ training kernels: compact-index max-pool, fused BatchNorm+ReLU" + matmul
    reason = _state["reason"] or "turned off"
    return f"C++ training kernels {reason}; using ATen's max-pool and BatchNorm" + matmul


@contextlib.contextmanager
def use_aten() -> Iterator[None]:
    """Run ATen's operations instead of the kernels inside the block (for comparisons)."""
    previous = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = previous


def _usable(x: Tensor, *, channel_slice: bool = False) -> bool:
    """Whether the kernels take ``x``: a channels_last CPU tensor whose gradient is being recorded. With
    ``channel_slice``, also a channel slice of one (channels innermost, pixels further apart)."""
    if channel_slice:
        layout = x.dim() == 4 and (x.stride(1) == 1 or x.shape[1] == 1) and x.stride(3) >= x.shape[1]
    else:
        layout = x.is_contiguous(memory_format=torch.channels_last)
    return (
        layout
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in SUPPORTED_DTYPES
        and torch.is_grad_enabled()
        and x.requires_grad
        and not torch.compiler.is_compiling()
        and _library() is not None
    )


def _channels_last(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


def _pool_geometry(pool: nn.MaxPool2d) -> tuple[int, int, int, int, int, int, bool] | None:
    """(kH, kW, sH, sW, pH, pW, ceil_mode), or None where the kernel does not cover the pool."""
    if pool.return_indices or _pair(pool.dilation) != (1, 1):
        return None
    k = _pair(pool.kernel_size)
    s = _pair(pool.stride if pool.stride else pool.kernel_size)
    p = _pair(pool.padding)
    if k[0] * k[1] >= 255:  # one byte per index, 255 marks a ReLU-zeroed output
        return None
    return k[0], k[1], s[0], s[1], p[0], p[1], bool(pool.ceil_mode)


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, geometry: tuple[int, int, int, int, int, int, bool], relu: bool) -> Tensor:
        library = cast(ModuleType, _library())
        out, index = library.max_pool_forward(x, *geometry, relu)
        ctx.save_for_backward(index)
        ctx.geometry = geometry[:6]
        ctx.input_size = (x.shape[2], x.shape[3])
        ctx.library = library
        return cast(Tensor, out)

    @staticmethod
    @once_differentiable  # the C++ backward builds no graph: a second derivative must raise, not be wrong
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (index,) = ctx.saved_tensors
        grad_input = ctx.library.max_pool_backward(_channels_last(grad), index, *ctx.input_size, *ctx.geometry)
        return grad_input, None, None


def max_pool2d(x: Tensor, pool: nn.MaxPool2d, *, relu: bool = False) -> Tensor:
    """``pool(x)``, then ReLU if ``relu``: by the compact-index kernel where it applies, else by ATen."""
    geometry = _pool_geometry(pool)
    if geometry is not None and _usable(x, channel_slice=True):
        return cast(Tensor, _MaxPool.apply(x, geometry, relu))
    y = nn.MaxPool2d.forward(pool, x)  # not pool(x): a pool whose forward calls this function would recurse
    return F.relu(y, inplace=True) if relu else y


class _BatchNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(  # an autograd op: the tensors it needs, as ATen's
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        running_mean: Tensor,
        running_var: Tensor,
        momentum: float,
        eps: float,
    ) -> Tensor:
        library = cast(ModuleType, _library())
        y, mean, invstd = library.batch_norm_relu_forward(x, weight, bias, running_mean, running_var, momentum, eps)
        ctx.save_for_backward(x, y, weight, mean, invstd)
        ctx.library = library
        return cast(Tensor, y)

    @staticmethod
    @once_differentiable  # the C++ backward builds no graph: a second derivative must raise, not be wrong
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, y, weight, mean, invstd = ctx.saved_tensors
        dx, dw, db = ctx.library.batch_norm_relu_backward(_channels_last(grad), x, y, weight, mean, invstd)
        return dx, dw, db, None, None, None, None


def batch_norm_relu(  # an autograd op: the tensors it needs, as ATen's
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor,
    bias: Tensor,
    momentum: float,
    eps: float,
) -> Tensor:
    """``relu(F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum, eps))``, updating
    the running statistics in place: by the fused kernel where it applies, else by ATen. The caller advances
    the layer's ``num_batches_tracked``, as ``nn.BatchNorm2d.forward`` would."""
    params_ok = weight.dtype == bias.dtype == running_mean.dtype == running_var.dtype and weight.dtype in (
        torch.float32,
        torch.float64,
    )
    dtypes_ok = x.dtype == weight.dtype or (x.dtype == torch.bfloat16 and weight.dtype == torch.float32)
    if params_ok and dtypes_ok and x.numel() > x.shape[1] and _usable(x):
        return cast(Tensor, _BatchNormReLU.apply(x, weight, bias, running_mean, running_var, momentum, eps))
    return F.relu(F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps), inplace=True)


def fusable_batchnorm(bn: nn.Module) -> bool:
    """Plain BatchNorm2d in training mode with affine parameters, running statistics and a momentum: the case
    ``batch_norm_relu`` computes."""
    return (
        type(bn) is nn.BatchNorm2d
        and bn.training
        and bn.momentum is not None
        and bn.weight is not None
        and bn.bias is not None
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_batches_tracked is not None
        and bn.track_running_stats  # switched off after construction, the buffers stay but must not move
    )


def module_batch_norm_relu(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """``relu(bn(x))`` for a layer that passes ``fusable_batchnorm``, counting the batch as the layer would."""
    y = batch_norm_relu(
        x,
        cast(Tensor, bn.running_mean),
        cast(Tensor, bn.running_var),
        bn.weight,
        bn.bias,
        cast(float, bn.momentum),
        bn.eps,
    )
    with torch.no_grad():
        cast(Tensor, bn.num_batches_tracked).add_(1)
    return y
