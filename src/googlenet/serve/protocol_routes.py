"""The Open Inference Protocol (KServe v2) routes: health, server and model metadata, and ``infer`` for one
model (``googlenet`` unless ``--name`` says otherwise), version 1.

The model takes either input, never both:

- ``image_bytes`` (BYTES, shape [N]): the image files themselves, decoded and preprocessed here as
  ``/v1/predict`` does (raw bytes through the binary tensor extension, or base64 strings in JSON);
- ``images`` (FP32, shape [N, C, S, S]): tensors already preprocessed, the input of the exported ONNX model
  and of the Triton repository that ``googlenet export --format triton`` writes.

It answers ``logits`` (FP32 [N, classes]), as the Triton model does, and the top ``top_k`` (a request
parameter, 5 by default) as ``probabilities`` (FP32 [N, k]), ``indices`` (INT64 [N, k]) and ``labels``
(BYTES [N, k]). Triton's classification extension works on ``logits``: ask for it with ``class_count=K`` and
the answer is the top K as "score:index:label". Images from every request share the dynamic batcher with
``/v1/predict``. No postponed annotations here: FastAPI reads the handlers' parameter types at run time.
"""

import asyncio
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response

from googlenet.serve.batcher import ModelThread
from googlenet.serve.images import UploadError
from googlenet.serve.protocol import InferRequest, OutputTensor, Requested, encode_infer, parse_infer, refuse
from googlenet.serve.routes import decoded_upload, read_body
from googlenet.serve.service import ModelService, ServeSettings

MODEL_VERSION = "1"
IMAGES, FILES = "images", "image_bytes"
OUTPUTS = ("logits", "probabilities", "indices", "labels")

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])


def _state(request: Request) -> tuple[ModelService, ModelThread, ServeSettings]:
    state = request.app.state
    return state.service, state.batcher, state.settings


def _check_model(request: Request, name: str, model_version: str | None) -> None:
    served = _state(request)[2].model_name
    if name != served:
        raise UploadError(404, f"unknown model {name[:100]!r}: this server serves {served!r}")
    if model_version not in (None, "", MODEL_VERSION):
        raise UploadError(404, f"model {name!r} has no version {model_version[:20]!r}: its one version is 1")


@router.get("")
async def server_metadata() -> dict[str, Any]:
    try:
        release = version("googlenet")
    except PackageNotFoundError:  # run from a source tree without installing
        release = "unknown"
    return {"name": "googlenet", "version": release, "extensions": ["binary_tensor_data", "classification"]}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}  # the model is loaded before the server starts listening


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{model_version}/ready")
async def model_ready(request: Request, name: str, model_version: str | None = None) -> dict[str, Any]:
    _check_model(request, name, model_version)
    return {"name": name, "ready": True}


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{model_version}")
async def model_metadata(request: Request, name: str, model_version: str | None = None) -> dict[str, Any]:
    _check_model(request, name, model_version)
    service = _state(request)[0]
    prep = service.prep
    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": f"googlenet_{service.engine.backend}",
        "inputs": [
            {"name": IMAGES, "datatype": "FP32", "shape": [-1, prep.in_channels, prep.image_size, prep.image_size]},
            {"name": FILES, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, len(service.class_names)]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "indices", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
        ],
    }


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{model_version}/infer")
async def infer(request: Request, name: str, model_version: str | None = None) -> Response:
    _check_model(request, name, model_version)
    service, batcher, settings = _state(request)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # a compressed body could expand past every limit: refused unread
        raise UploadError(415, f"Content-Encoding {encoding[:20]!r} is not accepted: send the body uncompressed")
    body = await read_body(request, settings.body_limit)
    parsed = parse_infer(body, request.headers.get("inference-header-content-length"))
    top_k = _top_k(parsed, settings.top_k, len(service.class_names))
    wanted = _wanted_outputs(parsed)  # before any image is decoded: a bad request costs nothing
    tensors = await _model_inputs(request, parsed)
    answers = await asyncio.gather(*(batcher.submit(x) for x in tensors))
    logits = torch.stack([answer.logits for answer in answers])
    outputs = _outputs(wanted, logits, service.class_names, top_k)
    content, header_length = encode_infer(name, MODEL_VERSION, outputs, parsed.id)
    if header_length is None:
        return Response(content, media_type="application/json")
    headers = {"Inference-Header-Content-Length": str(header_length)}
    return Response(content, media_type="application/octet-stream", headers=headers)


