"""Faster ways to run the same network: module swaps for training and for inference.

``googlenet.model`` is the paper's network as written. This module rewrites a built model by swapping some
of its modules for ones that compute the same function with less work:

- ``optimize_for_training(model)`` swaps in place and returns the same object. The swapped modules hold
  the model's own submodules under their own attribute names, so the parameters are the same Parameter
  objects (an optimizer built before or after the swap works), and the state-dict keys and buffers are the
  plain model's: a checkpoint written from either loads strictly into the other. Outputs, gradients and
  BatchNorm running statistics are those of the plain model in training and in eval mode, for every
  variant, equal up to float rounding (summation order). Forward hooks no longer see the paper's order.
- ``optimize_for_inference(model)`` returns an eval-mode deep copy with BatchNorm folded into the
  convolutions, the merged 1x1 convolutions and no auxiliary heads.

The rewrites, and why each is exact:

1. Merged input-side 1x1 convolutions (``MergedInception``, training and inference). Three of an Inception
   module's convolutions read its input: branch 1's 1x1, the 3x3 branch's reduction and the 5x5 branch's
   reduction. They run as one convolution with the three filter banks stacked along the output channels,
   whose output is split again: one pass over the input instead of three, and one input gradient instead
   of a sum of three. A convolution computes each output channel from its own filter alone, so stacking
   filters computes the same channels. BatchNorm is per channel too (batch mean and variance, affine
   transform and running-statistics update of a channel use that channel only), so one BatchNorm over the
   stacked channels, with the three layers' weights, biases and running statistics concatenated, is the
   three BatchNorms: its updated running statistics are copied back into each layer's buffers, and each
   layer's ``num_batches_tracked`` advances by one as it would have. Gradients reach the original weights
   through the concatenation. The weights are concatenated on every call (about 7 MB for the whole network
   in float32, well under a millisecond), so the layers stay the trainable originals.

   Checked on every call, the merge runs only where it is exact:
   - in training mode, when all three layers are bias-free convolutions followed by plain
     ``nn.BatchNorm2d`` in training mode, with running statistics, a momentum, and the same eps and
     momentum (one ``F.batch_norm`` call can use one of each);
   - in eval mode, when none of the three has BatchNorm (folded by ``optimize_for_inference``, or the
     paper's BN-free variant) and every convolution has a bias: one convolution with the stacked biases.
   Everything else runs the three layers one by one, as the plain module does: SyncBatchNorm (after
   ``nn.SyncBatchNorm.convert_sync_batchnorm``), BatchNorm in eval mode (validation, or frozen features
   while fine-tuning), cumulative-average BatchNorm (momentum None), and the paper variant in training.

2. ReLU after the stride-2 max-pools (``PooledConvBlock``, ``MergedInception(pool=...)``; the training
   swap only, where it holds in both modes).
   Four max-pools follow a block ending in ReLU: maxpool1 after conv1, maxpool2 after conv3 (unless the
   paper's LRN sits between them: LRN mixes channels and is not monotone per element), maxpool3 after
   Inception 3b and maxpool4 after Inception 4e. The block takes the pool in and applies its ReLU after
   it; the model's own pool slot becomes ``nn.Identity``. ReLU and max-pooling commute: both are monotone,
   and the pooled maximum is one of the window's values. Their gradients agree too: the pool routes the
   gradient to the window's first maximal element in either order, and when that maximum is not positive
   ReLU zeroes it in either order. ReLU then runs forward and backward on a quarter of the elements. An
   Inception module pools each branch's pre-activation separately, then ReLU, then concatenates (the same
   values, pooling being per channel) rather than pooling the concatenation: that hands each BatchNorm
   backward a whole gradient tensor instead of a channel slice of one, which its CPU kernel runs several
   times slower.

3. Training kernels (``googlenet.kernels``; the training swap only): every max-pool runs the C++ kernel that
   saves one-byte in-window indices (with the ReLU of rewrite 2 fused into it), every training-mode
   BatchNorm followed by a ReLU runs as one fused C++ kernel (``FusedConvBlock``, and the stacked BatchNorm of
   rewrite 1), and every stride-1 convolution of a block takes its gradients as matrix products where
   oneDNN's backward is slow (1x1 kernels, and small maps). They compute ATen's results within float rounding
   and fall back to ATen wherever they do not apply or were not built.

4. BatchNorm folded into the convolution before it (inference only): in eval mode BatchNorm is the affine
   map y = gamma (x - mean) / sqrt(var + eps) + beta per channel, and an affine map per output channel
   after a convolution is again a convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``). The result
   equals the eval-mode model within float rounding.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from googlenet import kernels
from googlenet.model import ConvBlock, GoogLeNet, Inception, InceptionSpec

# (block, the max-pool after it) pairs of GoogLeNet whose ReLU can move after the pool.
POOLED_BLOCKS = (("conv1", "maxpool1"), ("conv3", "maxpool2"), ("inception3b", "maxpool3"), ("inception4e", "maxpool4"))


def _pre_activation(block: ConvBlock | PooledConvBlock, x: Tensor) -> Tensor:
    """Conv -> BatchNorm (or nothing), without the ReLU."""
    return cast(Tensor, block.bn(kernels.conv2d(x, block.conv)))


class PooledConvBlock(nn.Module):
    """A ConvBlock and the max-pool after it, computed as ReLU(pool(BN(conv(x)))): the block's own conv,
    bn and relu (so the same parameters and state-dict keys) and the model's pool."""

    def __init__(self, block: ConvBlock, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.training = block.training  # the mode of the module it stands in for
        self.conv = block.conv
        self.bn = block.bn
        self.relu = block.relu
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        return kernels.max_pool2d(_pre_activation(self, x), self.pool, relu=True)


class FusedConvBlock(ConvBlock):
    """A ConvBlock whose training-mode BatchNorm and ReLU run as one kernel (``googlenet.kernels``), holding the
    block's own conv, bn and relu. Elsewhere (eval mode, no BatchNorm, kernels not built) it is the ConvBlock."""

    def __init__(self, block: ConvBlock) -> None:
        nn.Module.__init__(self)
        self.training = block.training  # the mode of the module it stands in for
        self.conv = block.conv
        self.bn = block.bn
        self.relu = block.relu

    def forward(self, x: Tensor) -> Tensor:
        if kernels.fusable_batchnorm(self.bn):
            return kernels.module_batch_norm_relu(kernels.conv2d(x, self.conv), cast(nn.BatchNorm2d, self.bn))
        return super().forward(x)


class CompactMaxPool2d(nn.MaxPool2d):
    """The same max-pool, trained through the compact-index kernel where it applies (``googlenet.kernels``)."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__(
            pool.kernel_size,
            pool.stride,
            pool.padding,
            pool.dilation,
            return_indices=pool.return_indices,
            ceil_mode=pool.ceil_mode,
        )
        self.training = pool.training

    def forward(self, x: Tensor) -> Tensor:
        return kernels.max_pool2d(x, self)


class MergedInception(nn.Module):
    """An Inception module whose three input-side 1x1 convolutions run as one where that is exact (see the
    module docstring), holding the module's own ``branch1``..``branch4``: the same parameters, buffers and
    state-dict keys. With ``pool`` (a max-pool that followed the module), it returns
    ReLU(pool(pre-activation)) of each branch, concatenated: the module's output, pooled."""

    def __init__(self, module: Inception | MergedInception, *, pool: nn.MaxPool2d | None = None) -> None:
        super().__init__()
        self.training = module.training  # the mode of the module it stands in for
        self.in_channels: int = module.in_channels
        self.spec: InceptionSpec = module.spec
        self.out_channels: int = module.out_channels
        self.branch1: ConvBlock = module.branch1
        self.branch2: nn.Sequential = module.branch2
        self.branch3: nn.Sequential = module.branch3
        self.branch4: nn.Sequential = module.branch4
        self.pool = pool
        for block in self._reductions():
            conv = block.conv
            geometry = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)
            if geometry != ((1, 1), (1, 1), (0, 0), (1, 1), 1) or conv.padding_mode != "zeros":
                raise ValueError(f"the input-side convolutions must be plain 1x1 convolutions, got {conv}")
        self.widths = [block.conv.out_channels for block in self._reductions()]

    def _reductions(self) -> tuple[ConvBlock, ConvBlock, ConvBlock]:
        """The three ConvBlocks that read the module's input: branch 1, the 3x3 and 5x5 reductions."""
        return self.branch1, cast(ConvBlock, self.branch2[0]), cast(ConvBlock, self.branch3[0])

    def forward(self, x: Tensor) -> Tensor:
        # (N, C_in, H, W) -> (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W), or pooled
        if self.pool is None:
            return torch.cat(self._branches(x, activate=True), 1)
        return torch.cat([kernels.max_pool2d(b, self.pool, relu=True) for b in self._branches(x, activate=False)], 1)

    def _branches(self, x: Tensor, *, activate: bool) -> list[Tensor]:
        """The four branch outputs; without each branch's last ReLU unless ``activate``."""
        stacked = self._stacked_reductions(x, relu=activate)
        if stacked is None:  # the three layers one by one, as the plain module runs them
            b1 = self.branch1(x) if activate else _pre_activation(self.branch1, x)
            r3, r5 = self.branch2[0](x), self.branch3[0](x)
        elif activate:  # ReLU applied with the stacked BatchNorm
            b1, r3, r5 = torch.split(stacked, self.widths, 1)
        else:  # branch 1's ReLU is left to the caller; the reductions feed convolutions and need theirs now
            b1, reductions = torch.split(stacked, [self.widths[0], self.widths[1] + self.widths[2]], 1)
            r3, r5 = torch.split(F.relu(reductions), self.widths[1:], 1)
        tails = [cast(ConvBlock, branch[1]) for branch in (self.branch2, self.branch3, self.branch4)]
        inputs = (r3, r5, self.branch4[0](x))
        return [b1, *(tail(t) if activate else _pre_activation(tail, t) for tail, t in zip(tails, inputs, strict=True))]

    def _stacked_reductions(self, x: Tensor, *, relu: bool) -> Tensor | None:
        """The three reductions' pre-activations (activations if ``relu``) stacked along the channels, from one
        convolution (and one BatchNorm); None where the merge would not be exact."""
        blocks = self._reductions()
        convs = [block.conv for block in blocks]
        if self.training and _stackable_batchnorm(blocks):
            y = kernels.conv2d(x, convs[0], torch.cat([conv.weight for conv in convs]))
            return _stacked_batch_norm(y, [cast(nn.BatchNorm2d, block.bn) for block in blocks], relu=relu)
        if not self.training and all(type(b.bn) is nn.Identity and b.conv.bias is not None for b in blocks):
            bias = torch.cat([cast(Tensor, conv.bias) for conv in convs])
            y = F.conv2d(x, torch.cat([conv.weight for conv in convs]), bias)
            return F.relu(y, inplace=True) if relu else y
        return None


