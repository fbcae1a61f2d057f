"""Inference engines for a trained model: PyTorch (our optimized graph), ONNX Runtime and OpenVINO, chosen by
name or by measuring them on the user's machine.

Every engine runs the same optimized graph (BatchNorm folded, 1x1 convolutions merged) and maps a float32
NCHW batch to float32 logits, so evaluate/predict need not know which one answered. fp32 engines agree with
the plain model to float rounding; bf16 and int8 trade a little agreement for speed, and say so.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from googlenet.errors import GoogLeNetError
from googlenet.extras import MissingExtraError, install_hint, require
from googlenet.files import atomic_write
from googlenet.macs import forward_macs
from googlenet.model import GoogLeNet
from googlenet.speedups import optimize_for_inference

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
# Which precisions each engine runs. ONNX Runtime's CPU provider has no bf16 convolutions, and int8 needs a
# calibrated graph, which we build with OpenVINO's NNCF.
SUPPORTED: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32",),
    "openvino": ("fp32", "bf16", "int8"),
}


class BackendError(GoogLeNetError):
    """An engine that is not installed, cannot run the asked precision, or cannot be built."""


@dataclass
class Engine:
    """One way of running the model: ``engine(x)`` maps a float32 (N, C, H, W) batch to float32 logits."""

    backend: str
    precision: str
    run: Callable[[Tensor], Tensor]
    keep_alive: list[Any] = field(default_factory=list)  # temp dirs and sessions the runner needs
    device: str = "cpu"

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}" + ("" if self.device == "cpu" else f" on {self.device}")

    def __call__(self, x: Tensor) -> Tensor:
        return self.run(x)


# The packages each engine imports; all but torch come with the [deploy] extra. ONNX Runtime's engine first
# exports the graph to ONNX, which torch's exporter does with onnx and onnxscript.
MODULES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
    "openvino": ("openvino",),
}


def _missing(backend: str) -> list[str]:
    return [m for m in MODULES[backend] if importlib.util.find_spec(m) is None]


def installed_backends() -> list[str]:
    return [b for b in BACKENDS if not _missing(b)]


def engine_choices(backends: Iterable[str]) -> list[tuple[str, str]]:
    """(backend, precision) for PyTorch and each of ``backends``, every precision it runs, in BACKENDS order."""
    wanted = {"torch", *backends}
    return [(b, p) for b in BACKENDS if b in wanted for p in SUPPORTED[b]]


def check_backend(backend: str, precision: str) -> None:
    """Raise BackendError with advice if ``backend`` cannot run ``precision`` here."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} or auto")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision not in SUPPORTED[backend]:
        able = [b for b in BACKENDS if precision in SUPPORTED[b]]
        raise BackendError(f"{backend} cannot run {precision}; use --backend {' or '.join(able)}")
    if missing := _missing(backend):
        raise MissingExtraError(
            f"--backend {backend} needs the [deploy] extra ({missing[0]} is not installed): {install_hint('deploy')}"
        )


def check_choice(backend: str, precision: str) -> None:
    """Fail early, before any data is read, if ``backend`` ("auto" or a name) cannot run ``precision``."""
    if backend != "auto":
        check_backend(backend, precision)
    elif precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    elif not any(precision in SUPPORTED[b] for b in installed_backends()):
        able = " or ".join(b for b in BACKENDS if precision in SUPPORTED[b])
        raise MissingExtraError(
            f"--precision {precision} needs {able}, from the [deploy] extra (not installed): {install_hint('deploy')}"
        )


