"""Export a checkpoint for serving: ONNX (checked against ONNX Runtime), a torch.export program, or
safetensors weights with metadata. Auxiliary heads are never exported. Every export is reloaded and
compared with the eager model before it is reported."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from googlenet.data import Preprocessing, collect_images
from googlenet.deploy.interop import payload_for_model
from googlenet.engines import run_onnx, write_onnx
from googlenet.errors import GoogLeNetError
from googlenet.extras import require
from googlenet.files import atomic_write, writable_dir
from googlenet.model import GoogLeNet, create_model
from googlenet.run.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from googlenet.speedups import optimize_for_inference

FORMATS = ("onnx", "torch-export", "safetensors")
# What each format needs beyond the core install, all from the [deploy] extra (ONNX files are checked by ONNX Runtime).
NEEDS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "torch-export": (),
    "safetensors": ("safetensors",),
}
METADATA_KEY = "googlenet"


class ExportError(GoogLeNetError):
    """An export that could not be written or does not reproduce the eager model."""


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    random_inputs: int
    real_inputs: int


def _check_inputs(model: GoogLeNet, prep: Preprocessing, images: Sequence[str | Path]) -> tuple[Tensor, int]:
    """Three random images (a batch size unlike the export's example, to exercise the dynamic axis) and
    the given real images through the checkpoint's own preprocessing."""
    size = prep.image_size
    random = torch.randn(3, model.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    files = collect_images(images) if images else []
    real = [prep.load_image(f) for f in files]
    return (torch.cat([random, torch.stack(real)]) if real else random), len(real)


def _compare(expected: Tensor, actual: Tensor, tolerance: float, what: str) -> float:
    diff = float((expected - actual).abs().max())
    bound = tolerance * max(1.0, float(expected.abs().max()))
    if diff > bound:
        raise ExportError(f"{what} differs from the eager model by {diff:.3g} (allowed {bound:.3g})")
    return diff


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    *,
    check_images: Sequence[str | Path] = (),
    tolerance: float = 1e-4,
) -> ExportResult:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for module in NEEDS[fmt]:  # before the checkpoint is read: say what is missing at once
        require(module, "deploy", f"export --format {fmt}")
    writable_dir(Path(out).parent)  # before minutes of exporting, not after
    model, prep, names = model_from_checkpoint(load_checkpoint(checkpoint))
    inputs, real = _check_inputs(model, prep, check_images)
    with torch.no_grad():
        expected = model(inputs)  # the plain eval-mode model is the reference for every format
    if fmt != "safetensors":  # graphs carry the inference path; safetensors keeps the trainable layout
        model = optimize_for_inference(model, channels_last=False)
    out = Path(out)
    example = torch.randn(2, model.in_channels, prep.image_size, prep.image_size)
    if fmt == "onnx":
        actual = _export_onnx(model, example, out, inputs)
    elif fmt == "torch-export":
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        atomic_write(out, lambda tmp: torch.export.save(program, tmp))
        with torch.no_grad():
            actual = torch.export.load(out).module()(inputs)
    else:
        save_safetensors(model, prep, names, out)
        reloaded, _, _ = load_safetensors(out)
        with torch.no_grad():
            actual = reloaded(inputs)
    diff = _compare(expected, actual, tolerance, f"the {fmt} export")
    return ExportResult(out, fmt, diff, int(inputs.shape[0]) - real, real)


def _export_onnx(model: GoogLeNet, example: Tensor, out: Path, inputs: Tensor) -> Tensor:
    write_onnx(model, example, out)
    return run_onnx(out, inputs)


def save_safetensors(model: GoogLeNet, prep: Preprocessing, class_names: list[str], out: str | Path) -> None:
    save_file = require("safetensors.torch", "deploy", "safetensors export").save_file
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith(("aux1.", "aux2."))}
    metadata = {METADATA_KEY: json.dumps(payload_for_model(model, prep, class_names))}
    atomic_write(out, lambda tmp: save_file(state, tmp, metadata=metadata))


def load_safetensors(path: str | Path) -> tuple[GoogLeNet, Preprocessing, list[str]]:
    """(model in eval mode, preprocessing, class names) from a safetensors file written by export."""
    safetensors = require("safetensors", "deploy", "reading safetensors files")
    SafetensorError, safe_open = safetensors.SafetensorError, safetensors.safe_open
    load_file = require("safetensors.torch", "deploy", "reading safetensors files").load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from None
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path} has no googlenet metadata: it was not written by 'googlenet export'")
    meta = json.loads(metadata[METADATA_KEY])
    model = create_model(meta["variant"], num_classes=meta["num_classes"], in_channels=meta["in_channels"], aux=False)
    model.load_state_dict(state, strict=True)
    return model.eval(), Preprocessing.from_dict(meta["preprocessing"]), list(meta["class_names"])
