"""The FastAPI application: the page, the JSON API and its errors.

- ``GET /``: the page (static/index.html); ``GET /static/...``: its script and style.
- ``POST /v1/predict``: one image as the raw body (Content-Type image/*), or several as multipart form files
  -> top-k classes with probabilities, the engine, the batch each image ran in, and timings.
- ``POST /v1/explain``: one image -> top-k, the exact CAM of the top class over the image, branch shares.
- ``GET /v1/model``: the model card (variant, classes, preprocessing, parameters, engine, training curves and
  test accuracy when the run folder is beside the checkpoint, Table 1 of the variant).
- ``GET /healthz``; the OpenAPI docs at ``/docs``.
- ``/v2/...``: the Open Inference Protocol (KServe v2, as Triton speaks it): health, metadata and ``infer``
  for the model, answering tritonclient and KServe clients (googlenet.serve.protocol_routes).

Every refusal is a 4xx JSON ``{"error": "..."}`` naming what was wrong; nothing a client sends names a file
on the server. FastAPI is the [serve] extra, imported by :func:`create_app` (so importing this module needs
nothing optional); the routes and their handlers are in googlenet.serve.routes, which it imports.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from googlenet.extras import require
from googlenet.serve.batcher import DynamicBatcher, ModelThread
from googlenet.serve.images import UploadError
from googlenet.serve.service import ModelService, ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI


def uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    """How uvicorn runs the application: its h11 connection with a header deadline and JSON errors
    (googlenet.serve.connection), whatever else is installed. httptools, which uvicorn prefers when present,
    would refuse some malformed requests itself with a plain-text 400."""
    from googlenet.serve.connection import HEADER_LIMIT, guarded_protocol

    return {
        "http": guarded_protocol(settings.header_timeout_s),
        "h11_max_incomplete_event_size": HEADER_LIMIT,
        "log_level": "warning",
        "access_log": False,
    }


async def send_json_error(send: Any, status: int, message: str, *, close: bool = False) -> None:
    """A JSON ``{"error": ...}`` answer sent from ASGI middleware, before the application sees the request;
    ``close`` asks the server to close the connection after it."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(b"connection", b"close")] if close else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware for requests no handler should see: a Host header outside ``allowed_hosts`` (DNS
    rebinding against a server on this machine), and a request with both Content-Length and
    Transfer-Encoding, which RFC 9112 (section 6.1) says to refuse and close the connection after: the two
    framings disagree, and a request hidden in the body would otherwise be served (request smuggling)."""

    def __init__(self, app: Any, allowed_hosts: tuple[str, ...]) -> None:
        self.app, self.allowed_hosts = app, {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers") or []:
            headers.setdefault(name.lower(), value)
        if b"content-length" in headers and b"transfer-encoding" in headers:
            await send_json_error(send, 400, "the request has both Content-Length and Transfer-Encoding", close=True)
            return
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host  # drop the port; keep [::1] whole
        if self.allowed_hosts and name not in self.allowed_hosts:
            allowed = ", ".join(sorted(self.allowed_hosts))
            await send_json_error(send, 400, f"Host {host[:100]!r} is not served here (allowed: {allowed})")
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body (raw, multipart, chunked or not) that passes ``limit`` bytes stops being
    read and becomes a 413, and one whose sender pauses longer than ``timeout`` seconds a 408, so nothing a
    client sends is spooled to disk or memory without bound, nor holds a connection open by trickling."""

    def __init__(self, app: Any, limit: int, timeout: float) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received, complete = 0, False

        async def limited() -> Any:
            nonlocal received, complete
            if complete:  # after the body: waiting for a disconnect is not a stalled upload
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                raise UploadError(408, f"the request body stalled: nothing arrived for {self.timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.limit:
                    raise UploadError(413, f"the request body is over the limit of {self.limit:,} bytes")
            return message

        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:  # refused before a byte of it is read
            message = f"the request body is {int(declared):,} bytes; the limit is {self.limit:,}"
            await send_json_error(send, 413, message)
            return
        await self.app(scope, limited, send)


def create_app(
    checkpoint: str | Path,
    settings: ServeSettings | None = None,
    *,
    batcher: Callable[[Callable[[Any], Any], ServeSettings], ModelThread] | None = None,
) -> "FastAPI":
    """The application for ``checkpoint``; run it with uvicorn (``googlenet serve`` does). ``batcher`` makes the
    batcher from the engine and the settings: our DynamicBatcher unless Ray Serve's batching is asked for."""
    require("fastapi", "serve", "googlenet serve")
    require("python_multipart", "serve", "googlenet serve")  # python-multipart: FastAPI's form parser
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    from googlenet.serve.protocol_routes import router as protocol_router
    from googlenet.serve.routes import STATIC, add_error_handlers, router

    settings = settings or ServeSettings()
    service = ModelService(checkpoint, settings)
    if batcher is None:
        model_batcher: ModelThread = DynamicBatcher(
            service.engine, max_batch=settings.max_batch, wait_ms=settings.wait_ms
        )
    else:
        model_batcher = batcher(service.engine, settings)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        # Made in the serving event loop: a semaphore belongs to the loop that first waits on it.
        app.state.decode_slots = asyncio.Semaphore(settings.decode_slots)
        await model_batcher.start()
        yield
        await model_batcher.stop()

    app = FastAPI(
        title="GoogLeNet",
        summary=f"{service.info['variant']} GoogLeNet, {len(service.class_names)} classes, "
        f"served by {service.engine.name}",
        version="1",
        lifespan=lifespan,
    )
    app.state.service, app.state.batcher, app.state.settings = service, model_batcher, settings
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(BodyLimit, limit=settings.body_limit, timeout=settings.body_timeout_s)
    app.add_middleware(RequestGuard, allowed_hosts=settings.allowed_hosts)  # added last: runs first
    add_error_handlers(app)
    app.include_router(router)
    app.include_router(protocol_router)
    return app