def _top_k(parsed: InferRequest, default: int, classes: int) -> int:
    k = parsed.parameters.get("top_k", default)
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise UploadError(422, f"top_k must be a whole number from 1 to {classes}; got {str(k)[:20]!r}")
    return min(k, classes)


async def _model_inputs(request: Request, parsed: InferRequest) -> list[torch.Tensor]:
    """One preprocessed (C, H, W) tensor per image, from whichever input the request gave."""
    service, _, settings = _state(request)
    unknown = sorted(set(parsed.inputs) - {IMAGES, FILES})
    if unknown:
        raise refuse(f"unknown input {unknown[0][:100]!r}: the model takes {FILES!r} (BYTES) or {IMAGES!r} (FP32)")
    if len(parsed.inputs) != 1:
        raise refuse(f"send one input, {FILES!r} or {IMAGES!r}, not both")
    (name, array), prep = next(iter(parsed.inputs.items())), service.prep
    expected = [prep.in_channels, prep.image_size, prep.image_size]
    if name == FILES and (array.dtype != object or array.ndim != 1):
        raise refuse(f"input {FILES!r} must be BYTES with shape [N]: one image file per element")
    if name == IMAGES and (array.dtype != np.float32 or list(array.shape[1:]) != expected):
        raise refuse(f"input {IMAGES!r} must be FP32 with shape [N, {', '.join(map(str, expected))}]")
    count = array.shape[0]
    if not 1 <= count <= settings.max_files:
        raise refuse(f"input {name!r} holds {count} images; send 1 to {settings.max_files} per request")
    if name == FILES:
        for i, data in enumerate(array):
            if len(data) > settings.max_bytes:
                raise UploadError(413, f"{FILES}[{i}] is {len(data):,} bytes; the limit is {settings.max_bytes:,}")
        return list(await asyncio.gather(*(decoded_upload(request, f"{FILES}[{i}]", d) for i, d in enumerate(array))))
    if not np.isfinite(array).all():
        raise refuse(f"input {IMAGES!r} has values that are not finite (NaN or infinity)")
    return list(torch.from_numpy(array).unbind(0))


def _wanted_outputs(parsed: InferRequest) -> dict[str, Requested]:
    """The outputs asked for (all of them when none is named), checked."""
    wanted = parsed.outputs or {name: Requested(parsed.binary_by_default) for name in OUTPUTS}
    unknown = sorted(set(wanted) - set(OUTPUTS))
    if unknown:
        raise refuse(f"unknown output {unknown[0][:100]!r}: the model answers {', '.join(OUTPUTS)}")
    for name, requested in wanted.items():
        if requested.classification and name != "logits":
            raise refuse(f"classification is answered for 'logits' only, not {name!r}")
    return wanted


def _outputs(
    wanted: dict[str, Requested], logits: torch.Tensor, class_names: list[str], top_k: int
) -> list[OutputTensor]:
    probabilities, indices = logits.softmax(1).topk(top_k, dim=1)
    labels = np.array([[class_names[i] for i in row] for row in indices.tolist()], dtype=object)
    values = {
        "logits": ("FP32", logits.numpy()),
        "probabilities": ("FP32", probabilities.numpy()),
        "indices": ("INT64", indices.numpy()),
        "labels": ("BYTES", labels),
    }
    outputs = []
    for name, requested in wanted.items():
        datatype, array = values[name]
        if requested.classification:
            datatype, array = "BYTES", _classification(logits, class_names, requested.classification)
        outputs.append(OutputTensor(name, datatype, array, requested.binary))
    return outputs


def _classification(logits: torch.Tensor, class_names: list[str], count: int) -> np.ndarray:
    """Triton's classification extension: the top ``count`` scores of each row as "score:index:label"."""
    scores, indices = logits.topk(min(count, logits.shape[1]), dim=1)
    rows = [
        [f"{score:f}:{index}:{class_names[index]}" for score, index in zip(s, i, strict=True)]
        for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
    ]
    return np.array(rows, dtype=object)
