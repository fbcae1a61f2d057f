"""Branch shares: how much of each Inception module's output comes from its 1x1, 3x3, 5x5 and pool branches.

A module's output is the concatenation of its four branches along channels (Table 1's columns #1x1, #3x3,
#5x5, pool proj), so every output channel belongs to exactly one branch. Two measures, per image:

- energy: the branch's share of the sum of squared activations (what the module passes on);
- attribution: the branch's share of sum |gradient x activation| for the predicted class's logit (what the
  decision leans on). Gradient x activation is the first-order estimate of how much the logit would change
  if the channel were switched off; its absolute value keeps the share non-negative.

Both sum to 1 over the four branches. The branch's share of the module's channels is the reference: a branch
whose share of energy or attribution exceeds its share of channels carries more than its width suggests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from googlenet.explain.layers import BRANCHES, MODULE_KEYS, branch_widths, capture, inception_modules
from googlenet.model import GoogLeNet


@dataclass
class BranchShares:
    """Per image and module, the share of each branch (axis 2: 1x1, 3x3, 5x5, pool)."""

    energy: Tensor  # (N, 9, 4)
    attribution: Tensor  # (N, 9, 4)
    predicted: Tensor  # (N,) the class whose logit the attribution explains
    channels: Tensor  # (9, 4): each branch's share of the module's output channels
    modules: tuple[str, ...] = field(default=MODULE_KEYS)
    branches: tuple[str, ...] = field(default=BRANCHES)


def channel_shares(model: GoogLeNet) -> Tensor:
    widths = torch.tensor([branch_widths(m) for _, m in inception_modules(model)], dtype=torch.float64)
    return widths / widths.sum(1, keepdim=True)


def _per_branch(values: Tensor, widths: tuple[int, int, int, int]) -> Tensor:
    """(N, C, h, w) non-negative values -> (N, 4) sums over each branch's channels."""
    return torch.stack([part.sum(dim=(1, 2, 3)) for part in torch.split(values, list(widths), dim=1)], 1)


def _shares(sums: Tensor, fallback: Tensor) -> Tensor:
    """Rows of non-negative sums -> rows of shares summing to 1; a row with nothing in it (a module silenced
    for this image) falls back to the channel shares rather than dividing by zero."""
    total = sums.sum(1, keepdim=True)
    return torch.where(total > 0, sums / total.clamp(min=torch.finfo(sums.dtype).tiny), fallback)


def branch_shares(model: GoogLeNet, x: Tensor, target: Tensor | None = None) -> BranchShares:
    """Branch shares of every Inception module for a batch; ``target`` (N,) picks the class whose logit the
    attribution explains (default: each image's predicted class). The model must be in eval mode, so the
    images do not affect each other through BatchNorm."""
    if model.training:
        raise ValueError("branch shares need the model in eval mode (model.eval())")
    modules = inception_modules(model)
    paths = [f"inception{key}" for key, _ in modules]
    with torch.enable_grad(), capture(model, paths, keep_grad=True) as outputs:
        x = x.detach().requires_grad_(True)  # so every module output is part of the graph
        logits = model(x)
        if target is None:
            target = logits.argmax(1)
        logits.gather(1, target.view(-1, 1)).sum().backward()
    reference = channel_shares(model)
    energy: list[Tensor] = []
    attribution: list[Tensor] = []
    for (key, module), path in zip(modules, paths, strict=True):
        out = outputs[path].detach().double()
        grad = outputs[path].grad
        if grad is None:
            raise RuntimeError(f"no gradient reached inception{key}")
        widths = branch_widths(module)
        fallback = reference[len(energy)].expand(out.shape[0], -1)
        energy.append(_shares(_per_branch(out.square(), widths), fallback))
        attribution.append(_shares(_per_branch((grad.double() * out).abs(), widths), fallback))
    return BranchShares(
        energy=torch.stack(energy, 1).float(),
        attribution=torch.stack(attribution, 1).float(),
        predicted=target.detach(),
        channels=reference.float(),
    )


@dataclass
class ClassShares:
    """Branch shares averaged over the images of each class of a split."""

    class_names: list[str]
    counts: Tensor  # (classes,) images per class
    energy: Tensor  # (classes, 9, 4)
    attribution: Tensor  # (classes, 9, 4)
    channels: Tensor  # (9, 4)

    def overall(self) -> tuple[Tensor, Tensor]:
        """(energy, attribution) averaged over all images: (9, 4) each."""
        weights = (self.counts / self.counts.sum().clamp(min=1)).view(-1, 1, 1)
        return (self.energy * weights).sum(0), (self.attribution * weights).sum(0)

    def as_dict(self) -> dict[str, object]:
        def table(values: Tensor) -> dict[str, dict[str, float]]:
            return {
                f"inception{m}": {b: round(float(v), 6) for b, v in zip(BRANCHES, row, strict=True)}
                for m, row in zip(MODULE_KEYS, values, strict=True)
            }

        energy, attribution = self.overall()
        return {
            "channels": table(self.channels),
            "overall": {"energy": table(energy), "attribution": table(attribution)},
            "per_class": {
                name: {"images": int(n), "energy": table(e), "attribution": table(a)}
                for name, n, e, a in zip(self.class_names, self.counts, self.energy, self.attribution, strict=True)
                if n > 0
            },
        }


class ClassShareAccumulator:
    """Sums per-image branch shares by true class over the batches of a split."""

    def __init__(self, model: GoogLeNet, class_names: list[str]) -> None:
        n = len(class_names)
        self.class_names = class_names
        self.channels = channel_shares(model).float()
        self.counts = torch.zeros(n)
        self.energy = torch.zeros(n, len(MODULE_KEYS), len(BRANCHES))
        self.attribution = torch.zeros_like(self.energy)

    def add(self, shares: BranchShares, labels: Tensor) -> None:
        self.counts.index_add_(0, labels, torch.ones(len(labels)))
        self.energy.index_add_(0, labels, shares.energy)
        self.attribution.index_add_(0, labels, shares.attribution)

    def result(self) -> ClassShares:
        divisor = self.counts.clamp(min=1).view(-1, 1, 1)
        return ClassShares(
            self.class_names, self.counts.clone(), self.energy / divisor, self.attribution / divisor, self.channels
        )
