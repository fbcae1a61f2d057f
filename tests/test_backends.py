"""Inference engines: every installed engine gives the plain model's answers (fp32 to float rounding, bf16 and
int8 close), unsupported choices are refused with advice, and "auto" picks by measurement."""

import pytest
import torch
from torch import nn

from googlenet import create_model
from googlenet.engines import (
    AUTO_MIN_IMAGES,
    BackendError,
    build_engine,
    check_backend,
    installed_backends,
    select_engine,
)
from test_speedups import randomise_batchnorm

SIZE = 28


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("small", num_classes=10, in_channels=1, aux=False)
    randomise_batchnorm(model)
    return model.eval()


def batch(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


FP32 = [b for b in installed_backends()]
LOW = [(b, p) for b in installed_backends() for p in ("bf16", "int8") if (b, p) != ("torch", "int8")]
LOW = [(b, p) for b, p in LOW if b != "onnxruntime"]


def test_installed_backends_lists_only_importable_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))
    found = installed_backends()
    assert found[0] == "torch" and "openvino" not in found
    assert ("onnxruntime" in found) == (real("onnxruntime") is not None)


@pytest.mark.parametrize("backend", FP32)
def test_fp32_engine_equals_the_plain_model(backend: str) -> None:
    model = small_model()
    x = batch(5)  # not the export's example batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = model(x)
    engine = build_engine(model, backend, "fp32", image_size=SIZE)
    actual = engine(x)
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert engine(x[:1]).shape == (1, 10)


@pytest.mark.parametrize(("backend", "precision"), LOW)
def test_reduced_precision_engines_stay_close(backend: str, precision: str) -> None:
    model = small_model()
    x = batch(16)
    with torch.no_grad():
        expected = model(x)
    calibration = [batch(16, seed) for seed in range(2, 6)]
    actual = build_engine(model, backend, precision, image_size=SIZE, calibration=calibration)(x)
    similarity = torch.nn.functional.cosine_similarity(actual, expected, dim=1)
    assert similarity.min() > 0.95, similarity
    assert not torch.equal(actual, expected)  # it really ran at lower precision


@pytest.mark.parametrize(
    ("backend", "precision", "message"),
    [
        ("onnxruntime", "bf16", "onnxruntime cannot run bf16; use --backend torch or openvino"),
        ("torch", "int8", "torch cannot run int8; use --backend openvino"),
        ("tensorrt", "fp32", "unknown backend 'tensorrt'"),
        ("torch", "fp8", "unknown precision 'fp8'"),
    ],
)
def test_unsupported_choices_are_refused(backend: str, precision: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        check_backend(backend, precision)


def test_int8_without_calibration_is_refused() -> None:
    with pytest.raises(BackendError, match="calibration"):
        build_engine(small_model(), "openvino", "int8", image_size=SIZE)


def test_auto_takes_torch_for_small_jobs_and_measures_large_ones() -> None:
    model = small_model()
    probe = batch(8)
    engine, how = select_engine(model, "auto", "fp32", image_size=SIZE, probe=lambda: probe, workload=10)
    assert engine.backend == "torch" and "fewer than" in how
    engine, how = select_engine(model, "auto", "fp32", image_size=SIZE, probe=lambda: probe, workload=AUTO_MIN_IMAGES)
    assert "fastest measured here" in how and engine.name in how
    # small jobs of this tiny model do not repay an ONNX export: only torch and OpenVINO are timed
    assert "onnxruntime" not in how and "openvino fp32" in how and "torch fp32" in how
    torch.testing.assert_close(engine(probe), model(probe), rtol=1e-4, atol=1e-4)


def test_auto_int8_goes_to_the_only_engine_that_runs_it() -> None:
    engine, how = select_engine(
        small_model(),
        "auto",
        "int8",
        image_size=SIZE,
        probe=lambda: batch(4),
        workload=10,
        calibration=lambda: [batch(8)],
    )
    assert engine.name == "openvino int8" and "only engine" in how
