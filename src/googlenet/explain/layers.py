"""Layer names in the three spellings people bring from GoogLeNet's three homes, and hooks to read layers.

- ours and torchvision's module paths: ``inception4c``, ``conv2``, ``inception4c.branch2``;
- Caffe's bvlc_googlenet blob names: ``inception_4c/output``, ``conv2/3x3``, ``inception_4c/5x5_reduce``;
- Lucid's InceptionV1 names (the feature-visualisation and circuits papers): ``mixed4c``, ``conv2d2``,
  ``mixed4c_3x3_bottleneck``, and ``..._pre_relu`` for a convolution's value before its ReLU.

Every spelling resolves to one module path of :class:`googlenet.model.GoogLeNet`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from googlenet.errors import GoogLeNetError
from googlenet.model import ConvBlock, GoogLeNet, Inception

MODULE_KEYS = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
INCEPTION_LAYERS = tuple(f"inception{key}" for key in MODULE_KEYS)
# The branch order inside every Inception module's concatenation (torch.cat in Inception.forward).
BRANCHES = ("1x1", "3x3", "5x5", "pool")


class LayerError(GoogLeNetError, ValueError):
    """A layer name, or a channel of a layer, that the model does not have."""


# Caffe's blob names for the stem (bvlc_googlenet's train_val.prototxt).
_CAFFE_STEM = {
    "conv1/7x7_s2": "conv1",
    "pool1/3x3_s2": "maxpool1",
    "pool1/norm1": "lrn1",
    "conv2/3x3_reduce": "conv2",
    "conv2/3x3": "conv3",
    "conv2/norm2": "lrn2",
    "pool2/3x3_s2": "maxpool2",
    "pool3/3x3_s2": "maxpool3",
    "pool4/3x3_s2": "maxpool4",
    "pool5/7x7_s1": "avgpool",
}
# Caffe's and Lucid's names for the parts of one Inception module, relative to the module.
_CAFFE_PARTS = {
    "output": "",
    "1x1": ".branch1",
    "3x3_reduce": ".branch2.0",
    "3x3": ".branch2",
    "5x5_reduce": ".branch3.0",
    "5x5": ".branch3",
    "pool": ".branch4.0",
    "pool_proj": ".branch4",
}
_LUCID_STEM = {"conv2d0": "conv1", "conv2d1": "conv2", "conv2d2": "conv3"}
_LUCID_PARTS = {
    "": "",
    "_1x1": ".branch1",
    "_3x3_bottleneck": ".branch2.0",
    "_3x3": ".branch2.1",
    "_5x5_bottleneck": ".branch3.0",
    "_5x5": ".branch3.1",
    "_pool_reduce": ".branch4.1",
}


def _alias(name: str) -> str:
    """A Caffe or Lucid spelling -> our module path; anything else unchanged (lower-cased)."""
    name = name.strip().lower()
    if name in _CAFFE_STEM:
        return _CAFFE_STEM[name]
    if re.fullmatch(r"[345][a-e]", name):  # the bare key, as Table 1 and the paper's text write it
        return f"inception{name}"
    caffe = re.fullmatch(r"inception_([345][a-e])/(\w+)", name)
    if caffe and caffe.group(2) in _CAFFE_PARTS:
        return f"inception{caffe.group(1)}{_CAFFE_PARTS[caffe.group(2)]}"
    pre_relu = name.endswith("_pre_relu")
    base = name.removesuffix("_pre_relu")
    lucid = re.fullmatch(r"mixed([345][a-e])(\w*)", base)
    path = None
    if base in _LUCID_STEM:
        path = _LUCID_STEM[base]
    elif lucid and lucid.group(2) in _LUCID_PARTS:
        path = f"inception{lucid.group(1)}{_LUCID_PARTS[lucid.group(2)]}"
    if path is None:
        return name
    # Lucid's "_pre_relu" is a convolution's value before its ReLU: the BatchNorm output (the conv output in
    # the variants without BatchNorm, where the block's bn is an identity that passes it through).
    return f"{path}.bn" if pre_relu else path


def resolve_layer(model: nn.Module, name: str) -> str:
    """The module path of layer ``name`` (any of the three spellings) in ``model``; LayerError if none."""
    path = _alias(name)
    modules = dict(model.named_modules())
    if name.strip().lower().endswith("_pre_relu"):
        owner = modules.get(path.removesuffix(".bn"))
        if owner is not None and not isinstance(owner, ConvBlock):
            raise LayerError(f"layer {name!r} has no single value before a ReLU: add _pre_relu to a convolution's name")
    if path and path in modules:
        return path
    raise LayerError(
        f"unknown layer {name!r}; valid: conv1, conv2, conv3, {INCEPTION_LAYERS[0]}..{INCEPTION_LAYERS[-1]} "
        "(also Caffe's inception_4c/output or Lucid's mixed4c; a branch as inception4c.branch2), fc (the class logits)"
    )


def get_layer(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[resolve_layer(model, name)]


def inception_modules(model: GoogLeNet) -> list[tuple[str, Inception]]:
    """(key, module) for 3a..5b, in the order the network runs them."""
    return [(key, getattr(model, f"inception{key}")) for key in MODULE_KEYS]


def branch_widths(module: Inception) -> tuple[int, int, int, int]:
    """Output channels of the 1x1, 3x3, 5x5 and pool branches: the slices of the module's output."""
    spec = module.spec
    return spec.ch1x1, spec.ch3x3, spec.ch5x5, spec.pool_proj


@contextmanager
def capture(
    model: nn.Module, paths: list[str], *, keep_grad: bool = False, copy: bool = False
) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of the modules at ``paths`` during the forward passes inside the block; with
    ``keep_grad`` their ``.grad`` is filled by a later backward pass. ``copy`` records a copy (still in the
    autograd graph): needed for a BatchNorm output, which the ReLU after it overwrites in place."""
    modules = dict(model.named_modules())
    seen: dict[str, Tensor] = {}

    def hook_for(path: str):  # type: ignore[no-untyped-def]
        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            if copy:
                output = output.clone()
            if keep_grad and output.requires_grad:
                output.retain_grad()
            seen[path] = output

        return hook

    handles = [modules[path].register_forward_hook(hook_for(path)) for path in paths]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def layer_shape(model: GoogLeNet, path: str, image_size: int) -> tuple[int, int, int]:
    """(channels, height, width) of the module at ``path`` for a square input of ``image_size`` px."""
    probe = torch.zeros(1, model.in_channels, image_size, image_size, dtype=next(model.parameters()).dtype)
    with capture(model, [path]) as seen:
        model(probe)
    if path not in seen:
        raise LayerError(f"layer {path!r} does not run in the forward pass (the auxiliary heads run only in training)")
    shape = seen[path].shape
    if len(shape) == 2:  # the classifier (fc): one value per class, a 1x1 "map"
        return int(shape[1]), 1, 1
    return int(shape[1]), int(shape[2]), int(shape[3])


def check_channel(model: GoogLeNet, path: str, channel: int, image_size: int) -> int:
    """``channel`` if layer ``path`` has it; LayerError naming the valid range otherwise."""
    channels = layer_shape(model, path, image_size)[0]
    if not 0 <= channel < channels:
        raise LayerError(f"layer {path} has channels 0..{channels - 1}; got channel {channel}")
    return channel
