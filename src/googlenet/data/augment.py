"""The training augmentation on uint8 tensors: JPEG bytes decoded by libjpeg-turbo (torchvision.io), then
torchvision's v2 transforms on the decoded tensor. It draws the same crops, flips and distortions as the PIL
pipeline of image folders (googlenet.data.folders.train_transform), from the same distributions. Decoding
skips PIL's image objects, and every step before the last works on one byte per pixel. Image folders and
packed shards train through it (1.4x and 2.1x today's folder pipeline per core: docs/performance.md);
evaluation keeps the checkpoint's PIL preprocessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.functional import pil_to_tensor

from googlenet.config import DataConfig
from googlenet.data.images import open_image
from googlenet.data.preprocessing import Preprocessing


def decode(data: bytes, in_channels: int) -> Tensor:
    """JPEG bytes -> uint8 (C, H, W), grayscale or RGB as the model takes it. torchvision 0.29 deprecates its
    decoders in favour of TorchCodec's; this is the one place to switch when the pinned torchvision drops them."""
    mode = ImageReadMode.GRAY if in_channels == 1 else ImageReadMode.RGB
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)


def read_tensor(path: str | Path, in_channels: int) -> Tensor:
    """An image file -> uint8 (C, H, W): JPEGs by libjpeg-turbo, anything else (a PNG, a JPEG libjpeg-turbo
    refuses) by PIL, as ``open_image`` reads it."""
    data = Path(path).read_bytes()
    if data[:2] == b"\xff\xd8":
        try:
            return decode(data, in_channels)
        except RuntimeError:  # damaged or unusual: PIL's decoder decides, and names the file if it fails too
            pass
    return pil_to_tensor(open_image(path, in_channels))


def tensor_train_transform(cfg: DataConfig, prep: Preprocessing) -> v2.Compose:
    """cfg.augment on a uint8 (C, H, W) tensor, ending in the model's float normalisation."""
    size = prep.image_size
    if cfg.augment == "paper":
        modes = (
            InterpolationMode.BILINEAR,
            InterpolationMode.BICUBIC,
            InterpolationMode.NEAREST,
            InterpolationMode.BOX,
        )
        crops = [
            v2.RandomResizedCrop(size, (0.08, 1.0), (3 / 4, 4 / 3), interpolation=m, antialias=True) for m in modes
        ]
        steps: list[Any] = [v2.RandomChoice(crops), v2.ColorJitter(0.4, 0.4, 0.4, 0.05)]
    elif cfg.augment == "modern":
        steps = [v2.RandomResizedCrop(size, antialias=True), v2.TrivialAugmentWide()]
    else:
        steps = [v2.Resize(prep.resize, antialias=True), v2.CenterCrop(size)]
    flip = [v2.RandomHorizontalFlip()] if cfg.augment != "none" else []
    erase = [v2.RandomErasing(p=cfg.erase, value=0)] if cfg.erase > 0 else []
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)]
    return v2.Compose([*steps, *flip, *finish, *erase])
