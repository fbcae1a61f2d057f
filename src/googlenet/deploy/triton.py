"""A checkpoint as a model in an NVIDIA Triton model repository: the network as ONNX (for Triton's ONNX Runtime
backend) or as an OpenVINO IR (its OpenVINO backend), with a dynamic batch axis, a ``config.pbtxt``, the class
names as Triton's label file, the preprocessing clients must apply, and a README saying how to serve it.

Triton's PyTorch backend takes only TorchScript, which PyTorch has deprecated, so the graph goes out as ONNX or
OpenVINO. The model folder is built beside its destination and renamed into place: a Triton server polling
the repository never sees half a model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from googlenet.data import Preprocessing
from googlenet.engines import openvino_graph, run_onnx, write_onnx
from googlenet.errors import GoogLeNetError
from googlenet.extras import require
from googlenet.files import OutputError, writable_dir
from googlenet.model import GoogLeNet
from googlenet.run.checkpoint import load_checkpoint, model_from_checkpoint
from googlenet.speedups import optimize_for_inference

ENGINES = ("onnx", "openvino")
BACKEND = {"onnx": "onnxruntime", "openvino": "openvino"}
MODEL_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
INPUT, OUTPUT = "images", "logits"  # the names `export --format onnx` gives, so one client fits both
LABELS = "labels.txt"
PREPROCESSING = "preprocessing.json"
# Triton's model names become URL path segments and folder names.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TritonExportError(GoogLeNetError):
    """A Triton model that cannot be written where asked, or that does not reproduce the eager model."""


@dataclass
class TritonModel:
    """A model written into a Triton repository: its folder, engine and the largest difference from eager."""

    folder: Path
    engine: str
    max_batch: int
    max_abs_diff: float


def model_config(
    name: str, engine: str, prep: Preprocessing, num_classes: int, *, max_batch: int, queue_delay_us: int
) -> str:
    """``config.pbtxt`` in protobuf text format (Triton's ModelConfig): the named, typed tensors without the
    batch axis, which ``max_batch_size`` adds; dynamic batching; one CPU instance."""
    size = prep.image_size
    return f"""# The googlenet model for Triton; see README.md beside this file.
name: "{name}"
backend: "{BACKEND[engine]}"
default_model_filename: "{MODEL_FILES[engine][0]}"
max_batch_size: {max_batch}
input [
  {{
    name: "{INPUT}"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ {prep.in_channels}, {size}, {size} ]
  }}
]
output [
  {{
    name: "{OUTPUT}"
    data_type: TYPE_FP32
    dims: [ {num_classes} ]
    label_filename: "{LABELS}"
  }}
]
# Requests arriving within the delay share one batch: a batch of 16 costs far less than 16 batches of 1.
dynamic_batching {{
  max_queue_delay_microseconds: {queue_delay_us}
}}
# One instance on the CPU uses all its cores through the engine's own threads; more instances suit many cores.
instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
"""


def export_triton(
    checkpoint: str | Path,
    repository: str | Path,
    *,
    name: str = "googlenet",
    engine: str = "onnx",
    max_batch: int = 32,
    queue_delay_us: int = 2000,
    tolerance: float = 1e-4,
) -> TritonModel:
    """Write ``checkpoint`` as model ``name`` (version 1) into the Triton repository ``repository``."""
    if engine not in ENGINES:
        raise TritonExportError(f"unknown engine {engine!r} for Triton; choose one of {', '.join(ENGINES)}")
    if not NAME_PATTERN.fullmatch(name):
        raise TritonExportError(
            f"model name {name!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    if max_batch < 1:
        raise TritonExportError(f"--max-batch must be at least 1; got {max_batch}")
    needs = ("onnx", "onnxscript", "onnxruntime") if engine == "onnx" else ("openvino",)
    for module in needs:
        require(module, "deploy", f"export --format triton --engine {engine}")
    repository = writable_dir(repository)
    destination = repository / name
    if destination.exists():
        raise OutputError(f"{destination} already exists: remove it, or choose another --name")
    model, prep, class_names = model_from_checkpoint(load_checkpoint(checkpoint))
    inputs = torch.randn(
        3, prep.in_channels, prep.image_size, prep.image_size, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        expected = model(inputs)
    graph = optimize_for_inference(model, channels_last=False)
    staging = Path(tempfile.mkdtemp(dir=repository, prefix=f".{name}.", suffix=".tmp"))
    try:
        version = staging / "1"
        version.mkdir()
        example = torch.randn(2, prep.in_channels, prep.image_size, prep.image_size)
        if engine == "onnx":
            write_onnx(graph, example, version / "model.onnx")
        else:
            _write_openvino(graph, example, version / "model.xml")
        actual = run_model(version, engine, inputs)
        diff = float((expected - actual).abs().max())
        bound = tolerance * max(1.0, float(expected.abs().max()))
        if diff > bound:
            raise TritonExportError(
                f"the {engine} model differs from the eager model by {diff:.3g} (allowed {bound:.3g})"
            )
        config = model_config(name, engine, prep, len(class_names), max_batch=max_batch, queue_delay_us=queue_delay_us)
        (staging / "config.pbtxt").write_text(config, encoding="utf-8")
        (staging / LABELS).write_text("".join(f"{label}\n" for label in class_names), encoding="utf-8")
        (staging / PREPROCESSING).write_text(json.dumps(prep.to_dict(), indent=2) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(readme(name, engine, prep, len(class_names), max_batch), encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; a server running as another user must read it
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TritonModel(destination, engine, max_batch, diff)


def _write_openvino(graph: GoogLeNet, example: Tensor, out: Path) -> None:
    """The graph as OpenVINO IR (model.xml + model.bin) in fp32, batch axis dynamic, tensors named as in ONNX."""
    openvino = require("openvino", "deploy", "export --format triton --engine openvino")
    ir = openvino_graph(graph, example)
    ir.inputs[0].get_tensor().set_names({INPUT})
    ir.outputs[0].get_tensor().set_names({OUTPUT})
    openvino.save_model(ir, str(out), compress_to_fp16=False)  # Triton's CPU backend runs what it is given


def run_model(version: Path, engine: str, images: Tensor) -> Tensor:
    """Run the model file in ``version`` (a repository's ``NAME/1``) as Triton's backend would, by tensor name."""
    if engine == "onnx":
        return run_onnx(version / "model.onnx", images)
    openvino = require("openvino", "deploy", "running an OpenVINO model")
    compiled = openvino.Core().compile_model(str(version / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled({INPUT: images.numpy()})
    return torch.from_numpy(result[compiled.output(OUTPUT)].copy())


def readme(name: str, engine: str, prep: Preprocessing, num_classes: int, max_batch: int) -> str:
    """How to serve the model and what a client sends it."""
    channels = "RGB" if prep.in_channels == 3 else "grayscale"
    return f"""# {name}: GoogLeNet for NVIDIA Triton Inference Server

Written by `googlenet export --format triton --engine {engine}`. Serve the repository this folder is in:

    tritonserver --model-repository REPOSITORY

Triton's `{BACKEND[engine]}` backend runs `1/{MODEL_FILES[engine][0]}`. The model takes batches of 1 to
{max_batch} images. Requests that arrive close together are batched by Triton's dynamic batcher.
`config.pbtxt` sets the batch limit, the queue delay and the CPU instance group.

## What a client sends

- **Input:** `{INPUT}`, FP32, shape `[N, {prep.in_channels}, {prep.image_size}, {prep.image_size}]` (NCHW).
- **Output:** `{OUTPUT}`, FP32, shape `[N, {num_classes}]`, the scores before softmax.
- **Labels:** `{LABELS}` holds the class names, one per line in class-index order. Ask for the output with
  `class_count=K` and Triton answers the top K as `"score:index:label"`.

Preprocess every image the way the model was trained and evaluated (also in `{PREPROCESSING}`):

1. Decode the image as {channels}.
2. Resize it so its shorter side is {prep.resize} px (bilinear).
3. Crop the centre {prep.image_size} x {prep.image_size}.
4. Scale the pixels to [0, 1].
5. Subtract the mean {prep.mean} and divide by the std {prep.std}, per channel.

With `tritonclient` (`pip install tritonclient[http]`) and the `googlenet` package for the preprocessing:

```python
import numpy as np
import tritonclient.http as httpclient
from googlenet.data import Preprocessing
import json

prep = Preprocessing.from_dict(json.load(open("{name}/{PREPROCESSING}")))
batch = np.stack([prep.load_image("photo.jpg").numpy()])
client = httpclient.InferenceServerClient("localhost:8000")
images = httpclient.InferInput("{INPUT}", list(batch.shape), "FP32")
images.set_data_from_numpy(batch)
top = httpclient.InferRequestedOutput("{OUTPUT}", class_count=5)
print(client.infer("{name}", [images], outputs=[top]).as_numpy("{OUTPUT}"))
```

The same client code runs against `googlenet serve CHECKPOINT`, which speaks the same protocol for
a model named `{name}` (pass `--name {name}`). That server also takes the image files themselves.
"""
