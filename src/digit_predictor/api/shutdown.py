"""Readiness fails first: on SIGTERM the api drains before uvicorn starts its shutdown.

uvicorn closes its listening socket the moment SIGTERM arrives. A proxy that has just picked
this replica (a connection in the accept queue, or a keep-alive one being closed) then loses a
request it already sent, and a POST is not retried. With `SHUTDOWN_DRAIN_S` > 0 the api first
answers /readyz with 503 for that long while serving everything as usual, so a proxy that polls
/readyz takes the replica out; only then does uvicorn's graceful shutdown run (in-flight
requests finish, the lifespan flushes the write queue). Kubernetes needs no drain here: a
terminating pod leaves the Service at once and the pod's preStop hook covers the delay.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


class Drain:
    """Set once SIGTERM arrived; /readyz reads it."""

    def __init__(self) -> None:
        self._started = threading.Event()

    @property
    def draining(self) -> bool:
        return self._started.is_set()

    def begin(self) -> None:
        self._started.set()


def delay_sigterm(drain: Drain, seconds: float) -> Callable[[], None]:
    """Make SIGTERM start `drain`, and reach the server's own handler `seconds` later.

    Call from the main thread once the server (uvicorn) has installed its handlers, i.e. in the
    lifespan. A second SIGTERM stops at once. Returns a function that undoes the change.
    Does nothing when `seconds` is 0 or no server handler is there to delay (e.g. TestClient).
    """
    previous = signal.getsignal(signal.SIGTERM)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if seconds <= 0 or not callable(previous) or not in_main_thread:
        return lambda: None
    server_handler: Callable[[int, FrameType | None], object] = previous

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if drain.draining:
            server_handler(signum, frame)
            return
        drain.begin()
        log.warning("SIGTERM: draining before shutdown", extra={"drain_s": seconds})
        timer = threading.Timer(seconds, server_handler, args=(signum, frame))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)

    return restore