class FrozenMergedInception(MergedInception):
    """The inference form of MergedInception: with BatchNorm folded, the stacked 1x1 convolution is built once
    (``reduce``) instead of concatenating the three layers' weights on every call."""

    def __init__(self, module: Inception | MergedInception) -> None:
        super().__init__(module, pool=module.pool if isinstance(module, MergedInception) else None)
        convs = [block.conv for block in self._reductions()]
        if any(type(b.bn) is not nn.Identity or b.conv.bias is None for b in self._reductions()):
            raise ValueError("fold BatchNorm into the 1x1 convolutions before freezing their merge")
        self.reduce = nn.Conv2d(convs[0].in_channels, sum(self.widths), 1)
        with torch.no_grad():
            self.reduce.weight.copy_(torch.cat([conv.weight for conv in convs]))
            cast(Tensor, self.reduce.bias).copy_(torch.cat([cast(Tensor, conv.bias) for conv in convs]))

    def _stacked_reductions(self, x: Tensor, *, relu: bool) -> Tensor | None:
        y = self.reduce(x)
        return F.relu(y, inplace=True) if relu else y


def _stackable_batchnorm(blocks: tuple[ConvBlock, ...]) -> bool:
    """Bias-free convolutions each followed by plain BatchNorm2d in training mode, with running statistics,
    a momentum, affine parameters and one eps and momentum among them."""
    first = blocks[0].bn
    for block in blocks:
        bn = block.bn
        if type(bn) is not nn.BatchNorm2d or not bn.training or block.conv.bias is not None:
            return False
        if bn.momentum is None or bn.weight is None or bn.bias is None:
            return False
        if bn.running_mean is None or bn.running_var is None or bn.num_batches_tracked is None:
            return False
        if not bn.track_running_stats:  # switched off after construction: the buffers stay but must not move
            return False
        if (bn.eps, bn.momentum) != (getattr(first, "eps", None), getattr(first, "momentum", None)):
            return False
    return True


