"""Progressive resizing: train on smaller images early in the run and on the full size at its end.

A step on smaller images costs less, so more passes over the data fit in a budget; the network ends on the
size it is tested at. With ``data.start_size`` set, the training images grow from that size to
``data.image_size`` in steps of ``SIZE_STEP`` pixels, reaching the full size when the learning-rate decay is
``data.grow_until`` of the way through (the warm-up counts as the start). The size is a function of the
same progress as the learning rate, so a re-planned or resumed run stays exact, and every process of a
torchrun job agrees on it. Validation and testing always use ``data.image_size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from googlenet.config import DataConfig

# Sizes move in steps of this many pixels: few distinct shapes (each one measured for a budget, each one an
# allocation pattern), and a multiple of the stem's stride of 8 where the sizes allow.
SIZE_STEP = 8


def training_sizes(cfg: DataConfig) -> list[int]:
    """Every size the training images take, smallest first; just ``[image_size]`` without resizing."""
    if not cfg.start_size or cfg.start_size >= cfg.image_size:
        return [cfg.image_size]
    return [*range(cfg.start_size, cfg.image_size, SIZE_STEP), cfg.image_size]


def size_at(progress: float, cfg: DataConfig) -> int:
    """The training image size at ``progress`` (0 to 1) of the learning-rate decay."""
    sizes = training_sizes(cfg)
    if progress >= cfg.grow_until or len(sizes) == 1:
        return cfg.image_size
    # The smaller sizes share [0, grow_until) equally.
    phase = math.floor(progress / cfg.grow_until * (len(sizes) - 1))
    return sizes[min(phase, len(sizes) - 2)]


def resize_batch(x: Tensor, size: int) -> Tensor:
    """A batch of (B, C, H, W) images resized to ``size`` x ``size`` (antialiased when shrinking); unchanged
    when it has that size already. Resizing normalised pixels equals normalising resized ones: bilinear
    weights sum to one."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def step_cost(
    first_step: int, size_for: Callable[[int, int], int], relative_cost: dict[int, float]
) -> Callable[[int], float]:
    """For a budget: the cost of steps ``first_step`` to a candidate total, counted in full-size steps.
    ``size_for(step, total)`` gives the size of a step when the run is ``total`` steps long, and
    ``relative_cost`` each size's measured step time as a share of the full size's."""

    def cost(total: int) -> float:
        return sum(relative_cost.get(size_for(step, total), 1.0) for step in range(first_step, total))

    return cost
