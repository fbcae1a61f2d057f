"""Class activation maps: the exact CAM of Zhou et al. (2016) and Grad-CAM at any layer, through captum.

GoogLeNet ends in a global average pool and one linear layer, so its logit for class c is

    logit_c = mean over positions (i, j) of  sum_k w_ck F_k(i, j)  +  b_c

where F is the last feature map (inception5b's output) and w the fc weights. The map inside the mean,
CAM_c(i, j) = sum_k w_ck F_k(i, j), is therefore exact: it says how much each position adds to the logit.
That is why CAMs were introduced on this network. At any other layer there is no such identity, and
Grad-CAM (Selvaraju et al. 2017) weights the layer's channels by their mean gradient instead; at
inception5b it reduces to ReLU(CAM) / (h * w).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from googlenet.explain.layers import get_layer, layer_shape
from googlenet.extras import require
from googlenet.model import GoogLeNet

GRAD_CAM_METHODS = ("gradcam", "gradxact")
# Where Grad-CAM is drawn beside the exact CAM: a layer before the last pooling, so its map has 4x the exact
# CAM's cells (4x4 where inception5b's is 2x2 at 64 px, 14x14 against 7x7 at 224), deep enough to be about the
# class rather than edges.
FINER_LAYER = "inception4c"


@dataclass
class TopK:
    """The k most likely classes of each image."""

    classes: Tensor  # (N, k) class indices, most likely first
    probabilities: Tensor  # (N, k) softmax probabilities


@torch.no_grad()
def top_k(model: GoogLeNet, x: Tensor, k: int) -> TopK:
    probabilities = model(x).float().softmax(1)
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return TopK(indices, values)


@torch.no_grad()
def class_activation_maps(model: GoogLeNet, x: Tensor, classes: Tensor) -> Tensor:
    """The exact CAM of each image for each of its ``classes`` (N, k): (N, k, h, w) at the last feature map's
    resolution, in logit units (their mean plus the fc bias is the class's logit)."""
    features = model.forward_features(x)  # (N, 1024, h, w)
    weights = model.fc.weight[classes]  # (N, k, 1024)
    return torch.einsum("nkc,nchw->nkhw", weights.to(features.dtype), features)


def grad_cam(model: GoogLeNet, x: Tensor, layer: str, classes: Tensor, method: str = "gradcam") -> Tensor:
    """Grad-CAM-family maps at ``layer`` (any spelling, see explain.layers) for each image's ``classes``
    (N, k): (N, k, h, w) at that layer's resolution.

    ``gradcam``: captum's LayerGradCam, channels weighted by their mean gradient, then ReLU (Grad-CAM).
    ``gradxact``: captum's LayerGradientXActivation summed over channels, then ReLU: each position's own
    gradient times activation, which keeps detail that Grad-CAM's per-channel averaging blurs (LayerCAM's idea).
    """
    if method not in GRAD_CAM_METHODS:
        raise ValueError(f"method must be one of {', '.join(GRAD_CAM_METHODS)}; got {method!r}")
    attr = require("captum.attr", "explain", "Grad-CAM maps")
    module = get_layer(model, layer)
    maps = []
    for column in range(classes.shape[1]):
        target = classes[:, column].tolist()
        if method == "gradcam":
            result = attr.LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
        else:
            products = attr.LayerGradientXActivation(model, module).attribute(x, target=target)
            result = products.sum(1, keepdim=True).clamp(min=0)
        maps.append(result.detach().float()[:, 0])
    return torch.stack(maps, 1)


def cells(maps: Tensor) -> str:
    """'HxW cells': the resolution a map was computed at, which drawing it upsampled hides."""
    return f"{maps.shape[-2]}x{maps.shape[-1]} cells"


def cam_cells(model: GoogLeNet, image_size: int) -> str:
    """The exact CAM's resolution for ``image_size``-px inputs: inception5b's map (2x2 at 64 px, 7x7 at 224)."""
    _, height, width = layer_shape(model, "inception5b", image_size)
    return f"{height}x{width}"


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, k, h, w) maps -> (N, k, H, W) by bilinear interpolation, as CAM overlays are drawn."""
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)


def normalise(maps: Tensor) -> Tensor:
    """Each map scaled to [0, 1] (its minimum to 0, its maximum to 1) for drawing; flat maps become 0."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low).clamp(min=1e-12)
