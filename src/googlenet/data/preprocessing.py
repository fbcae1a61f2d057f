"""How an image becomes a model input, recorded in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor
from torchvision import transforms

from googlenet.data.images import open_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocessing:
    """How an image becomes a model input: kept in every checkpoint so predict/evaluate need nothing else."""

    image_size: int  # the square crop the model sees
    resize: int  # shorter side before the centre crop at evaluation
    in_channels: int  # 1: grayscale, 3: RGB
    mean: list[float]
    std: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(table["image_size"]),
            resize=int(table["resize"]),
            in_channels=int(table["in_channels"]),
            mean=[float(v) for v in table["mean"]],
            std=[float(v) for v in table["std"]],
        )

    def eval_transform(self) -> transforms.Compose:
        return transforms.Compose(
            [
                transforms.Resize(self.resize),
                transforms.CenterCrop(self.image_size),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def load_image(self, path: str | Path) -> Tensor:
        """One image file -> a normalised (C, H, W) tensor, converted to the model's channel count."""
        tensor: Tensor = self.eval_transform()(open_image(path, self.in_channels))
        return tensor
