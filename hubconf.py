"""torch.hub entry points.

    torch.hub.load("path/to/googlenet", "googlenet", "paper", source="local")      # variant positionally
    torch.hub.load("path/to/googlenet", "googlenet_paper", source="local", num_classes=10)

The variant cannot be passed as ``model=...``: torch.hub.load's own second parameter is called ``model``.
"""

import sys
from pathlib import Path
from typing import Any

# torch.hub puts this folder on sys.path; the package itself lives under src/.
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from googlenet.deploy.interop import from_torchvision
from googlenet.model import GoogLeNet, create_model

dependencies = ["torch", "torchvision"]


def googlenet(
    variant: str = "paper",
    *,
    num_classes: int = 1000,
    in_channels: int | None = None,
    aux: bool = True,
    pretrained: bool = False,
    weights: str | None = None,
) -> GoogLeNet:
    """A GoogLeNet variant ('paper', 'torchvision', 'bn', 'small'). ``pretrained=True`` (torchvision variant
    only) loads torchvision's ImageNet weights from ``weights`` or torch's hub cache; nothing is downloaded."""
    if pretrained:
        if variant != "torchvision":
            raise ValueError("pretrained weights exist only for the 'torchvision' variant")
        net, _, _ = from_torchvision(weights)
        return net
    return create_model(variant, num_classes=num_classes, in_channels=in_channels, aux=aux)


def googlenet_paper(**kwargs: Any) -> GoogLeNet:
    """The paper's network."""
    return googlenet("paper", **kwargs)


def googlenet_torchvision(**kwargs: Any) -> GoogLeNet:
    """torchvision's topology (and, with pretrained=True, its ImageNet weights from a local file)."""
    return googlenet("torchvision", **kwargs)


def googlenet_bn(**kwargs: Any) -> GoogLeNet:
    """The paper's topology with BatchNorm."""
    return googlenet("bn", **kwargs)


def googlenet_small(**kwargs: Any) -> GoogLeNet:
    """For small images (1-channel 28-96 px, 32 px)."""
    return googlenet("small", **kwargs)
