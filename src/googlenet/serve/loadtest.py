"""A bounded load test of a running server on this machine, and the comparison with and without batching.

``run_load`` sends a fixed number of requests from a fixed number of concurrent clients (some of them bad on
purpose) and accounts for every one: answered as expected, answered wrongly, or failed. ``python -m
googlenet.serve.loadtest CKPT IMAGE`` starts the server twice on a free loopback port, once with dynamic
batching and once without (or, with ``--ray N``, once as one process and once as N Ray Serve replicas), and
prints throughput and p50/p99 latency for each at every ``--concurrency``: what docs/performance.md quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

# Bad requests mixed into the load: each must get its 4xx answer and leave the server serving.
BAD_REQUESTS: list[tuple[str, bytes, int]] = [
    ("text/plain", b"hello", 415),
    ("image/png", b"", 400),
    ("image/png", b"\x89PNG\r\n\x1a\n not really", 400),
]


@dataclass
class LoadResult:
    requests: int
    concurrency: int
    seconds: float
    good_ok: int  # good requests answered 200 with predictions
    bad_refused: int  # bad requests answered with their expected 4xx
    unexpected: list[str] = field(default_factory=list)  # every other outcome, described
    latencies_ms: list[float] = field(default_factory=list)  # of the good requests
    batch_sizes: Counter[int] = field(default_factory=Counter)

    @property
    def throughput(self) -> float:
        return self.good_ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 2),
            "good_ok": self.good_ok,
            "bad_refused": self.bad_refused,
            "unexpected": self.unexpected,
            "images_per_s": round(self.throughput, 1),
            "p50_ms": round(self.percentile(50), 1),
            "p99_ms": round(self.percentile(99), 1),
            "mean_batch": round(
                sum(k * v for k, v in self.batch_sizes.items()) / max(1, sum(self.batch_sizes.values())), 2
            ),
        }


async def _load(
    url: str, image: bytes, content_type: str, requests: int, concurrency: int, bad_every: int
) -> LoadResult:
    import httpx

    result = LoadResult(requests, concurrency, 0.0, 0, 0)
    counter = iter(range(requests))

    async def client(session: httpx.AsyncClient) -> None:
        for index in counter:  # shared: each request is sent exactly once
            bad = bad_every > 0 and index % bad_every == bad_every - 1
            kind, body, expected = BAD_REQUESTS[index % len(BAD_REQUESTS)] if bad else (content_type, image, 200)
            started = time.perf_counter()
            try:
                response = await session.post(f"{url}/v1/predict", content=body, headers={"Content-Type": kind})
            except httpx.HTTPError as error:
                result.unexpected.append(f"request {index}: {type(error).__name__}: {error}")
                continue
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != expected:
                result.unexpected.append(f"request {index}: {response.status_code} (expected {expected})")
                continue
            try:
                body = response.json()
                if bad:
                    if "error" not in body:
                        raise ValueError("no error message")
                    result.bad_refused += 1
                else:
                    result.batch_sizes[body["predictions"][0]["batch_size"]] += 1
                    result.good_ok += 1
                    result.latencies_ms.append(elapsed)
            except (ValueError, KeyError, IndexError, TypeError) as error:
                result.unexpected.append(f"request {index}: {response.status_code} with a malformed answer: {error}")

    started = time.perf_counter()
    # One connection per client, each in its own pool: one shared pool of 64 connections costs the load
    # generator about five times the CPU per request of 16, which on 2 cores starves the server it measures.
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    sessions = [httpx.AsyncClient(timeout=120, limits=one) for _ in range(concurrency)]
    try:
        await asyncio.gather(*(client(session) for session in sessions))
    finally:
        await asyncio.gather(*(session.aclose() for session in sessions))
    result.seconds = time.perf_counter() - started
    return result


def run_load(
    url: str,
    image: bytes,
    *,
    content_type: str = "image/png",
    requests: int = 1000,
    concurrency: int = 16,
    bad_every: int = 0,
) -> LoadResult:
    """Send ``requests`` POST /v1/predict from ``concurrency`` clients; every ``bad_every``-th one is bad."""
    return asyncio.run(_load(url.rstrip("/"), image, content_type, requests, concurrency, bad_every))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_healthy(url: str, seconds: float, alive: Callable[[], bool]) -> None:
    """Return once ``url``/healthz answers 200; raise if ``alive()`` turns false or ``seconds`` pass first."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        if not alive():
            raise RuntimeError(f"the server on {url} stopped before it answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer on {url} within {seconds:g} s")
        time.sleep(0.1)


