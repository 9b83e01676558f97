"""A request's CPU work (decode, preprocess, the model) off the event loop, in batches.

The drawings a worker receives wait on the event loop (holding no thread) until a compute
thread takes all of them, up to 32, decodes and preprocesses each and runs the model once for
the batch: one call for N drawings costs far less than N calls (the runtime's and the trust head's
fixed cost per call), and one thread hop per batch instead of one or two per request costs less
again. Nothing waits for a batch to fill: a drawing that finds a compute thread free starts at
once (alone, at concurrency 1); the drawings that arrive meanwhile form the next batch.

At most `threads` batches run at once per worker (`API_COMPUTE_THREADS`, default 1). Each api
process runs one inference thread and holds the GIL for much of this work, so more threads
computing at once add GIL hand-offs rather than throughput (docs/api.md has the figures).
"""

from __future__ import annotations

import asyncio

import anyio.to_thread

from digit_predictor.api.predictor import Outcome, Predictor

MAX_BATCH = 32


class Compute:
    def __init__(self, threads: int, *, max_batch: int = MAX_BATCH) -> None:
        self._threads = threads
        self._max_batch = max_batch
        self._waiting: list[tuple[bytes, asyncio.Future[Outcome]]] = []
        self._running = 0  # batches being computed
        self._runners: set[asyncio.Task[None]] = set()  # referenced while they run

    async def predict(self, predictor: Predictor, data: bytes) -> Outcome:
        """The drawing's answer, computed in the next batch. Raises InvalidImageError /
        EmptyDrawingError for a drawing that cannot be read (the rest of its batch is
        answered all the same)."""
        answer: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((data, answer))
        if self._running < self._threads:
            self._running += 1
            runner = asyncio.create_task(self._run_batches(predictor))
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        return await answer

    async def _run_batches(self, predictor: Predictor) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                drawings = [data for data, _ in batch]
                results: list[Outcome | Exception]
                try:
                    results = list(
                        await anyio.to_thread.run_sync(predictor.predict_batch, drawings)
                    )
                except Exception as exc:  # a broken model: the requests of this batch hear of it
                    results = [exc] * len(batch)
                for (_, answer), result in zip(batch, results, strict=True):
                    if answer.done():  # its request was cancelled meanwhile
                        continue
                    if isinstance(result, Exception):
                        answer.set_exception(result)
                    else:
                        answer.set_result(result)
        finally:
            self._running -= 1
