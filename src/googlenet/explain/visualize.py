"""Feature visualisation: the image that most excites a channel or a whole layer, and DeepDream on a photo.

Activation maximisation with the regularisers of Olah et al., "Feature Visualization" (Distill 2017):

- the image is parametrised in the Fourier domain with each frequency scaled by 1/f, so gradient steps
  change low frequencies as easily as high ones and the result is not high-frequency noise;
- colours are decorrelated: the parameters are mapped through the square root of ImageNet's colour
  covariance before the sigmoid, so each parameter moves a natural colour direction (1-channel models
  need no mapping);
- every step sees the image through a random transformation (jitter, scaling, rotation), so only features
  that survive small moves are reinforced.

captum and pytorch-grad-cam attribute decisions but do not optimise inputs, and Lucid is TensorFlow-only (its
PyTorch port, lucent, has not been kept up), so this module is written here on torch's FFT and grid_sample.

The objective for one channel of a ReLU layer is the channel's value before its ReLU, as Lucid's
``*_pre_relu`` layers: a channel that is silent on the start image still has a gradient to follow.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from googlenet.explain.layers import capture, check_channel, resolve_layer
from googlenet.files import atomic_write
from googlenet.model import ConvBlock, GoogLeNet, Inception

# The square root of ImageNet's RGB covariance (rows: R, G, B), as Lucid publishes it for its decorrelated
# colour space; normalised by its largest column norm so the mapping does not amplify.
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOUR_CORRELATION = _COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0).max()


@dataclass
class Visualisation:
    """The result: the image (C, H, W) in [0, 1], and the objective before and after optimising."""

    image: Tensor
    layer: str
    channel: int | None
    start: float  # the objective on the start image (random noise, or the photo for DeepDream)
    end: float  # the objective on the final image, seen without transformations


def _pre_relu_target(model: GoogLeNet, path: str, channel: int) -> tuple[str, int]:
    """(module path, channel) whose output is ``channel`` of layer ``path`` before its ReLU: for an Inception
    module the BatchNorm (or conv) of the branch that owns the channel, for a conv block its own."""
    modules = dict(model.named_modules())
    module = modules[path]
    if isinstance(module, ConvBlock):
        return f"{path}.bn", channel
    if isinstance(module, Inception):
        ends = ("branch1", "branch2.1", "branch3.1", "branch4.1")
        widths = (module.spec.ch1x1, module.spec.ch3x3, module.spec.ch5x5, module.spec.pool_proj)
        for end, width in zip(ends, widths, strict=True):
            if channel < width:
                return f"{path}.{end}.bn", channel
            channel -= width
    if isinstance(module, nn.Sequential) and isinstance(module[-1], ConvBlock):  # a branch of a module
        return f"{path}.{len(module) - 1}.bn", channel
    return path, channel  # a pool or normalisation layer: its output as it is


class _Objective:
    """What the optimiser raises: the mean of one channel (before its ReLU), or the mean square of a layer's
    whole output (DeepDream's objective: every feature the image already has, amplified)."""

    def __init__(self, model: GoogLeNet, layer: str, channel: int | None, image_size: int) -> None:
        self.path = resolve_layer(model, layer)
        self.channel = None if channel is None else check_channel(model, self.path, channel, image_size)
        self.hook_path, self.hook_channel = (
            (self.path, 0) if self.channel is None else _pre_relu_target(model, self.path, self.channel)
        )
        self.model = model

    def per_image(self, x: Tensor) -> Tensor:
        """(N,) the objective of each image of a normalised batch."""
        with capture(self.model, [self.hook_path], copy=True) as seen:
            self.model(x)
        value = seen[self.hook_path].float()
        if value.dim() == 2:  # the classifier: a channel is a class's logit (Lucid's class objective)
            value = value[:, :, None, None]
        if self.channel is None:
            return value.square().mean(dim=(1, 2, 3))
        return value[:, self.hook_channel].mean(dim=(1, 2))

    def __call__(self, x: Tensor) -> Tensor:
        return self.per_image(x).mean()


@torch.no_grad()
def layer_response(model: GoogLeNet, layer: str, x: Tensor, *, channel: int | None = None) -> Tensor:
    """What visualize_feature maximises, for each image of a normalised batch ``x``: (N,) the mean of
    ``channel`` before its ReLU, or the mean square of the whole layer. Real images' values put a
    visualisation's in scale."""
    return _Objective(model.eval(), layer, channel, int(x.shape[-1])).per_image(x)


class FourierImage(nn.Module):
    """An image (1, C, H, W) in [0, 1] made from decorrelated, 1/f-scaled Fourier coefficients."""

    scale: Tensor

    def __init__(self, channels: int, size: int, generator: torch.Generator, decay: float = 1.0) -> None:
        super().__init__()
        fy = torch.fft.fftfreq(size).view(-1, 1)
        fx = torch.fft.rfftfreq(size).view(1, -1)
        frequency = (fx.square() + fy.square()).sqrt()
        self.register_buffer("scale", 1.0 / frequency.clamp(min=1.0 / size) ** decay)
        shape = (channels, size, size // 2 + 1, 2)
        self.spectrum = nn.Parameter(0.01 * torch.randn(shape, generator=generator))
        self.size = size
        self.channels = channels

    def forward(self) -> Tensor:
        coefficients = torch.view_as_complex(self.spectrum) * self.scale
        image = torch.fft.irfft2(coefficients, s=(self.size, self.size), norm="ortho") / 4.0  # (C, H, W)
        if self.channels == 3:
            image = torch.einsum("ij,jhw->ihw", COLOUR_CORRELATION, image)
        return torch.sigmoid(image).unsqueeze(0)


def _random_view(image: Tensor, generator: torch.Generator, size: int) -> Tensor:
    """``image`` moved by a random jitter, scaling and rotation (one affine warp, differentiable); at 224 px
    up to 8 px of jitter, 0.9-1.1x and ±10 degrees, as Lucid's defaults, and proportionally less jitter for
    small images."""
    jitter = max(1.0, 8.0 * size / 224) * 2.0 / size  # in grid units: the grid spans 2 across the image
    shift = (torch.rand(2, generator=generator) * 2 - 1) * jitter
    scale = 0.9 + 0.2 * float(torch.rand((), generator=generator))
    angle = math.radians(20.0 * float(torch.rand((), generator=generator)) - 10.0)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, float(shift[0])], [sin, cos, float(shift[1])]], dtype=image.dtype)
    grid = F.affine_grid(theta.unsqueeze(0), list(image.shape), align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@contextmanager
def _inspecting(model: GoogLeNet) -> Iterator[None]:
    """Eval mode with frozen weights (gradients flow to the image only), then the model as it was."""
    was_training, flags = model.training, [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def _normalise(image: Tensor, mean: list[float], std: list[float]) -> Tensor:
    return (image - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def visualize_feature(  # keyword-only knobs, each a `googlenet visualize` flag
    model: GoogLeNet,
    layer: str,
    *,
    channel: int | None = None,
    image_size: int,
    mean: list[float],
    std: list[float],
    steps: int = 256,
    lr: float = 0.05,
    seed: int = 0,
) -> Visualisation:
    """Optimise an image of ``image_size`` px to excite ``channel`` of ``layer`` (or the whole layer)."""
    with _inspecting(model):
        return _optimise_image(model, layer, channel, image_size, mean, std, steps, lr, seed)


def _optimise_image(  # the optimisation's knobs, each a CLI flag
    model: GoogLeNet,
    layer: str,
    channel: int | None,
    image_size: int,
    mean: list[float],
    std: list[float],
    steps: int,
    lr: float,
    seed: int,
) -> Visualisation:
    objective = _Objective(model, layer, channel, image_size)
    generator = torch.Generator().manual_seed(seed)
    picture = FourierImage(model.in_channels, image_size, generator)
    optimiser = torch.optim.Adam(picture.parameters(), lr=lr)
    with torch.no_grad():
        start = float(objective(_normalise(picture(), mean, std)))
    for _ in range(steps):
        optimiser.zero_grad(set_to_none=True)
        view = _random_view(picture(), generator, image_size)
        loss = -objective(_normalise(view, mean, std))
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    with torch.no_grad():
        image = picture()
        end = float(objective(_normalise(image, mean, std)))
    return Visualisation(image[0].detach(), objective.path, objective.channel, start, end)


def deep_dream(  # keyword-only knobs, each a `googlenet visualize` flag
    model: GoogLeNet,
    image: Tensor,
    layer: str,
    *,
    channel: int | None = None,
    mean: list[float],
    std: list[float],
    steps: int = 40,
    octaves: int = 3,
    octave_scale: float = 1.4,
    step_size: float = 0.02,
    seed: int = 0,
) -> Visualisation:
    """DeepDream (Mordvintsev et al. 2015): gradient ascent on a photo's own pixels, ``image`` (C, H, W) in
    [0, 1], amplifying what ``layer`` (or one channel) already sees; from coarse to fine over ``octaves``
    scales, with a random shift each step so the tiling does not imprint. Returns the image in [0, 1]."""
    with _inspecting(model):
        return _dream(model, image, layer, channel, mean, std, steps, octaves, octave_scale, step_size, seed)


def _dream(  # deep_dream's knobs, passed on whole
    model: GoogLeNet,
    image: Tensor,
    layer: str,
    channel: int | None,
    mean: list[float],
    std: list[float],
    steps: int,
    octaves: int,
    octave_scale: float,
    step_size: float,
    seed: int,
) -> Visualisation:
    height, width = int(image.shape[1]), int(image.shape[2])
    objective = _Objective(model, layer, channel, min(height, width))
    generator = torch.Generator().manual_seed(seed)
    smallest = max(model.min_input_size, 1)
    sizes = []
    for octave in range(octaves):
        factor = octave_scale ** (octaves - 1 - octave)
        sizes.append((max(smallest, round(height / factor)), max(smallest, round(width / factor))))
    original = image.unsqueeze(0).float()
    with torch.no_grad():
        start = float(objective(_normalise(original, mean, std)))
    detail = torch.zeros_like(F.interpolate(original, size=sizes[0], mode="bilinear", align_corners=False))
    for size in sizes:
        base = F.interpolate(original, size=size, mode="bilinear", align_corners=False)
        detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
        for _ in range(steps):
            dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
            shifted = (base + detail).roll((dy, dx), dims=(2, 3)).requires_grad_(True)
            objective(_normalise(shifted, mean, std)).backward()  # type: ignore[no-untyped-call]
            assert shifted.grad is not None
            grad = shifted.grad.roll((-dy, -dx), dims=(2, 3))
            # Normalised steps: the same amount of change per step whatever the layer's scale.
            detail = (base + detail + step_size * grad / grad.abs().mean().clamp(min=1e-12)).clamp(0, 1) - base
    result = (original + F.interpolate(detail, size=(height, width), mode="bilinear", align_corners=False)).clamp(0, 1)
    with torch.no_grad():
        end = float(objective(_normalise(result, mean, std)))
    return Visualisation(result[0], objective.path, objective.channel, start, end)


def save_png(image: Tensor, path: str | Path, min_side: int = 224) -> None:
    """Write ``image`` (C, H, W) in [0, 1] as a PNG, enlarged by a whole factor (nearest neighbour, so no
    detail is invented) until its shorter side is at least ``min_side``: a 28 px visualisation is readable."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    if array.shape[0] == 1:
        picture = Image.fromarray(array[0].numpy(), mode="L")
    else:
        picture = Image.fromarray(array.permute(1, 2, 0).contiguous().numpy(), mode="RGB")
    factor = math.ceil(min_side / min(picture.size))
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
