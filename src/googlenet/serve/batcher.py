"""Dynamic batching: concurrent requests' images run through the model together.

One worker takes the first waiting image, then gathers more until ``max_batch`` images are in hand or
``wait_ms`` has passed since the first, and runs them as one batch on a single thread (the model's own
intra-op threads use the cores). A batch of 16 costs far less than 16 batches of 1 on a CPU, so under load
throughput rises while each request waits at most ``wait_ms`` more. ``max_batch=1`` is the
one-request-at-a-time server, for comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


@dataclass
class Answer:
    """One image's model output and how it was run."""

    logits: Tensor  # (classes,), float32
    batch_size: int  # how many images shared its batch
    queued_ms: float  # from submit to the start of its batch
    run_ms: float  # the batch's model time

    @property
    def probabilities(self) -> Tensor:
        return self.logits.softmax(0)


class ModelThread:
    """One thread runs every model call (batches and the page's explanations), so they never compete for cores;
    a batcher decides which images share a call."""

    def __init__(self, run: Callable[[Tensor], Tensor], *, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._run = run
        self.max_batch = max_batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="googlenet-model")
        self.batch_sizes: Counter[int] = Counter()

    async def start(self) -> None:
        """Called in the serving event loop before the first request."""

    async def stop(self) -> None:
        self.executor.shutdown(wait=True)

    async def submit(self, image: Tensor) -> Answer:
        """One preprocessed image (C, H, W) -> its answer, once its batch has run."""
        raise NotImplementedError

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def run_batch(self, images: list[Tensor], submitted: list[float]) -> list[Answer]:
        """The images (each (C, H, W)) through the model as one batch, on the model thread."""
        started = time.perf_counter()
        logits = await self.call(self._logits, torch.stack(images))
        run_ms = (time.perf_counter() - started) * 1000
        self.batch_sizes[len(images)] += 1
        return [
            Answer(row, len(images), (started - at) * 1000, run_ms) for row, at in zip(logits, submitted, strict=True)
        ]

    def _logits(self, batch: Tensor) -> Tensor:
        with torch.inference_mode():
            return self._run(batch).float()


class DynamicBatcher(ModelThread):
    def __init__(self, run: Callable[[Tensor], Tensor], *, max_batch: int = 16, wait_ms: float = 5.0) -> None:
        super().__init__(run, max_batch=max_batch)
        self.wait_s = max(0.0, wait_ms) / 1000
        self._queue: asyncio.Queue[tuple[Tensor, float, asyncio.Future[Answer]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():  # nobody will run these now
            _, _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the server is shutting down"))
        await super().stop()

    async def submit(self, image: Tensor) -> Answer:
        """Queue one preprocessed image (C, H, W); its answer arrives when its batch has run."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        await self._queue.put((image, time.perf_counter(), future))
        return await future

    async def _gather(self) -> list[tuple[Tensor, float, asyncio.Future[Answer]]]:
        assert self._queue is not None
        items = [await self._queue.get()]
        deadline = time.perf_counter() + self.wait_s
        while len(items) < self.max_batch:
            if not self._queue.empty():  # already waiting: take it without waiting
                items.append(self._queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return items

    async def _serve(self) -> None:
        while True:
            items = await self._gather()
            live = [item for item in items if not item[2].done()]  # a client that hung up needs no answer
            if not live:
                continue
            try:
                answers = await self.run_batch([image for image, _, _ in live], [at for _, at, _ in live])
            except Exception as error:  # every waiting request learns of it; the server goes on
                for _, _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, _, future), answer in zip(live, answers, strict=True):
                if not future.done():
                    future.set_result(answer)
