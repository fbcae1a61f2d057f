"""Muon for convolutions: each weight is orthogonalised as its (out, fan-in) matrix in its own memory, exactly as
torch.optim.Muon updates that matrix; what Muon cannot take stays with SGD, and says so."""

import pytest
import torch
from torch import nn

from googlenet.config import load_config
from googlenet.model import create_model
from googlenet.training.muon import MatrixMuon, Optimizers, matrix_view
from googlenet.training.optim import build_optimizer, describe_optimizer


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_a_conv_weight_is_its_out_by_fan_in_matrix_in_its_own_memory(memory_format: torch.memory_format) -> None:
    weight = torch.randn(8, 3, 3, 3).to(memory_format=memory_format)
    view = matrix_view(weight)
    assert view is not None and view.shape == (8, 27)
    assert view.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
    view[2].zero_()
    assert not weight[2].any() and weight[1].any()  # row r of the matrix is filter r
    assert matrix_view(torch.randn(8)) is None  # a bias: nothing to orthogonalise
    assert matrix_view(torch.randn(8, 27).t()) is None  # dim 0 not outermost: no view without a copy


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_update_is_torchs_muon_on_the_flattened_weight(memory_format: torch.memory_format) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, bias=False).double().to(memory_format=memory_format)
    reference = conv.weight.detach().reshape(6, -1).clone().requires_grad_(True)
    ours = MatrixMuon([{"params": [conv.weight]}], lr=0.05, momentum=0.9, weight_decay=0.01)
    torchs = torch.optim.Muon([reference], lr=0.05, momentum=0.9, weight_decay=0.01)
    for _ in range(3):  # momentum carries over the steps
        grad = torch.randn(6, 4, 3, 3, dtype=torch.float64)
        conv.weight.grad = grad.to(memory_format=memory_format)
        reference.grad = grad.reshape(6, -1).clone()
        ours.step()
        torchs.step()
        ours.zero_grad()
        assert conv.weight.grad is None  # the weights' own gradients are cleared, not only the views'
    # Newton-Schulz runs in bfloat16 in both: the same inputs give the same bits whichever the column order.
    torch.testing.assert_close(conv.weight.detach().reshape(6, -1), reference.detach(), rtol=0, atol=1e-6)


def test_muon_takes_the_backbone_weights_and_sgd_the_rest() -> None:
    model = create_model("small", num_classes=10, aux=True)
    cfg = load_config(None, ["optim.name=muon", "optim.muon_lr=0.04", "optim.lr=0.1", "optim.muon_ns_steps=3"])
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(optimizer, Optimizers)
    muon, sgd = optimizer.parts
    assert isinstance(muon, MatrixMuon) and isinstance(sgd, torch.optim.SGD)
    in_muon = {id(w) for w in muon.weights}
    names = {id(p): n for n, p in model.named_parameters()}
    for p in model.parameters():
        name = names[id(p)]
        expected = p.dim() > 1 and not name.startswith(("fc.", "aux1.", "aux2."))
        assert (id(p) in in_muon) == expected, name
    # the schedule scales both: Muon's peak is optim.muon_lr
    assert [g["lr_mult"] for g in muon.param_groups] == [pytest.approx(0.4)]
    assert [g["ns_steps"] for g in muon.param_groups] == [3]
    line = describe_optimizer(optimizer, model)
    assert line.startswith("optimizer: Muon for ") and "SGD for the other " in line
    plain = build_optimizer(model, load_config(None, []), torch.device("cpu"))
    assert isinstance(plain, torch.optim.SGD) and describe_optimizer(plain, model).startswith("optimizer: SGD")
    # a weight stored with its output dimension inside has no matrix view: SGD takes it, and the log says so
    odd = create_model("small", num_classes=10)
    weight = odd.inception3a.branch1.conv.weight
    weight.data = weight.data.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    mixed = build_optimizer(odd, cfg, torch.device("cpu"))
    assert "no matrix view, so SGD: inception3a.branch1.conv.weight" in describe_optimizer(mixed, odd)


def test_the_state_round_trips_and_refuses_another_optimizers() -> None:
    model = create_model("small", num_classes=10)
    optimizer = build_optimizer(model, load_config(None, ["optim.name=muon"]), torch.device("cpu"))
    model(torch.randn(2, 1, 28, 28)).logsumexp(1).mean().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    again = build_optimizer(model, load_config(None, ["optim.name=muon"]), torch.device("cpu"))
    again.load_state_dict(saved)
    assert isinstance(again, Optimizers)
    first = next(iter(again.parts[0].state.values()))["momentum_buffer"]
    assert torch.equal(first, next(iter(saved["parts"][0]["state"].values()))["momentum_buffer"])
    sgd_state = build_optimizer(model, load_config(None, []), torch.device("cpu")).state_dict()
    with pytest.raises(ValueError, match=r"optim\.name differs"):
        again.load_state_dict(sgd_state)
