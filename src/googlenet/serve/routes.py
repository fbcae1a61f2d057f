"""The routes of the server and their handlers; `create_app` (googlenet.serve.app) includes the router. Each
handler finds the model service, the batcher and the settings in ``request.app.state``. This module imports
FastAPI, the [serve] extra: only `create_app` imports it, after checking the extra is installed. No postponed
annotations here: FastAPI reads the handlers' parameter types at run time."""

import asyncio
import logging
import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from googlenet.serve.batcher import ModelThread
from googlenet.serve.images import UploadError, check_content_type, decode_image
from googlenet.serve.service import ModelService, ServeSettings

STATIC = resources.files("googlenet.serve") / "static"
LOG = logging.getLogger("googlenet.serve")

# The OpenAPI description of an image upload: a raw image body or multipart form files.
IMAGE_BODY = {
    "requestBody": {
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
        },
        "required": True,
    }
}

router = APIRouter()


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal as a JSON ``{"error": ...}`` with its 4xx status."""

    @app.exception_handler(UploadError)
    async def refused(_request: Request, error: UploadError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, _error: ClientDisconnect) -> Response:
        # Nobody is left to answer: one line in the log, not a traceback.
        LOG.warning("%s %s: the client hung up before its request was read", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def failed(_request: Request, _error: Exception) -> JSONResponse:
        # A fault of ours, not the client's: its traceback goes to the log (starlette logs it after this
        # answer), and the client gets JSON like every other answer, naming nothing inside the server.
        return JSONResponse({"error": "the server failed on this request; its log says why"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)


def _service(request: Request) -> ModelService:
    service: ModelService = request.app.state.service
    return service


def _batcher(request: Request) -> ModelThread:
    batcher: ModelThread = request.app.state.batcher
    return batcher


def _settings(request: Request) -> ServeSettings:
    settings: ServeSettings = request.app.state.settings
    return settings


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


@router.get("/healthz")
async def health(request: Request) -> dict[str, Any]:
    service = _service(request)
    return {"status": "ok", "variant": service.info["variant"], "engine": service.engine.name}


@router.get("/v1/model")
async def model_card(request: Request) -> dict[str, Any]:
    batching = {"max_batch": _batcher(request).max_batch, "wait_ms": _settings(request).wait_ms}
    return {**_service(request).info, "batching": batching}


@router.post("/v1/predict", openapi_extra=IMAGE_BODY)
async def predict(request: Request) -> dict[str, Any]:
    """Top-k classes for one image (raw body, Content-Type image/*) or several (multipart form files)."""
    service, started = _service(request), time.perf_counter()
    k = _top_k(request)
    uploads = await _uploads(request, _settings(request))
    tensors = await asyncio.gather(*(decoded_upload(request, name, data) for name, data in uploads))
    decoded_at = time.perf_counter()
    answers = await asyncio.gather(*(_batcher(request).submit(x) for x in tensors))
    predictions = []
    for (name, _), answer in zip(uploads, answers, strict=True):
        values, indices = answer.probabilities.topk(k)
        top = [
            {"class": service.class_names[i], "probability": round(p, 6)}
            for i, p in zip(indices.tolist(), values.tolist(), strict=True)
        ]
        predictions.append({"file": name, "top": top, "batch_size": answer.batch_size})
    done = time.perf_counter()
    return {
        "predictions": predictions,
        "engine": service.engine.name,
        "timing_ms": {
            "decode": round((decoded_at - started) * 1000, 2),
            "queue": round(max(a.queued_ms for a in answers), 2),
            "model": round(max(a.run_ms for a in answers), 2),
            "total": round((done - started) * 1000, 2),
        },
    }


@router.post("/v1/explain", openapi_extra=IMAGE_BODY)
async def explain(request: Request) -> dict[str, Any]:
    """One image: top-k from the fp32 model, its exact class activation map (a PNG data URL), branch shares."""
    started = time.perf_counter()
    k = _top_k(request)
    uploads = await _uploads(request, _settings(request))
    if len(uploads) != 1:
        raise UploadError(400, f"explain takes one image; got {len(uploads)}")
    x = await decoded_upload(request, *uploads[0])
    result = await _batcher(request).call(_service(request).explain, x, k)
    return {**result, "timing_ms": {"total": round((time.perf_counter() - started) * 1000, 2)}}


def _top_k(request: Request) -> int:
    """?top_k= from 1 up; more than the model's classes gives all of them."""
    classes = len(_service(request).class_names)
    raw = request.query_params.get("top_k", str(_settings(request).top_k))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and int(raw) >= 1):
        raise UploadError(422, f"top_k must be a whole number from 1 to {classes}; got {raw[:20]!r}")
    return min(int(raw), classes)


async def decoded_upload(request: Request, name: str | None, data: bytes) -> Any:
    """The model input for one upload, decoded off the event loop: a large JPEG takes milliseconds to decode,
    and other requests keep arriving."""
    async with request.app.state.decode_slots:  # wide images take several bytes a pixel: a few at a time
        return await asyncio.to_thread(_decode, _service(request), _settings(request), name, data)


def _decode(service: ModelService, settings: ServeSettings, name: str | None, data: bytes) -> Any:
    label = f"file {name!r}" if name else "the image"
    prep = service.prep
    image = decode_image(data, prep.in_channels, max_pixels=settings.max_pixels, shorter_side=prep.resize, name=label)
    try:
        return service.preprocess(image)
    except (ValueError, OSError, MemoryError) as error:
        raise UploadError(422, f"{label} could not be preprocessed: {error}") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit`` bytes (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadError(413, f"the body is {int(declared):,} bytes; the limit is {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"the body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploads(request: Request, settings: ServeSettings) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of each image in the request: the raw body, or every file of a multipart form."""
    from starlette.datastructures import UploadFile

    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        try:
            async with request.form(max_files=settings.max_files, max_fields=settings.max_files) as form:
                files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
                if not files:
                    raise UploadError(
                        400, "the multipart form has no files: send images as form files (e.g. -F file=@x.jpg)"
                    )
                uploads = []
                for part in files:
                    name = part.filename or None
                    check_content_type(part.content_type, f"file {name!r}")
                    data = await part.read(settings.max_bytes + 1)
                    if len(data) > settings.max_bytes:
                        raise UploadError(413, f"file {name!r} is over the limit of {settings.max_bytes:,} bytes")
                    uploads.append((name, data))
        except (UploadError, ClientDisconnect):  # ours, the body limit reached, or the client gone mid-form
            raise
        except Exception as error:  # starlette's MultiPartException and parser errors: the client's form
            raise UploadError(400, f"the multipart form could not be read: {error}") from None
        return uploads
    check_content_type(content_type)
    return [(None, await read_body(request, settings.max_bytes))]
