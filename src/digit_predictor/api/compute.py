"""A request's CPU work (decode, preprocess, the model) off the event loop, a few at a time,
with the model run once for all the drawings that are waiting.

Each api process runs one torch thread and holds the GIL for most of a prediction, so more
threads computing at once do not add throughput: they queue for the GIL, and every hand-off
costs CPU. Measured with one worker at concurrency 32 (docs/api.md): 80-88 answers/s with
Starlette's shared pool of 40 threads, about twice that with two. Requests beyond the limit
wait on the event loop, holding no thread.

The model call is batched: one call for N drawings costs far less than N calls (torch's and the
trust head's fixed cost per call; docs/api.md has the figures). Nothing waits for a batch to
fill: a request that finds no other computing runs start to end in one thread hop; the
drawings prepared while a batch runs form the next one. One batch runs at a time, so the other
thread keeps decoding and preprocessing the requests behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from digit_predictor.api.predictor import Outcome, Predictor, Prepared

T = TypeVar("T")

MAX_BATCH = 32


class Compute:
    def __init__(self, threads: int, *, max_batch: int = MAX_BATCH) -> None:
        self._limiter = anyio.CapacityLimiter(threads)
        self._max_batch = max_batch
        self._waiting: list[tuple[Prepared, asyncio.Future[Outcome]]] = []
        self._batches: asyncio.Task[None] | None = None
        self._in_flight = 0  # requests decoding or preprocessing, or predicting alone

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in a worker thread; the caller's context (request id) goes with it."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def predict(self, predictor: Predictor, data: bytes) -> Outcome:
        """Decode and preprocess in a worker thread, then the model in the next batch.
        Raises InvalidImageError / EmptyDrawingError for bad drawings."""
        if self._in_flight == 0:
            # Alone (concurrency 1): the whole prediction in one thread hop, not two.
            self._in_flight += 1
            try:
                return await self.run(predictor.predict, data)
            finally:
                self._in_flight -= 1
        self._in_flight += 1
        try:
            prepared = await self.run(predictor.prepare, data)
        finally:
            self._in_flight -= 1
        answer: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((prepared, answer))
        if self._batches is None or self._batches.done():
            self._batches = asyncio.create_task(self._run_batches(predictor))
        return await answer

    async def _run_batches(self, predictor: Predictor) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            try:
                outcomes = await self.run(predictor.answer, [prepared for prepared, _ in batch])
            except Exception as exc:  # a broken model: every request of the batch hears of it
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            for (_, answer), outcome in zip(batch, outcomes, strict=True):
                if not answer.done():  # its request may have been cancelled meanwhile
                    answer.set_result(outcome)
