"""The inference path equals the plain eval-mode model for every variant."""

import copy
import functools

import pytest
import torch
from torch import nn

from googlenet import create_model
from googlenet.model import VARIANTS, Inception
from googlenet.speedups import MergedInception, optimize_for_inference


def randomise_batchnorm(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_optimized_model_equals_the_plain_one(name: str) -> None:
    spec = VARIANTS[name]
    model = create_model(name, num_classes=10, in_channels=spec.default_in_channels)
    randomise_batchnorm(model)
    model.eval()
    size = 96 if spec.default_input_size == 224 else spec.default_input_size
    x = torch.randn(3, spec.default_in_channels, size, size)
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, MergedInception) for m in fast.modules()) == 9
    assert fast.aux1 is None and model.aux1 is not None  # the original is untouched
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast(x.contiguous(memory_format=torch.channels_last)).float()
    # bf16 keeps the decision: the same top class for (nearly) every input, and close logits.
    assert (low.argmax(1) == expected.argmax(1)).float().mean() >= 2 / 3
    assert float((low - expected).abs().max()) < 0.1 * float(expected.abs().max()) + 0.05


def assert_same_training_step(fast: nn.Module, plain: nn.Module, x: torch.Tensor) -> None:
    """One float64 training step of each model: logits, every gradient and every buffer (BatchNorm running
    statistics) must agree. float64 because the two paths may sum in different orders, and float32 rounding
    grows through 20 BatchNorm backwards."""
    fast.double()
    plain.double()
    outputs = []
    for model in (fast, plain):
        model.train()
        torch.manual_seed(1)  # the same dropout masks in both
        logits, aux1, aux2 = model.forward_train(x.double())
        loss = logits.square().mean() + aux1.square().mean() + aux2.square().mean()
        loss.backward()
        outputs.append(logits)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-12)
    grads = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-9, atol=1e-12, msg=name)
    buffers = dict(plain.named_buffers())
    for name, b in fast.named_buffers():
        torch.testing.assert_close(b, buffers[name], rtol=1e-10, atol=1e-12, msg=name)


def test_merged_1x1_training_step_equals_the_separate_layers() -> None:
    """Training runs the three input-side 1x1 convs of each Inception as one; outputs, gradients and
    BatchNorm running statistics must be those of the separate layers."""
    torch.manual_seed(0)
    merged = create_model("small", num_classes=10, in_channels=1)
    randomise_batchnorm(merged)
    separate = copy.deepcopy(merged)
    for m in separate.modules():
        if isinstance(m, Inception):
            m.merge_1x1_in_training = False
    calls = []
    for m in merged.modules():
        if isinstance(m, Inception):
            m._merged_branches = functools.partial(_counting, m._merged_branches, calls)  # type: ignore[method-assign]
    assert_same_training_step(merged, separate, torch.randn(6, 1, 28, 28))
    assert len(calls) == 9  # every module took the merged path


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_pooling_before_relu_changes_nothing(name: str) -> None:
    """Training pools the pre-activations of the stem's blocks and of Inception 3b and 4e, with ReLU after
    the pool; outputs, gradients and running statistics must be those of the paper's order (ReLU, then pool)."""
    spec = VARIANTS[name]
    torch.manual_seed(0)
    fast = create_model(name, num_classes=10, in_channels=spec.default_in_channels)
    randomise_batchnorm(fast)
    plain = copy.deepcopy(fast)
    plain.pool_before_relu_in_training = False
    negatives: dict[str, list[bool]] = {"fast": [], "plain": []}
    for label, model in (("fast", fast), ("plain", plain)):
        for pool in (model.maxpool1, model.maxpool3, model.maxpool4):
            pool.register_forward_pre_hook(lambda m, i, seen=negatives[label]: seen.append(bool((i[0] < 0).any())))
    size = 64 if spec.default_input_size == 224 else spec.default_input_size
    assert_same_training_step(fast, plain, torch.randn(4, spec.default_in_channels, size, size))
    # the fast pools saw pre-activations: the stem's, then the four branches of 3b and of 4e one by one
    assert negatives == {"fast": [True] * 9, "plain": [False] * 3}


def _counting(forward, calls, x, **kwargs):  # type: ignore[no-untyped-def]
    calls.append(1)
    return forward(x, **kwargs)


def test_merged_path_is_skipped_where_it_would_differ() -> None:
    model = create_model("small", num_classes=10, in_channels=1).train()
    module = next(m for m in model.modules() if isinstance(m, Inception))
    assert module._mergeable()
    module.branch1.bn.eval()  # frozen BatchNorm (fine-tuning with --freeze-features)
    assert not module._mergeable()
    paper = create_model("paper").train()  # no BatchNorm at all
    assert not any(m._mergeable() for m in paper.modules() if isinstance(m, Inception))
