"""googlenet.kernels: the C++ max-pool and BatchNorm+ReLU kernels against ATen in float64 (outputs, gradients,
running statistics), in bfloat16, inside the swapped model, and the ATen fallback."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from googlenet import create_model, kernels
from googlenet.kernels import build
from googlenet.speedups import CompactMaxPool2d, FusedConvBlock, optimize_for_training
from test_speedups import assert_same, randomise_batchnorm, tiny_input

needs_kernels = pytest.mark.skipif(not kernels.loaded(), reason=kernels.describe())

# (kernel, stride, padding, ceil_mode): GoogLeNet's pools (3/1/1 in every Inception module, 3/2 with ceil
# mode between stages) and a few others the kernel covers.
GEOMETRIES = [(3, 1, 1, True), (3, 2, 0, True), (3, 2, 1, True), (2, 2, 0, False), (3, 2, 0, False), (5, 3, 2, True)]


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def test_the_set_up_built_the_kernels_where_there_is_a_compiler() -> None:
    if build.compiler() is None:
        pytest.skip("no C++ compiler on this machine: the fallback tests below cover it")
    assert kernels.loaded(), kernels.describe()
    assert "fused BatchNorm+ReLU" in kernels.describe()


def pool_both_ways(
    x: torch.Tensor, pool: nn.MaxPool2d, relu: bool, kernel_input: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Output and input gradient of the kernel and of ATen for the same input and upstream gradient. The kernel
    pools ``kernel_input`` when given (a view of a tensor that requires grad: its gradient lands in the base,
    and None is returned for it), else a channels_last copy of ``x``."""
    a = kernel_input if kernel_input is not None else channels_last(x.clone()).requires_grad_()
    b = x.detach().clone().requires_grad_()
    out = kernels.max_pool2d(a, pool, relu=relu)
    with kernels.use_aten():
        ref = kernels.max_pool2d(b, pool, relu=relu)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert b.grad is not None
    return out, ref, a.grad if a.is_leaf else None, b.grad


@needs_kernels
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(("k", "s", "p", "ceil"), GEOMETRIES)
def test_max_pool_equals_aten_in_float64(k: int, s: int, p: int, ceil: bool, relu: bool) -> None:
    torch.manual_seed(k * 100 + s * 10 + p)
    # Integers make ties in most windows: the gradient must go to the first maximum, as ATen's does.
    x = torch.randint(-3, 4, (3, 5, 11, 9), dtype=torch.float64)
    pool = nn.MaxPool2d(k, s, p, ceil_mode=ceil)
    out, ref, grad, grad_ref = pool_both_ways(x, pool, relu)
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)


@needs_kernels
def test_max_pool_propagates_nan_like_aten() -> None:
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    x[0, 1, 2, 3] = float("nan")
    out, ref, _, _ = pool_both_ways(x, nn.MaxPool2d(3, 1, 1, ceil_mode=True), False)
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().sum() == 9
    torch.testing.assert_close(out, ref, equal_nan=True)


@needs_kernels
def test_max_pool_in_bfloat16_picks_the_same_maxima() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 64, 14, 14).to(torch.bfloat16)
    pool = nn.MaxPool2d(3, 2, ceil_mode=True)
    out, ref, _, _ = pool_both_ways(x, pool, True)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref)
    # The gradient sums up to four windows' shares: ours in float, rounded once to bfloat16, so it is the
    # float64 sum (ATen's, on the same values) rounded (ATen's bfloat16 path may round after each addition).
    g = torch.Generator().manual_seed(0)
    upstream = torch.randn(out.shape, generator=g).to(torch.bfloat16)
    a = channels_last(x.clone()).requires_grad_()
    kernels.max_pool2d(a, pool, relu=True).backward(channels_last(upstream))
    exact = x.double().requires_grad_()
    with kernels.use_aten():
        kernels.max_pool2d(exact, pool, relu=True).backward(upstream.double())
    assert a.grad is not None and exact.grad is not None
    assert torch.equal(a.grad, exact.grad.to(torch.bfloat16))


