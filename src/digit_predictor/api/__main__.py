"""`python -m digit_predictor.api`: the api's one entry command (Docker, `make dev`, benchmarks).

Listens on API_HOST:API_PORT with API_WORKERS processes; by default one per CPU this process
may use (its CPU affinity and its cgroup's CPU quota, not the host's count: a container limited
to 2 CPUs on a 64-core host runs 2). Each worker is a whole app: its own model (one torch
thread), pool and group-commit writer; on SIGTERM every worker flushes its own queue.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import uvicorn

from digit_predictor.config import get_settings

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cpu_limit(
    cpu_max: Path = CGROUP_V2_CPU_MAX,
    v1_quota: Path = CGROUP_V1_QUOTA,
    v1_period: Path = CGROUP_V1_PERIOD,
) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs; None when unlimited or unknown."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1_quota.read_text())
        period_us = int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus() -> int:
    """CPUs this process may run on (affinity), capped by the cgroup quota (rounded up)."""
    count = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return max(1, count)


def main() -> None:
    settings = get_settings()
    # glibc gives every thread that allocates its own malloc arena (up to 8 per core); with a
    # thread pool of 40 that is ~100 MiB of mostly empty heap per worker. Two arenas cost no
    # measurable speed here. Spawned workers inherit it (a single worker runs in this process,
    # whose allocator is already set up: the Dockerfile sets it too).
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    uvicorn.run(
        "digit_predictor.api.main:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers or usable_cpus(),
        timeout_keep_alive=5,
        # The app logs JSON itself (api.logs), one line per request; no uvicorn access log.
        access_log=False,
    )


if __name__ == "__main__":
    main()
