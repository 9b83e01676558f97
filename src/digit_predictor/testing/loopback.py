"""Loopback ports and readiness polling: the one `free_port` and `wait_ready` of the harness."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import httpx


class ServerFailed(RuntimeError):
    """A server process exited or never became ready; the message ends with its log."""


def free_port() -> int:
    """A loopback port nobody listens on now (it may be taken again before it is bound)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], bool], timeout_s: float = 30.0, interval_s: float = 0.2
) -> None:
    """Poll `condition` until it holds; a request that fails on the way counts as "not yet"."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def wait_ready(
    url: str,
    process: subprocess.Popen[bytes],
    *,
    name: str,
    log_tail: Callable[[], str],
    timeout_s: float = 60.0,
) -> None:
    """Poll `url` until it answers 200; raise ServerFailed (with the log) if `process` dies first
    or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerFailed(f"{name} exited with {process.returncode}\n{log_tail()}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise ServerFailed(f"{name} not ready at {url} within {timeout_s} s\n{log_tail()}")
