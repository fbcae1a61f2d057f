"""torchvision's GoogLeNet weights in, checkpoints and exported models out.

torchvision's ImageNet weights (googlenet-1378be20.pth: acc@1 69.778, acc@5 89.530) were trained with
``transform_input=True``: the network re-normalises ImageNet-normalised input to mean 0.5, std 0.5 per
channel. A checkpoint made here records that as its preprocessing (resize 256, centre crop 224, mean and
std 0.5), so the model itself needs no special input path and predict / evaluate / export just work.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor

from googlenet.config import Config
from googlenet.data import Preprocessing
from googlenet.model import GoogLeNet, create_model
from googlenet.run.checkpoint import CheckpointError, save_checkpoint

TORCHVISION_WEIGHTS_FILE = "googlenet-1378be20.pth"
# transform_input=True maps ImageNet normalisation onto (x - 0.5) / 0.5 per channel: the same thing, as data.
TORCHVISION_PREPROCESSING = Preprocessing(image_size=224, resize=256, in_channels=3, mean=[0.5] * 3, std=[0.5] * 3)


def hub_cache_weights() -> Path | None:
    """torchvision's weights file in torch's hub cache, if a download ever put it there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS_FILE
    return path if path.is_file() else None


def imagenet_class_names() -> list[str]:
    return list(torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"])


def _load_state_dict(source: str | Path | Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source) if source is not None else hub_cache_weights()
    if path is None:
        raise CheckpointError(
            f"no weights given and {TORCHVISION_WEIGHTS_FILE} is not in torch's hub cache "
            f"({Path(torch.hub.get_dir()) / 'checkpoints'}); pass the file's path"
        )
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # every reason a file is not a state dict ends in the same advice
        raise CheckpointError(
            f"{path} is not a readable torchvision state dict: {str(error).splitlines()[0]}"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict (a mapping of names to tensors)")
    return dict(state)


def from_torchvision(
    source: str | Path | Mapping[str, Tensor] | None = None,
) -> tuple[GoogLeNet, Preprocessing, list[str]]:
    """A state dict of torchvision.models.googlenet (a path, the mapping itself, or None for the hub cache)
    -> (our ``torchvision`` variant with those weights in eval mode, its preprocessing, class names)."""
    state = _load_state_dict(source)
    if "fc.weight" not in state:
        raise CheckpointError("the state dict has no fc.weight: it is not torchvision's googlenet")
    num_classes = int(state["fc.weight"].shape[0])
    model = create_model("torchvision", num_classes=num_classes, aux=any(k.startswith("aux1.") for k in state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"the state dict does not fit torchvision's googlenet: {str(error).splitlines()[0]}"
        ) from None
    names = imagenet_class_names() if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]
    return model.eval(), TORCHVISION_PREPROCESSING, names


def import_torchvision(source: str | Path | Mapping[str, Tensor] | None, out: str | Path) -> Path:
    """Write a googlenet checkpoint holding torchvision's weights, preprocessing and class names."""
    model, prep, names = from_torchvision(source)
    config = Config()
    config.data.dataset, config.data.image_size = "folder", prep.image_size
    config.model.name, config.model.aux = "torchvision", model.has_aux
    save_checkpoint(
        out,
        {
            "model": {"name": "torchvision", "num_classes": model.num_classes, "in_channels": 3},
            "state_dict": model.state_dict(),
            "ema_state_dict": None,
            "weights": "model",
            "preprocessing": prep.to_dict(),
            "class_names": names,
            "config": config.to_dict(),
            "source": str(source) if not isinstance(source, Mapping) else "state dict",
        },
    )
    return Path(out)


def payload_for_model(model: GoogLeNet, prep: Preprocessing, class_names: list[str]) -> dict[str, Any]:
    """The checkpoint fields that describe a model (used by exports' metadata)."""
    return {
        "variant": model.variant,
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
        "class_names": class_names,
        "preprocessing": prep.to_dict(),
    }
