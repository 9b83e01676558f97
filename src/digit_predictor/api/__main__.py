"""`python -m digit_predictor.api`: the api's one entry command (Docker, `make dev`, benchmarks).

Listens on API_HOST:API_PORT with API_WORKERS processes; by default one per CPU this process
may use (its CPU affinity and its cgroup's CPU quota, not the host's count: a container limited
to 2 CPUs on a 64-core host runs 2); with one worker per CPU, each on a CPU of its own
(API_PIN_WORKERS). Each worker is a whole app: its own model (the ONNX graph,
one intra-op thread; no torch), pool and group-commit writer; on SIGTERM every worker flushes its
own queue.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import uvicorn

from digit_predictor.api.workers import run_workers
from digit_predictor.config import get_settings
from digit_predictor.cpus import usable_cpus

APP = "digit_predictor.api.main:create_app"


def main() -> None:
    settings = get_settings()
    # glibc gives every thread that allocates its own malloc arena (up to 8 per core); with a
    # thread pool of 40 that is ~100 MiB of mostly empty heap per worker. Two arenas cost no
    # measurable speed here. Spawned workers inherit it (a single worker runs in this process,
    # whose allocator is already set up: the Dockerfile sets it too).
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    options: dict[str, Any] = {
        "factory": True,
        "host": settings.api_host,
        "port": settings.api_port,
        "workers": settings.api_workers or usable_cpus(),
        "timeout_keep_alive": 5,
        # The app logs JSON itself (api.logs), one line per request; no uvicorn access log.
        "access_log": False,
    }
    if options["workers"] == 1:
        uvicorn.run(APP, **options)
        return
    # uvicorn.run's multi-process branch, except that each worker listens on its own socket.
    with contextlib.suppress(KeyboardInterrupt):
        run_workers(uvicorn.Config(APP, **options), pin_cpus=settings.api_pin_workers)


if __name__ == "__main__":
    main()
