"""Looking inside GoogLeNet: class activation maps, branch shares, early exits and feature visualisation.

- :func:`class_activation_maps` (exact, from the final average pool and fc) and :func:`grad_cam` (any layer,
  through captum: the [explain] extra);
- :func:`branch_shares`: how much of each Inception module's output its 1x1, 3x3, 5x5 and pool branches carry;
- :func:`head_accuracy`: the auxiliary heads' top-1 beside the main head's (early exits);
- :func:`visualize_feature` and :func:`deep_dream`: activation maximisation with Fourier parametrisation,
  decorrelated colour and transformation robustness;
- :func:`explain_images` and :func:`explain_split`: all of it for a checkpoint, written to a folder.

Layer names are accepted as ours/torchvision's (``inception4c``), Caffe's (``inception_4c/output``) or
Lucid's (``mixed4c``): see :mod:`googlenet.explain.layers`.
"""

from googlenet.explain.branches import BranchShares, ClassShares, branch_shares
from googlenet.explain.cam import class_activation_maps, grad_cam, top_k
from googlenet.explain.early_exits import HeadAccuracy, head_accuracy
from googlenet.explain.layers import LayerError, resolve_layer
from googlenet.explain.run import explain_images, explain_split
from googlenet.explain.visualize import Visualisation, deep_dream, layer_response, visualize_feature

__all__ = [
    "BranchShares",
    "ClassShares",
    "HeadAccuracy",
    "LayerError",
    "Visualisation",
    "branch_shares",
    "class_activation_maps",
    "deep_dream",
    "explain_images",
    "explain_split",
    "grad_cam",
    "head_accuracy",
    "layer_response",
    "resolve_layer",
    "top_k",
    "visualize_feature",
]
