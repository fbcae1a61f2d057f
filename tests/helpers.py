"""Builders shared by several test files."""

from pathlib import Path

import torch
from PIL import Image

from googlenet.config import Config
from googlenet.model import create_model
from googlenet.run.checkpoint import save_checkpoint


def make_checkpoint(path: Path, **changes: object) -> Path:
    """A valid checkpoint of the small variant (untrained), with optional damage."""
    model = create_model("small", num_classes=10, in_channels=1, aux=False)
    payload: dict[str, object] = {
        "model": {"name": "small", "num_classes": 10, "in_channels": 1},
        "state_dict": model.state_dict(),
        "ema_state_dict": None,
        "weights": "model",
        "preprocessing": {"image_size": 28, "resize": 28, "in_channels": 1, "mean": [0.29], "std": [0.35]},
        "class_names": [f"class{i}" for i in range(10)],
        "config": Config().to_dict(),
    }
    payload.update(changes)
    save_checkpoint(path, payload)
    return path


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_folder(root: Path, per_class: int = 8) -> Path:
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", per_class), ("val", 3)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                noise = torch.randint(-30, 30, (40, 48, 3), generator=g)
                pixels = (torch.tensor(colour).view(1, 1, 3) + noise).clamp(0, 255).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root
