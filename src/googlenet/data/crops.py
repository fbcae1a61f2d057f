"""Multi-crop testing as the paper (section 7): 1, 10 or 144 crops per image, softmax averaged.

144 crops: the shorter side resized to 256, 288, 320 and 352; from each, the left, centre and right
squares (top, centre and bottom for portrait images); from each square the four corner and the centre
224 crops plus the whole square resized to 224; each of those also mirrored: 4 x 3 x 6 x 2 = 144.
10 crops: shorter side 256, the four corners and the centre 224, each mirrored (torchvision's TenCrop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

PAPER_SCALES = (256, 288, 320, 352)
CROP_COUNTS = (1, 10, 144)


@dataclass(frozen=True)
class Crop:
    """One view of an image: resize its shorter side to ``scale``, cut ``box`` = (left, top, width, height)
    from the resized image, resize that to the model's input size, mirror it if ``mirrored``."""

    scale: int
    box: tuple[int, int, int, int]
    mirrored: bool


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``shorter``, keeping the aspect ratio."""
    if width <= height:
        return shorter, max(shorter, round(height * shorter / width))
    return max(shorter, round(width * shorter / height)), shorter


def _five(left: int, top: int, side: int, crop: int) -> list[tuple[int, int, int, int]]:
    """The four corner and the centre ``crop`` squares of a ``side`` square at (left, top)."""
    far = side - crop
    corners = [(0, 0), (far, 0), (0, far), (far, far), (far // 2, far // 2)]
    return [(left + x, top + y, crop, crop) for x, y in corners]


def crop_plan(width: int, height: int, crops: int, size: int = 224) -> list[Crop]:
    """The views of one ``width`` x ``height`` image for 1, 10 or 144-crop testing at input ``size``
    (the scales are the paper's for 224 and scale with ``size`` otherwise)."""
    if crops not in CROP_COUNTS:
        raise ValueError(f"crops must be one of {CROP_COUNTS}, got {crops}")
    factor = size / 224
    if crops in (1, 10):
        scale = round(256 * factor)
        w, h = resized_size(width, height, scale)
        centre = ((w - size) // 2, (h - size) // 2, size, size)
        if crops == 1:
            return [Crop(scale, centre, False)]
        corners = [
            (0, 0, size, size),
            (w - size, 0, size, size),
            (0, h - size, size, size),
            (w - size, h - size, size, size),
        ]
        boxes = [*corners, centre]
        return [Crop(scale, b, m) for m in (False, True) for b in boxes]
    plan = []
    for base in PAPER_SCALES:
        scale = round(base * factor)
        w, h = resized_size(width, height, scale)
        long_side = max(w, h)
        for offset in (0, (long_side - scale) // 2, long_side - scale):
            left, top = (offset, 0) if w >= h else (0, offset)
            boxes = [*_five(left, top, scale, size), (left, top, scale, scale)]
            plan += [Crop(scale, b, m) for m in (False, True) for b in boxes]
    return plan


def render(image: Tensor, plan: list[Crop], size: int) -> Tensor:
    """A (C, H, W) float image -> (len(plan), C, size, size): every view of the plan, batched."""
    views = []
    resized: dict[int, Tensor] = {}
    _, height, width = image.shape
    for crop in plan:
        if crop.scale not in resized:
            w, h = resized_size(width, height, crop.scale)
            resized[crop.scale] = F.interpolate(
                image.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False, antialias=True
            )[0]
        left, top, cw, ch = crop.box
        view = resized[crop.scale][:, top : top + ch, left : left + cw]
        if (cw, ch) != (size, size):  # the whole square, resized to the input size
            view = F.interpolate(view.unsqueeze(0), size=(size, size), mode="bilinear", antialias=True)[0]
        views.append(view.flip(2) if crop.mirrored else view)
    return torch.stack(views)
