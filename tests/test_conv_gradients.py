"""googlenet.kernels.conv2d: convolution gradients as matrix products, against ATen's in float64, in bfloat16
under autocast, inside the swapped model, and left to ATen wherever it does not apply."""

import copy

import pytest
import torch
from torch import nn

from googlenet import create_model, kernels
from googlenet.kernels import conv
from googlenet.speedups import optimize_for_training
from test_speedups import assert_same, randomise_batchnorm, tiny_input


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def layer(in_channels: int, out_channels: int, k: int, **options: object) -> nn.Conv2d:
    conv2d = nn.Conv2d(in_channels, out_channels, k, padding=k // 2, bias=False, **options)  # type: ignore[arg-type]
    return conv2d.double().to(memory_format=torch.channels_last)


def gradients(output: torch.Tensor, inputs: tuple[torch.Tensor, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=output.dtype)
    return torch.autograd.grad(output, inputs, grad)


# (batch, in, out, kernel, H, W, a channel slice as input): GoogLeNet's 1x1 reductions at 4x4 and 2x2, its 3x3
# and 5x5 branches at 4x4 and 2x2, a non-square map, and the slice of the stacked reductions a branch reads.
CASES = [
    (4, 12, 7, 1, 2, 2, False),
    (3, 10, 6, 3, 4, 4, False),
    (3, 10, 6, 5, 2, 2, False),
    (2, 8, 5, 3, 4, 4, True),
    (2, 8, 4, 1, 5, 3, True),
    (2, 6, 3, 1, 9, 9, False),  # a 1x1 convolution on any map
]


@pytest.mark.parametrize(("n", "c", "o", "k", "h", "w", "sliced"), CASES)
def test_gradients_equal_atens_in_float64(n: int, c: int, o: int, k: int, h: int, w: int, sliced: bool) -> None:
    torch.manual_seed(0)
    wide = channels_last(torch.randn(n, c + 4 if sliced else c, h, w, dtype=torch.float64))
    x = (wide[:, 2 : 2 + c] if sliced else wide).detach().requires_grad_()
    fast = layer(c, o, k)
    plain = copy.deepcopy(fast)
    y = kernels.conv2d(x, fast)
    assert type(y.grad_fn).__name__.startswith("_Conv2dMatmulBackward")  # the matrix-product path ran
    x_ref = x.detach().requires_grad_()
    y_ref = plain(x_ref)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)  # the forward pass is oneDNN's own
    (dx, dw), want = gradients(y, (x, fast.weight)), gradients(y_ref, (x_ref, plain.weight))
    torch.testing.assert_close(dx, want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dw, want[1], rtol=1e-12, atol=1e-12)
    assert dw.is_contiguous(memory_format=torch.channels_last)  # the weight's own layout: no copy to accumulate


def test_under_bf16_autocast_it_computes_what_autocast_would() -> None:
    torch.manual_seed(0)
    x = channels_last(torch.randn(8, 16, 4, 4)).requires_grad_()
    fast = nn.Conv2d(16, 24, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    plain = copy.deepcopy(fast)
    x_ref = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = kernels.conv2d(x, fast), plain(x_ref)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    (dx, dw), (rx, rw) = gradients(y.float(), (x, fast.weight)), gradients(y_ref.float(), (x_ref, plain.weight))
    assert dx.dtype == dw.dtype == torch.float32  # back through autocast's casts to the float32 originals
    torch.testing.assert_close(dx, rx, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(dw, rw, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize(
    ("build", "h"),
    [
        (lambda: layer(4, 4, 3, stride=2), 4),  # strided
        (lambda: layer(4, 4, 3), 8),  # a kxk kernel on a map larger than PATCH_PIXELS: oneDNN is faster there
        (lambda: layer(4, 4, 3, dilation=2), 4),
        (lambda: layer(4, 4, 1, groups=2), 4),
        (lambda: nn.Conv2d(4, 4, 1).double().to(memory_format=torch.channels_last), 4),  # with a bias
    ],
)
def test_what_it_does_not_cover_is_left_to_aten(build, h: int) -> None:  # type: ignore[no-untyped-def]
    conv2d = build()
    x = channels_last(torch.randn(2, 4, h, h, dtype=torch.float64)).requires_grad_()
    y = kernels.conv2d(x, conv2d)
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0"
    torch.testing.assert_close(y, conv2d(x))


def test_without_a_gradient_to_record_and_inside_use_aten_it_is_atens() -> None:
    conv2d = layer(4, 6, 1)
    x = channels_last(torch.randn(2, 4, 2, 2, dtype=torch.float64)).requires_grad_()
    with torch.no_grad():
        assert kernels.conv2d(x, conv2d).grad_fn is None
    with kernels.use_aten():
        assert type(kernels.conv2d(x, conv2d).grad_fn).__name__ == "ConvolutionBackward0"
    assert not conv.takes(x.detach(), conv2d.weight.detach(), None, 1, 0, 1, 1)  # nothing needs a gradient


def test_second_derivatives_are_refused_not_wrong() -> None:
    x = channels_last(torch.randn(2, 4, 2, 2, dtype=torch.float64)).requires_grad_()
    y = kernels.conv2d(x, layer(4, 3, 1))
    (dx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        dx.sum().backward()


def graph_nodes(output: torch.Tensor) -> list[str]:
    """The names of every autograd node behind ``output``."""
    seen, stack, names = set(), [output.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("name", ["bn", "small"])
def test_the_swapped_model_trains_through_it_exactly(name: str) -> None:
    plain = create_model(name, num_classes=10).double()
    randomise_batchnorm(plain)
    fast = optimize_for_training(copy.deepcopy(plain)).to(memory_format=torch.channels_last)
    x = channels_last(tiny_input(name, 3))
    nodes = graph_nodes(copy.deepcopy(fast).train()(x).sum())
    assert nodes.count("_Conv2dMatmulBackwardBackward") >= 9  # at least one convolution per Inception module
    assert_same(fast, plain, x)  # outputs, gradients and BatchNorm statistics in float64