def build_engine(
    model: GoogLeNet,
    backend: str,
    precision: str,
    *,
    image_size: int,
    calibration: Iterable[Tensor] | None = None,
    device: str | torch.device | None = None,
) -> Engine:
    """An engine for the eval-mode ``model`` (which is left untouched). int8 needs ``calibration``: a few
    hundred preprocessed training images in batches, to set the quantization ranges. The torch engine runs on
    ``device`` (default: the GPU when there is one); ONNX Runtime and OpenVINO run on the CPU."""
    check_backend(backend, precision)
    device = torch.device(device or default_device())
    if device.type != "cpu" and backend != "torch":
        raise BackendError(f"{backend} runs on the CPU here; use --backend torch for {device.type}")
    if precision == "int8" and calibration is None:
        raise BackendError("int8 needs calibration images; evaluate and benchmark supply them from the data")
    example = torch.randn(2, model.in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    if backend == "torch":
        engine = _torch_engine(model, precision, device)
    elif backend == "onnxruntime":
        engine = onnxruntime_engine(optimize_for_inference(model, channels_last=False), example)
    else:
        engine = openvino_engine(optimize_for_inference(model, channels_last=False), precision, example, calibration)
    return engine


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_engine(model: GoogLeNet, precision: str, device: torch.device) -> Engine:
    fast = optimize_for_inference(model).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once

    @torch.no_grad()
    def run(x: Tensor) -> Tensor:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return fast(x).float()

    return Engine("torch", precision, run, device=device.type)


def write_onnx(model: torch.nn.Module, example: Tensor, out: str | Path) -> None:
    """Write ``model`` as ONNX (dynamo exporter) with a dynamic batch axis, atomically."""
    for module in ("onnx", "onnxscript"):  # torch's dynamo exporter builds the graph with them
        require(module, "deploy", "ONNX export")
    batch = torch.export.Dim("batch", min=1, max=4096)

    def write(tmp: str) -> None:
        # The exporter narrates its passes on stdout; callers report the result themselves.
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                model,
                (example,),
                tmp,
                dynamo=True,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                # One self-contained file: GoogLeNet's weights (27 MB) are far below ONNX's 2 GB limit, and
                # external data would be named after the temporary file and left beside the model.
                external_data=False,
                verbose=False,
            )

    atomic_write(Path(out), write)


def onnxruntime_engine(graph: nn.Module, example: Tensor) -> Engine:
    """``graph`` (any eval-mode module: ours optimized, or a peer's) exported to ONNX and run by ONNX Runtime."""
    onnxruntime = require("onnxruntime", "deploy", "the onnxruntime engine")

    folder = tempfile.TemporaryDirectory(prefix="googlenet-ort-")
    path = Path(folder.name) / "model.onnx"
    write_onnx(graph, example, path)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers are not the user's concern
    # Idle workers that spin would take the cores from the PyTorch code that runs between our calls.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Tensor:
        (logits,) = session.run(["logits"], {"images": x.float().contiguous().numpy()})
        return torch.from_numpy(logits)

    return Engine("onnxruntime", "fp32", run, keep_alive=[folder, session])


def run_onnx(path: str | Path, images: Tensor) -> Tensor:
    """The logits of an ONNX file written by :func:`write_onnx`, run by ONNX Runtime on the CPU."""
    onnxruntime = require("onnxruntime", "deploy", "running an ONNX model")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    return torch.from_numpy(logits)


def openvino_graph(module: nn.Module, example: Tensor) -> Any:
    """``module`` (eval mode) converted to an OpenVINO model whose batch axis is dynamic."""
    import warnings

    openvino = require("openvino", "deploy", "the openvino engine")
    with warnings.catch_warnings():  # tracing warnings about shape checks in forward(): harmless here
        warnings.simplefilter("ignore")
        graph = openvino.convert_model(module, example_input=example)
    graph.reshape({graph.inputs[0]: openvino.PartialShape([-1, *example.shape[1:]])})
    return graph


