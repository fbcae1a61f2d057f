"""The inference path: the same function as the eval-mode model, with less work per image.

- BatchNorm is folded into the convolution before it (y = gamma (Wx + b - mean) / sqrt(var + eps) + beta is
  again a convolution), so BN layers disappear.
- In every Inception module the three 1x1 convolutions that read the module's input (branch 1, the 3x3
  reduction, the 5x5 reduction) become one convolution whose output is split: one pass over the input
  instead of three.
- Auxiliary heads are dropped; the result is in eval mode and, optionally, channels_last.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import Tensor, nn

from googlenet.model import ConvBlock, GoogLeNet, Inception


@torch.no_grad()
def fold_batchnorm(block: ConvBlock) -> None:
    """Fold ``block.bn`` (if it is BatchNorm) into ``block.conv`` in place, using its running statistics."""
    bn = block.bn
    if not isinstance(bn, nn.BatchNorm2d):
        return
    conv = block.conv
    running_mean, running_var = cast(Tensor, bn.running_mean), cast(Tensor, bn.running_var)
    scale = bn.weight / torch.sqrt(running_var + bn.eps)  # (out,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(running_mean)
    fused = copy.deepcopy(conv)  # same geometry; weights and bias replaced below
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    fused.bias = nn.Parameter(bn.bias + (bias - running_mean) * scale)
    block.conv = fused
    block.bn = nn.Identity()


class MergedInception(nn.Module):
    """An Inception module whose three input-side 1x1 convolutions run as one."""

    def __init__(self, module: Inception) -> None:
        super().__init__()
        first = [
            module.branch1.conv,
            cast(ConvBlock, module.branch2[0]).conv,
            cast(ConvBlock, module.branch3[0]).conv,
        ]
        if any(
            not isinstance(cast(ConvBlock, b).bn, nn.Identity)
            for b in (module.branch1, module.branch2[0], module.branch3[0])
        ):
            raise ValueError("fold BatchNorm before merging the 1x1 convolutions")
        self.splits = [c.out_channels for c in first]
        self.reduce = nn.Conv2d(first[0].in_channels, sum(self.splits), 1, bias=True)
        with torch.no_grad():
            self.reduce.weight.copy_(torch.cat([c.weight for c in first]))
            cast(Tensor, self.reduce.bias).copy_(torch.cat([cast(Tensor, c.bias) for c in first]))
        self.relu = nn.ReLU(inplace=True)
        self.conv3x3 = module.branch2[1]
        self.conv5x5 = module.branch3[1]
        self.pool_branch = module.branch4

    def forward(self, x: Tensor) -> Tensor:
        b1, r3, r5 = self.relu(self.reduce(x)).split(self.splits, dim=1)
        return torch.cat([b1, self.conv3x3(r3), self.conv5x5(r5), self.pool_branch(x)], 1)


def optimize_for_inference(model: GoogLeNet, *, channels_last: bool = True) -> GoogLeNet:
    """A copy of ``model`` for inference: BatchNorm folded, 1x1 convolutions merged, no auxiliary heads,
    eval mode. Its outputs equal the eval-mode model's within float rounding."""
    fast = copy.deepcopy(model).eval()
    fast.aux1 = fast.aux2 = None
    fast.has_aux = False
    for module in fast.modules():
        if isinstance(module, ConvBlock):
            fold_batchnorm(module)
    for name, child in list(fast.named_children()):
        if isinstance(child, Inception):
            setattr(fast, name, MergedInception(child))
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    return fast
