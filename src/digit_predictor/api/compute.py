"""A request's CPU work (decode, preprocess, the model) off the event loop, a few at a time.

Each api process runs one torch thread and holds the GIL for most of a prediction, so more
threads computing at once do not add throughput: they queue for the GIL, and every hand-off
costs CPU. Measured with one worker at concurrency 32 (docs/api.md): 80-88 answers/s with
Starlette's shared pool of 40 threads, about twice that with two. Requests beyond the limit
wait on the event loop, holding no thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class Compute:
    def __init__(self, threads: int) -> None:
        self._limiter = anyio.CapacityLimiter(threads)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in a worker thread; the caller's context (request id) goes with it."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