def openvino_engine(
    module: nn.Module, precision: str, example: Tensor, calibration: Iterable[Tensor] | None = None
) -> Engine:
    """``module`` (any eval-mode module) converted to OpenVINO with a dynamic batch and compiled for the CPU at
    ``precision``; int8 is quantized by NNCF with ``calibration``."""
    openvino = require("openvino", "deploy", "the openvino engine")
    graph = openvino_graph(module, example)
    if precision == "int8":
        graph = _quantize(graph, calibration or [])
    # OpenVINO picks bf16 by itself on CPUs that have it; fp32 must be asked for. int8 graphs keep the layers
    # NNCF left in float at the CPU's best float precision.
    hint = {"fp32": "f32", "bf16": "bf16"}.get(precision)
    settings = {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_PRECISION_HINT": hint} if hint else {})}
    compiled = openvino.Core().compile_model(graph, "CPU", settings)
    request = compiled.create_infer_request()

    def run(x: Tensor) -> Tensor:
        request.infer({0: x.float().contiguous().numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return Engine("openvino", precision, run, keep_alive=[compiled, request])


def _quantize(graph: Any, calibration: Iterable[Tensor]) -> Any:
    """Post-training int8 quantization of an OpenVINO graph with NNCF (symmetric int8 weights and activations
    where the CPU has int8 kernels), its ranges set from the calibration batches."""
    import logging

    nncf = require("nncf", "deploy", "int8 quantization")
    logging.getLogger("nncf").setLevel(logging.ERROR)  # its progress bars and notices would swamp ours
    batches = [x.float().numpy() for x in calibration]
    if not batches:
        raise BackendError("int8 calibration got no images")
    images = sum(int(b.shape[0]) for b in batches)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws progress bars on stdout
        return nncf.quantize(graph, nncf.Dataset(batches), subset_size=images)


def _fastest(  # select_engine's inputs, passed on whole
    model: GoogLeNet,
    backends: list[str],
    precision: str,
    probe: Tensor,
    *,
    image_size: int,
    calibration: list[Tensor] | None,
    repeats: int = 3,
    log: Callable[[str], None] | None = None,
) -> tuple[Engine, dict[str, float]]:
    """Build each of ``backends`` at ``precision``, time it on ``probe`` (median of ``repeats`` after a
    warm-up) and return the fastest engine with every engine's median seconds by name."""
    engines, timings = [], {}
    for name in backends:
        engine = build_engine(model, name, precision, image_size=image_size, calibration=calibration)
        engine(probe)  # warm-up: first calls allocate and pick kernels
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            engine(probe)
            times.append(time.perf_counter() - start)
        timings[engine.name] = statistics.median(times)
        engines.append(engine)
        if log:
            log(f"{engine.name}: {probe.shape[0] / timings[engine.name]:.1f} img/s on the probe batch")
    return min(engines, key=lambda e: timings[e.name]), timings


# Below this many images, building and timing every engine costs more than it can save.
AUTO_MIN_IMAGES = 2000
# ONNX Runtime's build is an ONNX export (tens of seconds); it joins the measurement only for jobs of at least
# this many multiply-adds (ImageNet's validation set at 224 px is about 8e13).
ONNX_MIN_MACS = 2 * 10**13
PROBE_IMAGES = 64  # enough to rank engines; more makes the measurement cost more than it saves


def select_engine(  # the model and choice, then keyword-only facts the choice needs
    model: GoogLeNet,
    backend: str,
    precision: str,
    *,
    image_size: int,
    probe: Callable[[], Tensor],
    workload: int,
    calibration: Callable[[], Iterable[Tensor]] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Engine, str]:
    """The engine to run ``workload`` images with, and a sentence saying how it was chosen. ``backend`` is a
    name from BACKENDS or "auto": measure the installed engines on a probe batch when the workload is large
    enough to repay it, else take PyTorch. ``probe`` and ``calibration`` are called only if needed."""
    check_choice(backend, precision)
    calib = list(calibration()) if precision == "int8" and calibration is not None else None
    if backend != "auto":
        engine = build_engine(model, backend, precision, image_size=image_size, calibration=calib)
        return engine, f"{engine.name} (as asked)"
    candidates = [b for b in installed_backends() if precision in SUPPORTED[b]]  # not empty: check_choice
    if default_device() == "cuda" and "torch" in candidates:
        engine = build_engine(model, "torch", precision, image_size=image_size)
        return engine, f"{engine.name} (a GPU is here)"
    small = workload < AUTO_MIN_IMAGES  # nothing is measured: no need to count the MACs below
    if (
        not small
        and "onnxruntime" in candidates
        and workload * forward_macs(model, model.in_channels, image_size) < ONNX_MIN_MACS
    ):
        candidates.remove("onnxruntime")  # its export costs more than it could save; torch stays for fp32/bf16
    if len(candidates) == 1 or small:
        pick = "torch" if "torch" in candidates else candidates[0]
        engine = build_engine(model, pick, precision, image_size=image_size, calibration=calib)
        why = (
            f"the only engine worth measuring for {precision}"
            if len(candidates) == 1
            else f"fewer than {AUTO_MIN_IMAGES:,} images"
        )
        return engine, f"{engine.name} ({why})"
    best, timings = _fastest(
        model, candidates, precision, probe()[:PROBE_IMAGES], image_size=image_size, calibration=calib, log=log
    )
    ranked = sorted(timings.items(), key=lambda item: item[1])
    speeds = ", ".join(f"{name} {1 / seconds:.2f} batch/s" for name, seconds in ranked)
    return best, f"{best.name} (fastest measured here: {speeds})"
