"""The FastAPI application: the page, the JSON API and its errors.

- ``GET /``: the page (static/index.html); ``GET /static/...``: its script and style.
- ``POST /v1/predict``: one image as the raw body (Content-Type image/*), or several as multipart form files
  -> top-k classes with probabilities, the engine, the batch each image ran in, and timings.
- ``POST /v1/explain``: one image -> top-k, the exact CAM of the top class over the image, branch shares.
- ``GET /v1/model``: the model card (variant, classes, preprocessing, parameters, engine, training curves and
  test accuracy when the run folder is beside the checkpoint, Table 1 of the variant).
- ``GET /healthz``; the OpenAPI docs at ``/docs``.

Every refusal is a 4xx JSON ``{"error": "..."}`` naming what was wrong; nothing a client sends names a file
on the server. FastAPI is the [serve] extra, imported by :func:`create_app` (so importing this module needs
nothing optional). The routes are defined inside it, without postponed annotations, so that FastAPI reads
their parameter types directly.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from googlenet.extras import require
from googlenet.serve.batcher import DynamicBatcher
from googlenet.serve.images import UploadError, check_content_type, decode_image
from googlenet.serve.service import ModelService, ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

STATIC = resources.files("googlenet.serve") / "static"


async def _read_body(request: "Request", limit: int) -> bytes:
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


async def _uploads(request: "Request", settings: ServeSettings) -> list[tuple[str | None, bytes]]:
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
        except UploadError:  # ours, or the body limit reached while the form was read
            raise
        except Exception as error:  # starlette's MultiPartException and parser errors: the client's form
            raise UploadError(400, f"the multipart form could not be read: {error}") from None
        return uploads
    check_content_type(content_type)
    return [(None, await _read_body(request, settings.max_bytes))]


class BodyLimit:
    """ASGI middleware: a request body (raw, multipart, chunked or not) that passes ``limit`` bytes stops being
    read and becomes a 413, so nothing a client sends is spooled to disk or memory without bound."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise UploadError(413, f"the request body is over the limit of {self.limit:,} bytes")
            return message

        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:  # refused before a byte of it is read
            message = f'{{"error": "the request body is {int(declared):,} bytes; the limit is {self.limit:,}"}}'
            await send(
                {"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": message.encode()})
            return
        await self.app(scope, limited, send)


def create_app(checkpoint: str | Path, settings: ServeSettings | None = None) -> "FastAPI":
    """The application for ``checkpoint``; run it with uvicorn (``googlenet serve`` does)."""
    require("fastapi", "serve", "googlenet serve")
    require("multipart", "serve", "googlenet serve")  # python-multipart: FastAPI's form parser
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings = settings or ServeSettings()
    service = ModelService(checkpoint, settings)
    batcher = DynamicBatcher(service.engine, max_batch=settings.max_batch, wait_ms=settings.wait_ms)

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="GoogLeNet",
        summary=f"{service.info['variant']} GoogLeNet, {len(service.class_names)} classes, "
        f"served by {service.engine.name}",
        version="1",
        lifespan=lifespan,
    )
    app.state.service, app.state.batcher, app.state.settings = service, batcher, settings
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    # Every file may be max_bytes; the form's boundaries and headers get a little room on top.
    app.add_middleware(BodyLimit, limit=settings.max_bytes * settings.max_files + 2**20)

    @app.exception_handler(UploadError)
    async def refused(_request: Request, error: UploadError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    classes = len(service.class_names)

    def top_k_of(request: Request) -> int:
        """?top_k= from 1 up; more than the model's classes gives all of them."""
        raw = request.query_params.get("top_k", str(settings.top_k))
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and int(raw) >= 1):
            raise UploadError(422, f"top_k must be a whole number from 1 to {classes}; got {raw[:20]!r}")
        return min(int(raw), classes)

    def decode(name: str | None, data: bytes) -> Any:
        label = f"file {name!r}" if name else "the image"
        prep = service.prep
        image = decode_image(
            data, prep.in_channels, max_pixels=settings.max_pixels, shorter_side=prep.resize, name=label
        )
        try:
            return service.preprocess(image)
        except (ValueError, OSError, MemoryError) as error:
            raise UploadError(422, f"{label} could not be preprocessed: {error}") from None

    async def decoded(name: str | None, data: bytes) -> Any:
        # Off the event loop: a large JPEG takes milliseconds to decode, and other requests keep arriving.
        return await asyncio.to_thread(decode, name, data)

    image_body = {
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

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "variant": service.info["variant"], "engine": service.engine.name}

    @app.get("/v1/model")
    async def model_card() -> dict[str, Any]:
        return {**service.info, "batching": {"max_batch": batcher.max_batch, "wait_ms": settings.wait_ms}}

    @app.post("/v1/predict", openapi_extra=image_body)
    async def predict(request: Request) -> dict[str, Any]:
        """Top-k classes for one image (raw body, Content-Type image/*) or several (multipart form files)."""
        started = time.perf_counter()
        k = top_k_of(request)
        uploads = await _uploads(request, settings)
        tensors = await asyncio.gather(*(decoded(name, data) for name, data in uploads))
        decoded_at = time.perf_counter()
        answers = await asyncio.gather(*(batcher.submit(x) for x in tensors))
        predictions = []
        for (name, _), answer in zip(uploads, answers, strict=True):
            values, indices = answer.probabilities.topk(k)
            predictions.append(
                {
                    "file": name,
                    "top": [
                        {"class": service.class_names[i], "probability": round(p, 6)}
                        for i, p in zip(indices.tolist(), values.tolist(), strict=True)
                    ],
                    "batch_size": answer.batch_size,
                }
            )
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

    @app.post("/v1/explain", openapi_extra=image_body)
    async def explain(request: Request) -> dict[str, Any]:
        """One image: top-k from the fp32 model, its exact class activation map (a PNG data URL), branch shares."""
        started = time.perf_counter()
        k = top_k_of(request)
        uploads = await _uploads(request, settings)
        if len(uploads) != 1:
            raise UploadError(400, f"explain takes one image; got {len(uploads)}")
        x = await decoded(*uploads[0])
        result = await batcher.call(service.explain, x, k)
        return {**result, "timing_ms": {"total": round((time.perf_counter() - started) * 1000, 2)}}

    return app
