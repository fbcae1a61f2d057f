"""googlenet.speedups: the training swaps change nothing the model computes (float64, every variant), and
the inference path equals the eval-mode model."""

import copy
import io

import pytest
import torch
from torch import nn

from googlenet import GoogLeNet, create_model
from googlenet.model import INCEPTION_TABLE, VARIANTS, ConvBlock, Inception
from googlenet.speedups import MergedInception, PooledConvBlock, optimize_for_inference, optimize_for_training


def randomise_batchnorm(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def tiny_input(name: str, batch: int = 2) -> torch.Tensor:
    """A small batch the variant takes: 28 px 1-channel for small, 32 px for torchvision (its minimum is
    15), 64 px for the 3x3/2-pool variants (minimum 47)."""
    spec = VARIANTS[name]
    size = {"small": 28, "torchvision": 32}.get(name, 64)
    return torch.randn(batch, spec.default_in_channels, size, size, dtype=torch.float64)


def plain_and_fast(name: str, **kwargs: object) -> tuple[GoogLeNet, GoogLeNet]:
    """A float64 model with non-trivial BatchNorm, and a deep copy passed through optimize_for_training."""
    plain = create_model(name, num_classes=10, **kwargs).double()  # type: ignore[arg-type]
    randomise_batchnorm(plain)
    fast = optimize_for_training(copy.deepcopy(plain))
    return plain, fast


def merged_calls(model: nn.Module) -> list[bool]:
    """Per MergedInception call, whether it took the merged path (its 3x3 reduction block never ran on its own)."""
    seen: list[bool] = []
    for m in model.modules():
        if isinstance(m, MergedInception):
            ran: list[int] = []
            m.branch2[0].register_forward_hook(lambda *a, ran=ran: ran.append(1))
            m.register_forward_pre_hook(lambda *a, ran=ran: ran.clear())
            m.register_forward_hook(lambda *a, ran=ran: seen.append(not ran))
    return seen


def training_step(model: GoogLeNet, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    model.train()
    torch.manual_seed(1)  # the same dropout masks in both models
    logits, aux1, aux2 = model.forward_train(x)
    loss = logits.square().mean()
    outputs = [logits]
    for aux in (aux1, aux2):
        if aux is not None:
            loss = loss + aux.square().mean()
            outputs.append(aux)
    loss.backward()
    return tuple(outputs)


def assert_same(fast: GoogLeNet, plain: GoogLeNet, x: torch.Tensor) -> None:
    """One training step of each model, then an eval forward: logits, aux logits, every gradient, every
    buffer (BatchNorm running statistics and batch counts) and the eval logits agree. float64 because the
    merged BatchNorm may sum in another order, and float32 rounding grows through 20 BatchNorm backwards."""
    fast_out, plain_out = training_step(fast, x), training_step(plain, x)
    assert len(fast_out) == len(plain_out)
    for a, b in zip(fast_out, plain_out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    grads = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        assert (p.grad is None) == (grads[name].grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-9, atol=1e-12, msg=name)
    buffers = dict(plain.named_buffers())
    assert list(buffers) == [name for name, _ in fast.named_buffers()]
    for name, b in fast.named_buffers():
        torch.testing.assert_close(b, buffers[name], rtol=1e-10, atol=1e-12, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), plain.eval()(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_training_swap_is_exact(name: str) -> None:
    plain, fast = plain_and_fast(name)
    merged = merged_calls(fast)
    assert_same(fast, plain, tiny_input(name))
    # Training merged the 1x1 convs in all 9 modules where there is BatchNorm; the paper variant (no BN)
    # trained with the separate layers. In eval mode BatchNorm runs unmerged; without BN the convs merge.
    has_bn = VARIANTS[name].batch_norm
    assert merged == [has_bn] * 9 + [not has_bn] * 9
    # The stride-2 pools moved into the blocks before them (not conv3's past the paper's LRN; the small stem
    # has no maxpool2).
    pooled = {n for n, m in fast.named_children() if isinstance(getattr(m, "pool", None), nn.MaxPool2d)}
    expected = {"conv1", "conv3", "inception3b", "inception4e"}
    if name in ("paper", "small"):
        expected.remove("conv3")
    assert pooled == expected
    assert sum(isinstance(m, nn.MaxPool2d) for m in fast.modules()) == sum(
        isinstance(m, nn.MaxPool2d) for m in plain.modules()
    )
    # Checkpoints move both ways: a state dict saved from the swapped model loads strictly into a plain one.
    buffer = io.BytesIO()
    torch.save(fast.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()))
    assert list(state) == list(plain.state_dict())
    plain.load_state_dict(state, strict=True)
    fast.load_state_dict(plain.state_dict(), strict=True)  # and the other way


def test_swap_keeps_parameters_buffers_and_keys() -> None:
    model = create_model("bn", num_classes=10)
    keys = list(model.state_dict())
    params = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # built before the swap
    assert optimize_for_training(model) is model
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert optimize_for_training(model) is model and list(model.state_dict()) == keys  # a second call: no-op
    before = model.inception3a.branch1.conv.weight.detach().clone()
    logits, aux1, aux2 = model.train().forward_train(torch.randn(2, 3, 64, 64))
    (logits.sum() + aux1.sum() + aux2.sum()).backward()  # type: ignore[union-attr]
    optimizer.step()
    assert not torch.equal(model.inception3a.branch1.conv.weight, before)  # the optimizer still reaches it


@pytest.mark.parametrize("swap_first", [True, False])
def test_channels_last_before_or_after_the_swap(swap_first: bool) -> None:
    plain = create_model("small", num_classes=10).double()
    randomise_batchnorm(plain)
    fast = copy.deepcopy(plain)
    params = list(fast.parameters())
    if swap_first:
        fast = optimize_for_training(fast).to(memory_format=torch.channels_last)
    else:
        fast = optimize_for_training(fast.to(memory_format=torch.channels_last))
    assert all(a is b for a, b in zip(fast.parameters(), params, strict=True))
    assert fast.inception3a.branch1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same(fast, plain, tiny_input("small", 3).contiguous(memory_format=torch.channels_last))


def test_without_aux_heads() -> None:
    plain, fast = plain_and_fast("torchvision", aux=False)
    assert_same(fast, plain, tiny_input("torchvision", 3))
    assert fast.forward_train(tiny_input("torchvision"))[1:] == (None, None)


def test_sync_batchnorm_falls_back_to_the_plain_layers() -> None:
    plain, fast = plain_and_fast("small")
    fast = nn.SyncBatchNorm.convert_sync_batchnorm(fast)  # type: ignore[no-untyped-call]
    assert isinstance(fast.inception3a.branch1.bn, nn.SyncBatchNorm)
    assert isinstance(fast.conv1.bn, nn.SyncBatchNorm)  # PooledConvBlock's bn converted too
    merged = merged_calls(fast)
    assert_same(fast, plain, tiny_input("small", 3))
    assert not any(merged)


def test_frozen_batchnorm_falls_back_to_the_plain_layers() -> None:
    """Fine-tuning with frozen features keeps the backbone's BatchNorm in eval mode inside a training model."""
    plain, fast = plain_and_fast("torchvision")
    x = tiny_input("torchvision", 3)
    for model in (plain, fast):
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.fc.parameters():
            p.requires_grad_(True)
    merged = merged_calls(fast)
    for model in (fast, plain):
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    outputs = []
    for model in (fast, plain):
        torch.manual_seed(1)
        logits = model(x)
        logits.square().mean().backward()
        outputs.append(logits)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.fc.weight.grad, plain.fc.weight.grad, rtol=1e-9, atol=1e-12)
    for (name, a), b in zip(fast.named_buffers(), plain.buffers(), strict=True):
        assert torch.equal(a, b), name  # no running statistic moved
    assert merged == [False] * 9


def test_a_module_with_one_frozen_reduction_falls_back() -> None:
    # One of the three input-side BatchNorms in eval mode, the others training: that module runs unmerged,
    # the frozen layer's statistics stay put, and the step is still the plain model's.
    plain, fast = plain_and_fast("small")
    x = tiny_input("small")
    merged = merged_calls(fast)
    results = []
    for model in (fast, plain):
        model.train()
        model.inception4c.branch2[0].bn.eval()
        torch.manual_seed(1)
        logits = model(x)
        logits.square().mean().backward()
        results.append((logits, model.inception4c.branch2[0].conv.weight.grad, dict(model.named_buffers())))
    assert merged == [True] * 4 + [False] + [True] * 4
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-12)
    for name, b in results[0][2].items():
        torch.testing.assert_close(b, results[1][2][name], rtol=1e-10, atol=1e-12, msg=name)
    assert int(fast.inception4c.branch2[0].bn.num_batches_tracked) == 0
    assert int(fast.inception4c.branch1.bn.num_batches_tracked) == 1


def test_averaged_model_of_the_swapped_model_loads_into_a_plain_one() -> None:
    model = optimize_for_training(create_model("small", num_classes=10))
    averaged = torch.optim.swa_utils.AveragedModel(model)
    model.train().forward_train(torch.randn(2, 1, 28, 28))
    averaged.update_parameters(model)
    create_model("small", num_classes=10).load_state_dict(averaged.module.state_dict(), strict=True)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_inference_model_equals_the_plain_one(name: str) -> None:
    spec = VARIANTS[name]
    model = create_model(name, num_classes=10)
    randomise_batchnorm(model)
    model.eval()
    size = 96 if spec.default_input_size == 224 else spec.default_input_size
    x = torch.randn(3, spec.default_in_channels, size, size)
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, MergedInception) for m in fast.modules()) == 9
    assert not any(isinstance(m, Inception) for m in fast.modules())
    assert not fast.training and fast.aux1 is None and fast.aux2 is None
    assert model.aux1 is not None and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == spec.batch_norm
    assert fast.inception3a.branch1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    merged = merged_calls(fast)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4)
        assert merged == [True] * 9
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast(x.contiguous(memory_format=torch.channels_last)).float()
    # bf16 keeps the decision: the same top class for (nearly) every input, and close logits.
    assert (low.argmax(1) == expected.argmax(1)).float().mean() >= 2 / 3
    assert float((low - expected).abs().max()) < 0.1 * float(expected.abs().max()) + 0.05


def test_inference_from_a_training_swapped_model() -> None:
    """The trainer's model is already swapped; the inference copy of it still equals its eval outputs."""
    model = create_model("bn", num_classes=10)
    randomise_batchnorm(model)
    optimize_for_training(model)
    fast = optimize_for_inference(model, channels_last=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert isinstance(fast.conv1, PooledConvBlock) and isinstance(fast.conv1.bn, nn.Identity)
    assert isinstance(model.conv1.bn, nn.BatchNorm2d)  # the original is untouched
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model.eval()(x), rtol=1e-4, atol=1e-4)


def test_merged_inception_rejects_convolutions_it_cannot_stack() -> None:
    module = Inception(192, INCEPTION_TABLE["3a"], batch_norm=True)
    module.branch1 = ConvBlock(192, 64, 3, padding=1, batch_norm=True)
    with pytest.raises(ValueError, match="plain 1x1"):
        MergedInception(module)
