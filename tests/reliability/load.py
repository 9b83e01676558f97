"""A bounded load generator: N predictions from C threads, each with its own keep-alive client."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcome:
    status: int | None  # None: the request failed at the connection level
    body: dict[str, object] | None
    error: str | None = None
    answered_at: float = 0.0  # time.monotonic() when the answer (or the failure) came


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def statuses(self) -> dict[int | None, int]:
        counts: dict[int | None, int] = {}
        for outcome in self.outcomes:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return counts

    def errors(self) -> list[str]:
        return [o.error for o in self.outcomes if o.error]


def _outcome(response: httpx.Response) -> Outcome:
    """The answer, or what came instead of JSON (a proxy's empty 5xx says who answered)."""
    answered_at = time.monotonic()
    try:
        return Outcome(response.status_code, response.json(), answered_at=answered_at)
    except ValueError:
        server = response.headers.get("server", "?")
        error = f"{response.status_code} from {server!r}, not JSON: {response.text[:200]!r}"
        return Outcome(response.status_code, None, error, answered_at=answered_at)


def run_load(
    url: str,
    images: Sequence[bytes],
    *,
    total: int | None = None,
    concurrency: int,
    stop: threading.Event | None = None,
    timeout_s: float = 30.0,
) -> LoadResult:
    """POST drawings until `total` are sent, or until `stop` is set; never more than 50,000."""
    limit = total if total is not None else 50_000
    counter = iter(range(limit))
    lock = threading.Lock()
    result = LoadResult()

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=timeout_s) as client:
            while stop is None or not stop.is_set():
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                png = images[i % len(images)]
                try:
                    response = client.post(
                        "/v1/predictions",
                        files={"image": (f"{i}.png", png, "image/png")},
                        data={"source": "load"},
                    )
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    outcome = Outcome(None, None, error, answered_at=time.monotonic())
                else:
                    outcome = _outcome(response)
                with lock:
                    result.outcomes.append(outcome)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    return result
