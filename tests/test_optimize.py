"""The inference path equals the plain eval-mode model for every variant."""

import pytest
import torch
from torch import nn

from googlenet import create_model
from googlenet.model import VARIANTS
from googlenet.optimize import MergedInception, optimize_for_inference


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