class BackgroundServer:
    """uvicorn serving ``app`` on a free loopback port in a thread, for tests and this module's comparison."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        from googlenet.serve.app import uvicorn_options

        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, **uvicorn_options(app.state.settings))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        wait_until_healthy(self.url, 60, self.thread.is_alive)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def _single_process(checkpoint: str, settings: Any) -> Iterator[str]:
    """`googlenet serve` in a process of its own, as it runs for real: a server in this process would share
    the interpreter lock with the load generator's clients, which at 64 clients starves it."""
    port = free_port()
    command = [sys.executable, "-m", "googlenet.cli", "serve", checkpoint, "--port", str(port)]
    command += [
        "--backend",
        settings.backend,
        "--precision",
        settings.precision,
        "--max-batch",
        str(settings.max_batch),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, 300, lambda: server.poll() is None)
        yield url
    finally:
        server.terminate()
        server.wait(60)


@contextlib.contextmanager
def _ray_replicas(checkpoint: str, settings: Any, replicas: int) -> Iterator[str]:
    from googlenet.serve import ray_serve

    port = free_port()
    ray_serve.start(checkpoint, settings, host="127.0.0.1", port=port, replicas=replicas)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        ray_serve.stop()


def main() -> int:
    import httpx

    from googlenet.serve.service import ServeSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("image", help="the image every good request sends")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16], help="clients at once (one run each)")
    parser.add_argument("--backend", default="auto", help="as googlenet serve: auto measures the engines")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--ray", type=int, metavar="REPLICAS", help="compare with Ray Serve replicas instead of with no batching"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    image = Path(args.image).read_bytes()
    kind = "image/jpeg" if args.image.lower().endswith((".jpg", ".jpeg")) else "image/png"
    batched = ServeSettings(backend=args.backend, precision=args.precision, max_batch=16)
    servers: dict[str, Callable[[], contextlib.AbstractContextManager[str]]] = {
        "one process, dynamic batching (16, 5 ms)": lambda: _single_process(args.checkpoint, batched)
    }
    if args.ray:
        label = f"Ray Serve, {args.ray} replica{'s' if args.ray > 1 else ''}, @serve.batch (16, 5 ms)"
        servers[label] = lambda: _ray_replicas(args.checkpoint, batched, args.ray)
    else:
        one = dataclasses.replace(batched, max_batch=1)
        servers["one process, one request at a time"] = lambda: _single_process(args.checkpoint, one)
    results: dict[str, dict[str, Any]] = {}
    for label, server in servers.items():
        with server() as url:
            engine = httpx.get(f"{url}/healthz").json()["engine"]
            for clients in args.concurrency:
                run_load(url, image, content_type=kind, requests=50, concurrency=clients)  # warm-up
                outcome = run_load(url, image, content_type=kind, requests=args.requests, concurrency=clients)
                key = f"{label}, {clients} clients"
                results[key] = {"server": label, "engine": engine, **outcome.summary()}
                print(json.dumps({key: results[key]}))
    print()
    print(f"{args.requests:,} requests at each concurrency, {Path(args.image).name}")
    print("| server | engine | clients | images/s | p50 latency | p99 latency | mean batch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results.values():
        cells = [
            r["server"],
            r["engine"],
            r["concurrency"],
            r["images_per_s"],
            f"{r['p50_ms']} ms",
            f"{r['p99_ms']} ms",
        ]
        print("| " + " | ".join(map(str, [*cells, r["mean_batch"]])) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0 if all(not r["unexpected"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