def batchnorm_both_ways(x: torch.Tensor, bn: nn.BatchNorm2d) -> dict[str, torch.Tensor]:
    """One training forward and backward of relu(bn(x)) by the kernel and by ATen, from identical layers;
    returns each result of the kernel's run beside ATen's (key, key + '_ref')."""
    ours, theirs = copy.deepcopy(bn).train(), copy.deepcopy(bn).train()
    a = channels_last(x.clone()).requires_grad_()
    b = x.clone().requires_grad_()
    out = kernels.module_batch_norm_relu(a, ours)
    ref = F.relu(theirs(b))
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    result = {"out": out, "out_ref": ref, "x_grad": a.grad, "x_grad_ref": b.grad}
    for name in ("weight", "bias"):
        result[f"{name}_grad"] = getattr(ours, name).grad
        result[f"{name}_grad_ref"] = getattr(theirs, name).grad
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        result[name] = getattr(ours, name)
        result[f"{name}_ref"] = getattr(theirs, name)
    return result


def make_batchnorm(channels: int, dtype: torch.dtype) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-3).to(dtype)
    randomise_batchnorm(bn)
    return bn


@needs_kernels
@pytest.mark.parametrize("shape", [(4, 7, 5, 3), (2, 32, 8, 8), (3, 3, 1, 1)])
def test_batchnorm_relu_equals_aten_in_float64(shape: tuple[int, int, int, int]) -> None:
    torch.manual_seed(sum(shape))
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.3
    result = batchnorm_both_ways(x, make_batchnorm(shape[1], torch.float64))
    assert result["out"].is_contiguous(memory_format=torch.channels_last)
    assert (result["out"] == 0).any() and (result["out"] > 0).any()  # the ReLU cut somewhere and passed somewhere
    for key in ("out", "x_grad", "weight_grad", "bias_grad", "running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(result[key], result[f"{key}_ref"], rtol=1e-10, atol=1e-12, msg=key)


@needs_kernels
def test_batchnorm_relu_in_bfloat16_with_float32_parameters() -> None:
    torch.manual_seed(3)
    x = (torch.randn(8, 48, 7, 7) + 0.2).to(torch.bfloat16)  # as autocast hands a convolution's output over
    result = batchnorm_both_ways(x, make_batchnorm(48, torch.float32))
    assert result["out"].dtype == torch.bfloat16 and result["weight_grad"].dtype == torch.float32
    for key in ("out", "x_grad"):
        torch.testing.assert_close(result[key].float(), result[f"{key}_ref"].float(), rtol=0.02, atol=0.02, msg=key)
    for key in ("weight_grad", "bias_grad", "running_mean", "running_var"):
        torch.testing.assert_close(result[key], result[f"{key}_ref"], rtol=1e-3, atol=1e-3, msg=key)


@needs_kernels
@pytest.mark.parametrize("name", ["bn", "small"])
def test_the_swapped_model_trains_through_the_kernels_exactly(name: str) -> None:
    plain = create_model(name, num_classes=10).double()
    randomise_batchnorm(plain)
    fast = optimize_for_training(copy.deepcopy(plain)).to(memory_format=torch.channels_last)
    assert any(isinstance(m, FusedConvBlock) for m in fast.modules())
    pools = [m for m in fast.modules() if isinstance(m, nn.MaxPool2d)]
    assert all(isinstance(m, CompactMaxPool2d) for m in pools)
    assert len(pools) == sum(isinstance(m, nn.MaxPool2d) for m in plain.modules())
    calls = {"pool": 0, "bn": 0}
    pool_forward, bn_forward = kernels._MaxPool.forward, kernels._BatchNormReLU.forward

    def counting_pool(*args: object) -> torch.Tensor:
        calls["pool"] += 1
        return pool_forward(*args)  # type: ignore[arg-type]

    def counting_bn(*args: object) -> torch.Tensor:
        calls["bn"] += 1
        return bn_forward(*args)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels._MaxPool, "forward", staticmethod(counting_pool))
        patch.setattr(kernels._BatchNormReLU, "forward", staticmethod(counting_bn))
        assert_same(fast, plain, channels_last(tiny_input(name, 3)))
    # Every pool ran in the kernel, the ones after Inception 3b and 4e once per branch (speedups rewrite 2);
    # so did the BatchNorm+ReLU of every block whose ReLU was not moved after a pool.
    assert calls["pool"] == len(pools) + 2 * 3
    assert calls["bn"] > 9 * 3


