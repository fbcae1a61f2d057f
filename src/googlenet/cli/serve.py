"""`googlenet serve`: a web page and a JSON API for a checkpoint, with dynamic batching (the [serve] extra)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from googlenet.cli.common import Commands, UsageError, add_engine_arguments, positive_int

if TYPE_CHECKING:
    from googlenet.serve.service import ServeSettings


def register(commands: Commands) -> None:
    parser = commands.add("serve", run, "a web page and a JSON API for a checkpoint (FastAPI + uvicorn)")
    parser.add_argument(
        "checkpoint", help="a checkpoint written by 'googlenet train' or 'googlenet import-torchvision'"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    parser.add_argument(
        "--max-batch", type=positive_int, default=16, help="most images run together (default: 16; 1 = no batching)"
    )
    parser.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default: 5 ms)"
    )
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest file accepted (default: 10 MB)")
    parser.add_argument(
        "--max-pixels", type=positive_int, default=40_000_000, help="largest declared image (default: 40 megapixels)"
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host header name to serve besides this machine's loopback names (repeatable; e.g. behind a proxy)",
    )
    parser.add_argument(
        "--name", default="googlenet", help="the model's name in the Open Inference Protocol (/v2/models/NAME)"
    )
    ray = parser.add_argument_group("ray", "the same server in several Ray Serve replicas (the [ray] extra)")
    ray.add_argument("--ray", action="store_true", help="serve through Ray Serve instead of one process")
    ray.add_argument("--replicas", type=positive_int, default=2, help="replicas of the model (default: 2)")
    ray.add_argument(
        "--max-replicas", type=positive_int, help="autoscale from --replicas up to this many as the load asks"
    )
    ray.add_argument("--ray-address", help="join this Ray cluster (default: start Ray on this machine)")
    add_engine_arguments(parser, int8=False)


LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # as Host headers name them


def run(args: argparse.Namespace) -> int:
    from googlenet.extras import require

    for module in ("fastapi", "uvicorn", "python_multipart"):
        require(module, "serve", "googlenet serve")
    if args.ray:
        require("ray.serve", "ray", "googlenet serve --ray")
        if args.max_replicas is not None and args.max_replicas < args.replicas:
            raise UsageError(f"--max-replicas ({args.max_replicas}) must be at least --replicas ({args.replicas})")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535; got {args.port}")
    from googlenet.deploy.triton import NAME_PATTERN

    if not NAME_PATTERN.fullmatch(args.name):
        raise UsageError(f"--name {args.name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    if not 0 < args.max_upload_mb <= 1024 or not 0 <= args.batch_wait_ms <= 1000:
        raise UsageError("--max-upload-mb must be in (0, 1024] and --batch-wait-ms in [0, 1000]")
    import uvicorn

    from googlenet.serve.app import create_app, uvicorn_options
    from googlenet.serve.service import ServeSettings

    settings = ServeSettings(
        backend=args.backend,
        precision=args.precision,
        max_batch=args.max_batch,
        wait_ms=args.batch_wait_ms,
        max_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        # Bound to this machine only: refuse other Host names, so no web page can reach it by DNS rebinding.
        allowed_hosts=(*LOOPBACK_HOSTS, *args.allowed_host) if args.host in LOOPBACK else tuple(args.allowed_host),
        model_name=args.name,
    )
    if args.ray:
        return _serve_with_ray(args, settings)
    app = create_app(args.checkpoint, settings)
    service = app.state.service
    print(f"serving {service.info['variant']} ({len(service.class_names)} classes) with {service.engine_reason}")
    batching = "off" if args.max_batch == 1 else f"up to {args.max_batch} images, {args.batch_wait_ms:g} ms window"
    print(f"dynamic batching: {batching}")
    print(f"Open Inference Protocol: model {args.name!r} at /v2/models/{args.name}/infer")
    if args.host not in LOOPBACK:
        print(f"listening on {args.host}: reachable from other machines; there is no authentication")
    uvicorn.run(app, host=args.host, port=args.port, **uvicorn_options(settings))
    return 0


def _serve_with_ray(args: argparse.Namespace, settings: ServeSettings) -> int:
    import time

    from googlenet.run.checkpoint import load_checkpoint
    from googlenet.serve import ray_serve

    load_checkpoint(args.checkpoint)  # a bad checkpoint is one line here, not a replica failing in a loop
    scaling = f"{args.replicas} to {args.max_replicas}, autoscaled" if args.max_replicas else str(args.replicas)
    print(f"starting Ray Serve: {scaling} replicas of {args.checkpoint}")
    ray_serve.start(
        args.checkpoint,
        settings,
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        address=args.ray_address,
    )
    print(f"serving on http://{args.host}:{args.port}/ (the page, /v1 and /v2); Ctrl-C stops")
    if args.host not in LOOPBACK:
        print(f"listening on {args.host}: reachable from other machines; there is no authentication")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping Ray Serve")
    finally:
        ray_serve.stop()
    return 0
