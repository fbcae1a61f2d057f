"""Convolution gradients as matrix products, on the small feature maps where oneDNN's backward is slow.

At the Fashion-MNIST presets' 64 px, GoogLeNet's Inception 4 and 5 modules run on 4x4 and 2x2 maps. There
oneDNN's backward-weights kernel (PyTorch 2.14 on the CPU, bf16, channels_last) takes 4-20 times what the same
gradient costs as one matrix product: for the 1x1 convolution 832 -> 624 at 2x2 and batch 128, 7.5 ms against
0.4-0.5 ms, while the forward pass takes 1.4 ms (docs/performance.md). The arithmetic is the textbook one:

- a convolution's weight gradient is the product of the output gradient, as an (N*H*W, out) matrix, transposed,
  with the input's patches, an (N*H*W, kh*kw*in) matrix (im2col);
- for a 1x1 convolution the patches are the input itself, which in channels_last memory already is an
  (N*H*W, in) matrix, and the input gradient is one product too: output gradient times the (out, in) weight.

Gathering k x k patches copies the input k*k times, which is cheap at 4x4 and 2x2 and not at 16x16, where
oneDNN's own kernel is faster: larger kernels take this path only on maps of at most ``PATCH_PIXELS`` pixels,
and their input gradient stays oneDNN's. The forward pass is always oneDNN's.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# The largest map (H*W) on which a kxk convolution (k > 1) gathers patches for its weight gradient: measured on
# 2 vCPUs, batch 128, bf16: 4x4 and 2x2 gain 2.5-7x, 8x8 about as much as 5x5 loses, 16x16 loses 4x.
PATCH_PIXELS = 16
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def takes(  # the geometry as nn.Conv2d holds it
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Any, dilation: Any, groups: int
) -> bool:
    """Whether ``conv2d_matmul_backward`` computes this convolution: a 4-D CPU input whose gradient or weight's
    gradient is recorded, stride 1, no dilation, one group, no bias, symmetric zero padding, and a 1x1 kernel or
    a map of at most ``PATCH_PIXELS`` pixels."""
    if x.dim() != 4 or x.device.type != "cpu" or x.dtype not in SUPPORTED_DTYPES:
        return False
    if _autocast(x.dtype) != _autocast(weight.dtype):
        return False
    if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad) or torch.compiler.is_compiling():
        return False
    if bias is not None or groups != 1 or _pair(stride) != (1, 1) or _pair(dilation) != (1, 1):
        return False
    if isinstance(padding, str) or _pair(padding) != (weight.shape[2] // 2, weight.shape[3] // 2):
        return False  # "same"/"valid" strings, or padding that does not keep the map's size
    kernel = (weight.shape[2], weight.shape[3])
    return kernel == (1, 1) or (kernel[0] % 2 == 1 and kernel[1] % 2 == 1 and x.shape[2] * x.shape[3] <= PATCH_PIXELS)


def _autocast(dtype: torch.dtype) -> torch.dtype:
    """The dtype a convolution's operand of ``dtype`` runs in: CPU autocast casts float32 to its dtype."""
    if dtype == torch.float32 and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return dtype


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


def _rows(t: Tensor) -> Tensor:
    """An (N, C, H, W) tensor as its (N*H*W, C) matrix: a view for channels_last memory (or a channel slice of
    it), a copy otherwise."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def patches(x: Tensor, kh: int, kw: int) -> Tensor:
    """The (N*H*W, kh*kw*C) im2col matrix of ``x`` for a stride-1 convolution padded to keep the map's size,
    columns in (kh, kw, C) order: the memory order of a channels_last weight."""
    n, c, h, w = x.shape
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, kw // 2, kw // 2, kh // 2, kh // 2))  # N, H+2p, W+2p, C
    windows = padded.unfold(1, kh, 1).unfold(2, kw, 1)  # N, H, W, C, kh, kw
    return windows.permute(0, 1, 2, 4, 5, 3).reshape(n * h * w, kh * kw * c)


class _Conv2dMatmulBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        kh, kw = weight.shape[2], weight.shape[3]
        return F.conv2d(x, weight, padding=(kh // 2, kw // 2))

    @staticmethod
    @once_differentiable  # the backward builds no graph: a second derivative must raise, not be wrong
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        out, c, kh, kw = weight.shape
        n, _, h, w = x.shape
        g = _rows(grad)  # (N*H*W, out)
        grad_x = grad_w = None
        if kh == kw == 1:
            if ctx.needs_input_grad[0]:
                grad_x = (g @ weight.reshape(out, c)).view(n, h, w, c).permute(0, 3, 1, 2)  # channels_last
            if ctx.needs_input_grad[1]:
                grad_w = (g.t() @ _rows(x)).view(out, c, 1, 1)
            return grad_x, grad_w
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [kh // 2, kw // 2], [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = (g.t() @ patches(x, kh, kw)).view(out, kh, kw, c).permute(0, 3, 1, 2)  # channels_last
        return grad_x, grad_w


def conv2d_matmul_backward(x: Tensor, weight: Tensor) -> Tensor:
    """``F.conv2d(x, weight, padding=k // 2)`` whose backward runs as matrix products (for the cases ``takes``
    accepts). Under CPU autocast float32 operands are cast to its dtype first, as autocast casts a convolution's."""
    if torch.is_autocast_enabled("cpu"):
        x, weight = x.to(_autocast(x.dtype)), weight.to(_autocast(weight.dtype))  # differentiable casts
        with torch.autocast("cpu", enabled=False):
            return cast(Tensor, _Conv2dMatmulBackward.apply(x, weight))
    return cast(Tensor, _Conv2dMatmulBackward.apply(x, weight))
