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
nothing optional); the routes and their handlers are in googlenet.serve.routes, which it imports.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from googlenet.extras import require
from googlenet.serve.batcher import DynamicBatcher
from googlenet.serve.images import UploadError
from googlenet.serve.service import ModelService, ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI


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
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    from googlenet.serve.routes import STATIC, add_error_handlers, router

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
    add_error_handlers(app)
    app.include_router(router)
    return app