def _stacked_batch_norm(y: Tensor, norms: list[nn.BatchNorm2d], *, relu: bool) -> Tensor:
    """Training-mode BatchNorm (then ReLU if ``relu``) of the channel-stacked outputs of ``norms``' layers,
    updating each layer's running statistics and batch count as its own forward would."""
    mean = torch.cat([cast(Tensor, bn.running_mean) for bn in norms])
    var = torch.cat([cast(Tensor, bn.running_var) for bn in norms])
    weight = torch.cat([bn.weight for bn in norms])
    bias = torch.cat([bn.bias for bn in norms])
    momentum, eps = cast(float, norms[0].momentum), norms[0].eps
    if relu:
        y = kernels.batch_norm_relu(y, mean, var, weight, bias, momentum, eps)
    else:
        y = F.batch_norm(y, mean, var, weight, bias, True, momentum, eps)
    widths = [bn.num_features for bn in norms]
    with torch.no_grad():  # batch_norm updated the stacked copies in place; hand each layer its share
        for bn, m, v in zip(norms, torch.split(mean, widths), torch.split(var, widths), strict=True):
            cast(Tensor, bn.running_mean).copy_(m)
            cast(Tensor, bn.running_var).copy_(v)
            cast(Tensor, bn.num_batches_tracked).add_(1)
    return y


