"""`googlenet serve --ray`: the same application (the page, ``/v1``, the Open Inference Protocol at ``/v2``, and
their limits) in several Ray Serve replicas behind Ray's HTTP proxy, on one machine or a Ray cluster.

Each replica loads the model and batches its concurrent images with Ray Serve's ``@serve.batch`` instead
of our DynamicBatcher. Ray restarts a replica that dies. With ``max_replicas`` the replica count follows the
load (Ray Serve autoscaling). Ray is the [ray] extra.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from googlenet.extras import require
from googlenet.serve.batcher import Answer, ModelThread
from googlenet.serve.service import ServeSettings

APP_NAME = "googlenet"
# Warnings and errors only, and no line per request: as quiet as `googlenet serve`.
LOGGING = {"log_level": "WARNING", "enable_access_log": False}


class ServeBatcher(ModelThread):
    """Ray Serve's ``@serve.batch``: the images submitted concurrently in one replica run together, up to
    ``max_batch`` of them or ``wait_ms`` after the first."""

    def __init__(self, run: Callable[[Tensor], Tensor], *, max_batch: int, wait_ms: float) -> None:
        super().__init__(run, max_batch=max_batch)
        serve = require("ray.serve", "ray", "googlenet serve --ray")
        batch = serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=max(0.0, wait_ms) / 1000)
        self._batched = batch(self._gathered)

    async def submit(self, image: Tensor) -> Answer:
        answer: Answer = await self._batched((image, time.perf_counter()))
        return answer

    async def _gathered(self, items: list[tuple[Tensor, float]]) -> list[Answer]:
        return await self.run_batch([image for image, _ in items], [at for _, at in items])


def _serve_batcher(engine: Callable[[Tensor], Tensor], settings: ServeSettings) -> ModelThread:
    return ServeBatcher(engine, max_batch=settings.max_batch, wait_ms=settings.wait_ms)


def application(
    checkpoint: str | Path,
    settings: ServeSettings,
    *,
    replicas: int,
    max_replicas: int | None = None,
    cpus: int | None = None,
) -> Any:
    """The Ray Serve application: ``replicas`` copies of the server (from ``replicas`` up to ``max_replicas``
    with autoscaling), sharing ``cpus`` cores (default: all of this machine's)."""
    serve = require("ray.serve", "ray", "googlenet serve --ray")
    checkpoint = str(Path(checkpoint).resolve())  # replicas may start in another working directory
    cores = cpus or os.cpu_count() or 1
    most = max_replicas or replicas
    threads = max(1, cores // replicas)  # each replica's intra-op threads: the cores are shared, not multiplied

    def build() -> Any:
        import torch

        from googlenet.serve.app import create_app

        torch.set_num_threads(threads)
        return create_app(checkpoint, settings, batcher=_serve_batcher)

    if max_replicas is None:
        scaling: dict[str, Any] = {"num_replicas": replicas}
    else:
        # A replica with about two batches in hand is busy enough; more requests than that start another.
        target = 2 * settings.max_batch
        scaling = {
            "autoscaling_config": {
                "min_replicas": replicas,
                "max_replicas": max_replicas,
                "target_ongoing_requests": target,
            }
        }

    @serve.deployment(
        name="GoogLeNet",
        ray_actor_options={"num_cpus": cores / most},  # every replica the scaling may start fits on the cores
        # Enough requests in a replica at once to fill its batches (Ray's default, 5, would cap them at 5).
        max_ongoing_requests=4 * settings.max_batch,
        **scaling,
    )
    @serve.ingress(build)
    class GoogLeNet:
        """One replica: the whole application with its own model and batcher."""

    return GoogLeNet.bind()  # type: ignore[attr-defined]


def start(
    checkpoint: str | Path,
    settings: ServeSettings,
    *,
    host: str,
    port: int,
    replicas: int,
    max_replicas: int | None = None,
    address: str | None = None,
) -> None:
    """Start Ray (or join the cluster at ``address``), its HTTP proxy on ``host:port``, and the application;
    returns once every replica is serving."""
    ray = require("ray", "ray", "googlenet serve --ray")
    serve = require("ray.serve", "ray", "googlenet serve --ray")
    if address:
        ray.init(address=address, logging_level="WARNING")
        cpus = None
    else:
        cpus = os.cpu_count() or 1
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING", configure_logging=True)
    serve.start(http_options={"host": host, "port": port}, logging_config=LOGGING)
    app = application(checkpoint, settings, replicas=replicas, max_replicas=max_replicas, cpus=cpus)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False, logging_config=LOGGING)


def stop() -> None:
    ray = require("ray", "ray", "googlenet serve --ray")
    serve = require("ray.serve", "ray", "googlenet serve --ray")
    serve.shutdown()
    ray.shutdown()
