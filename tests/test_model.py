"""The model contract: counts, shapes, aux behaviour, torchvision compatibility, input errors."""

import pytest
import torch
import torchvision
from torch import nn

import googlenet
from googlenet import InputSizeError, UnknownModelError, count_parameters, create_model, list_models
from googlenet.model import INCEPTION_TABLE, VARIANTS, Inception, NaiveInception

# (without aux, with aux) at each variant's default input channels.
EXPECTED_PARAMS = {
    "paper": (6_998_552, 13_378_280),
    "torchvision": (6_624_904, 13_004_888),
    "bn": (7_005_832, 13_385_816),
    "small": (6_997_000, 13_376_984),
}


def test_registry_lists_every_variant() -> None:
    assert list_models() == sorted(EXPECTED_PARAMS)
    # The package's own names build the same models (the README's first lines use them).
    model = googlenet.create_model("small", num_classes=3, aux=False)
    assert isinstance(model, googlenet.GoogLeNet) and model.num_classes == 3 and not model.has_aux


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_input_channels_default_to_the_variants(name: str) -> None:
    default = VARIANTS[name].default_in_channels
    model = create_model(name)
    assert model.in_channels == model.conv1.conv.in_channels == default
    assert create_model(name, in_channels=2).conv1.conv.in_channels == 2
    assert default == (1 if name == "small" else 3)  # small is the 1-channel (Fashion-MNIST) variant


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_counts(name: str) -> None:
    plain, with_aux = EXPECTED_PARAMS[name]
    assert count_parameters(create_model(name, aux=False)) == plain
    assert count_parameters(create_model(name)) == with_aux


def test_paper_count_matches_table1_arithmetic() -> None:
    # Weights and biases of every layer, from the Table 1 filter counts alone.
    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + cout

    total = conv(3, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3)
    cin = 192
    for spec in INCEPTION_TABLE.values():
        total += conv(cin, spec.ch1x1, 1) + conv(cin, spec.ch3x3red, 1) + conv(spec.ch3x3red, spec.ch3x3, 3)
        total += conv(cin, spec.ch5x5red, 1) + conv(spec.ch5x5red, spec.ch5x5, 5) + conv(cin, spec.pool_proj, 1)
        cin = spec.out_channels
    total += 1024 * 1000 + 1000
    assert total == count_parameters(create_model("paper", aux=False)) == 6_998_552


def test_bn_variant_trades_each_bias_for_two_bn_parameters() -> None:
    paper, bn = create_model("paper", aux=False), create_model("bn", aux=False)
    conv_channels = sum(m.out_channels for m in paper.modules() if isinstance(m, nn.Conv2d))
    assert count_parameters(bn) - count_parameters(paper) == conv_channels


def test_aux_heads_match_torchvision_parameter_count() -> None:
    peer = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    assert count_parameters(create_model("torchvision")) == count_parameters(peer)


@pytest.mark.parametrize("name", ["paper", "torchvision", "bn"])
def test_shapes_at_224(name: str) -> None:
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 1024, 7, 7)
        assert model(x).shape == (2, 10)


def test_stage_shapes_follow_table1() -> None:
    model = create_model("paper").eval()
    seen: dict[str, tuple[int, ...]] = {}
    for name in ["conv1", "maxpool1", "conv3", "maxpool2", "inception3b", "inception4a", "inception4e", "maxpool4"]:
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, tuple(o.shape[1:])))
    model.aux1.pool.register_forward_hook(lambda m, i, o: seen.__setitem__("aux1", tuple(o.shape[1:])))
    model.aux2.pool.register_forward_hook(lambda m, i, o: seen.__setitem__("aux2", tuple(o.shape[1:])))
    with torch.no_grad():
        model.forward_train(torch.randn(1, 3, 224, 224))
    assert seen == {
        "conv1": (64, 112, 112),
        "maxpool1": (64, 56, 56),
        "conv3": (192, 56, 56),
        "maxpool2": (192, 28, 28),
        "inception3b": (480, 28, 28),
        "inception4a": (512, 14, 14),
        "inception4e": (832, 14, 14),
        "maxpool4": (832, 7, 7),
        "aux1": (512, 4, 4),  # the paper: 5x5/3 average pool -> 4x4x512
        "aux2": (528, 4, 4),  # and 4x4x528
    }


def test_paper_aux_pool_is_5x5_stride_3() -> None:
    pool = create_model("paper").aux1.pool[0]  # type: ignore[index,union-attr]
    assert isinstance(pool, nn.AvgPool2d)
    assert (pool.kernel_size, pool.stride) == (5, 3)


@pytest.mark.parametrize(("size", "in_channels", "final"), [(28, 1, 3), (32, 1, 4), (32, 3, 4), (96, 1, 12)])
def test_small_variant_shapes(size: int, in_channels: int, final: int) -> None:
    model = create_model("small", num_classes=10, in_channels=in_channels).eval()
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 1024, final, final)
        logits, aux1, aux2 = model.forward_train(x)
    assert logits.shape == aux1.shape == aux2.shape == (2, 10)  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_forward_train_vs_forward(name: str) -> None:
    model = create_model(name, num_classes=5).eval()
    x = torch.randn(2, model.in_channels, VARIANTS[name].default_input_size, VARIANTS[name].default_input_size)
    with torch.no_grad():
        logits = model(x)
        train_logits, aux1, aux2 = model.forward_train(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 5)
    torch.testing.assert_close(train_logits, logits, rtol=0, atol=0)
    assert aux1 is not None and aux2 is not None and aux1.shape == aux2.shape == (2, 5)
    assert not torch.equal(aux1, aux2)