def optimize_for_training(model: GoogLeNet) -> GoogLeNet:
    """Swap ``model``'s modules, in place, for ones that train faster and compute the same outputs,
    gradients and BatchNorm statistics (rewrites 1 to 3 of the module docstring). Returns ``model``.
    Parameters, buffers and state-dict keys are unchanged; calling it again changes nothing."""
    for block_name, pool_name in POOLED_BLOCKS:
        block, pool = getattr(model, block_name), getattr(model, pool_name)
        if not isinstance(pool, nn.MaxPool2d):  # the small stem has no maxpool2; or swapped already
            continue
        if block_name == "conv3" and not isinstance(model.lrn2, nn.Identity):  # LRN sits between them
            continue
        if isinstance(block, ConvBlock):
            setattr(model, block_name, PooledConvBlock(block, pool))
        elif isinstance(block, Inception):
            setattr(model, block_name, MergedInception(block, pool=pool))
        else:
            continue
        setattr(model, pool_name, nn.Identity())
    for name, child in list(model.named_children()):
        if isinstance(child, Inception):
            setattr(model, name, MergedInception(child))
    for parent in list(model.modules()):  # rewrite 3: the kernels, for the blocks and pools left
        for name, child in list(parent.named_children()):
            if type(child) is ConvBlock:
                setattr(parent, name, FusedConvBlock(child))
            elif type(child) is nn.MaxPool2d:
                setattr(parent, name, CompactMaxPool2d(child))
    return model


@torch.no_grad()
def fold_batchnorm(block: ConvBlock | PooledConvBlock) -> None:
    """Fold ``block.bn`` (if it is BatchNorm) into ``block.conv`` in place, using its running statistics.
    Both must be in eval mode."""
    if isinstance(block.bn, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        block.conv = fuse_conv_bn_eval(block.conv, block.bn)
        block.bn = nn.Identity()


def optimize_for_inference(model: GoogLeNet, *, channels_last: bool = True) -> GoogLeNet:
    """A copy of ``model`` for inference: BatchNorm folded, 1x1 convolutions merged, no auxiliary heads,
    eval mode, optionally channels_last. Its outputs equal the eval-mode model's within float rounding.
    ``model`` may be plain or already passed through ``optimize_for_training``."""
    fast = copy.deepcopy(model).eval()
    fast.drop_aux()
    for module in list(fast.modules()):
        if isinstance(module, (ConvBlock, PooledConvBlock)):
            fold_batchnorm(module)
    for name, child in list(fast.named_children()):
        if isinstance(child, (Inception, MergedInception)):
            setattr(fast, name, FrozenMergedInception(child))
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    return fast