def test_without_the_kernels_everything_runs_on_aten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(kernels._state, "checked", True)
    monkeypatch.setitem(kernels._state, "module", None)
    monkeypatch.setitem(kernels._state, "reason", "not built: no C++ compiler was found")
    assert not kernels.loaded()
    assert kernels.describe() == (
        "C++ training kernels not built: no C++ compiler was found; using ATen's max-pool and BatchNorm; "
        "convolution gradients as matrix products on small maps"  # plain PyTorch: nothing to build
    )
    plain = create_model("small", num_classes=10).double()
    randomise_batchnorm(plain)
    fast = optimize_for_training(copy.deepcopy(plain)).to(memory_format=torch.channels_last)
    assert_same(fast, plain, channels_last(tiny_input("small", 2)))


def test_use_aten_turns_the_kernels_off_inside_the_block() -> None:
    before = kernels.loaded()
    with kernels.use_aten():
        assert not kernels.loaded()
        assert "using ATen" in kernels.describe()
    assert kernels.loaded() == before


def test_a_missing_build_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setitem(kernels._state, "checked", False)
    monkeypatch.setitem(kernels._state, "module", None)
    monkeypatch.setattr(build, "build_root", lambda: tmp_path)
    assert not kernels.loaded()
    assert "not built" in kernels.describe()


def test_the_set_up_survives_a_failed_build_and_says_why_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from googlenet.kernels.__main__ import main

    monkeypatch.setattr(build, "build_root", lambda: tmp_path)  # nothing built there
    monkeypatch.setattr(build, "compiler", lambda: "/usr/bin/c++")

    def broken(**_: object) -> None:
        raise RuntimeError("Error building extension 'googlenet_kernels'\n[1/2] c++ ... error: something")

    monkeypatch.setattr(build, "build", broken)
    assert main(["build"]) == 0  # ATen still trains: the set-up goes on
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "did not build (Error building extension 'googlenet_kernels')" in err and "--verbose" in err
    monkeypatch.setattr(build, "compiler", lambda: None)
    assert main(["build"]) == 0
    assert "no C++ compiler found" in capsys.readouterr().out


@needs_kernels
def test_max_pool_of_a_channel_slice_equals_aten_in_float64() -> None:
    # The pooled Inception modules pool branch 1 as a channel slice of the stacked 1x1 output: pixels lie
    # further apart than the slice's channels.
    torch.manual_seed(5)
    wide = channels_last(torch.randint(-3, 4, (2, 12, 9, 7), dtype=torch.float64)).requires_grad_()
    part = wide[:, 3:10]
    assert part.stride(1) == 1 and part.stride(3) == 12
    out, expected, _, grad_ref = pool_both_ways(part, nn.MaxPool2d(3, 2, ceil_mode=True), True, kernel_input=part)
    assert wide.grad is not None
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(wide.grad[:, 3:10], grad_ref, rtol=1e-12, atol=1e-12)
    assert not wide.grad[:, :3].any() and not wide.grad[:, 10:].any()


@needs_kernels
def test_second_derivatives_through_the_kernels_are_refused_not_wrong() -> None:
    x = channels_last(torch.randn(2, 4, 6, 6, dtype=torch.float64)).requires_grad_()
    y = kernels.max_pool2d(x, nn.MaxPool2d(3, 1, 1), relu=True).square().sum()
    (grad,) = torch.autograd.grad(y, x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"once_differentiable|twice"):
        grad.sum().backward()


def test_batchnorm_without_running_statistics_is_left_to_aten() -> None:
    bn = nn.BatchNorm2d(4)
    bn.track_running_stats = False
    assert not kernels.fusable_batchnorm(bn)