def test_model_returns_logits_in_train_mode_and_aux_only_on_request() -> None:
    model = create_model("bn", num_classes=4).train()
    calls: list[str] = []
    model.aux1.register_forward_hook(lambda *a: calls.append("aux1"))  # type: ignore[union-attr]
    model.aux2.register_forward_hook(lambda *a: calls.append("aux2"))  # type: ignore[union-attr]
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)
    assert calls == []
    logits, aux1, aux2 = model.forward_train(torch.randn(2, 3, 64, 64))
    assert calls == ["aux1", "aux2"]
    # Every head receives gradient from the combined loss.
    (logits.sum() + 0.3 * aux1.sum() + 0.3 * aux2.sum()).backward()  # type: ignore[union-attr]
    for head in (model.fc, model.aux1.fc2, model.aux2.fc2):  # type: ignore[union-attr]
        assert float(head.weight.grad.abs().sum()) > 0


def test_without_aux() -> None:
    model = create_model("paper", aux=False).eval()
    assert model.aux1 is None and model.aux2 is None
    logits, aux1, aux2 = model.forward_train(torch.randn(1, 3, 96, 96))
    assert logits.shape == (1, 1000) and aux1 is None and aux2 is None


def test_torchvision_state_dict_loads_with_identical_outputs() -> None:
    peer = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).eval()
    # Give BatchNorm non-trivial statistics so the comparison exercises them.
    with torch.no_grad():
        for m in peer.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = create_model("torchvision").eval()
    assert list(ours.state_dict()) == list(peer.state_dict())
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peer(x), rtol=0, atol=0)


def test_torchvision_state_dict_without_aux() -> None:
    peer = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
    ours = create_model("torchvision", aux=False).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peer(x), rtol=0, atol=0)


def test_paper_variant_has_lrn_and_true_5x5() -> None:
    model = create_model("paper")
    assert isinstance(model.lrn1, nn.LocalResponseNorm) and isinstance(model.lrn2, nn.LocalResponseNorm)
    assert model.inception3a.branch3[1].conv.kernel_size == (5, 5)
    assert create_model("torchvision").inception3a.branch3[1].conv.kernel_size == (3, 3)
    assert model.dropout.p == 0.4 and create_model("torchvision").dropout.p == 0.2
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_minimum_input_size(name: str) -> None:
    model = create_model(name, num_classes=3).eval()
    n = model.min_input_size
    with torch.no_grad():
        model.forward_train(torch.randn(1, model.in_channels, n, n))
        with pytest.raises(InputSizeError, match=f"minimum is {n}x{n}"):
            model(torch.randn(1, model.in_channels, n - 1, n + 10))


def test_minimum_input_size_is_tight() -> None:
    # One pixel less really breaks the paper's network (its aux pool), so the check is not arbitrary.
    model = create_model("paper").eval()
    model.min_input_size = 1
    with pytest.raises(RuntimeError), torch.no_grad():
        model.forward_train(torch.randn(1, 3, 46, 46))


def test_wrong_channels_and_rank() -> None:
    model = create_model("small", in_channels=1)
    with pytest.raises(InputSizeError, match="1-channel"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(InputSizeError, match=r"\(N, C, H, W\)"):
        model(torch.randn(1, 28, 28))


def test_unknown_model() -> None:
    with pytest.raises(UnknownModelError, match="choose one of: bn, paper, small, torchvision"):
        create_model("resnet")


def test_reset_classifier_for_transfer_learning() -> None:
    model = create_model("bn")
    before = model.inception5b.branch1.conv.weight.clone()
    model.reset_classifier(7)
    assert model.num_classes == 7
    logits, aux1, aux2 = model.eval().forward_train(torch.randn(1, 3, 96, 96))
    assert logits.shape == aux1.shape == aux2.shape == (1, 7)  # type: ignore[union-attr]
    assert torch.equal(model.inception5b.branch1.conv.weight, before)


def test_forward_head_pre_logits() -> None:
    model = create_model("bn").eval()
    features = torch.randn(2, 1024, 7, 7)
    pooled = model.forward_head(features, pre_logits=True)
    torch.testing.assert_close(pooled, features.mean((2, 3)))  # the global average pool, flattened
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(features), model.fc(pooled))


def test_inception_and_naive_module_widths() -> None:
    spec = INCEPTION_TABLE["3a"]
    reduced = Inception(192, spec)
    naive = NaiveInception(192, spec.ch1x1, spec.ch3x3, spec.ch5x5)
    x = torch.randn(1, 192, 28, 28)
    assert reduced(x).shape == (1, 256, 28, 28)
    # The naive pool branch passes all 192 input channels through: 64 + 128 + 32 + 192.
    assert naive(x).shape == (1, 416, 28, 28) and naive.out_channels == 416
