"""One listening socket per worker (SO_REUSEPORT), so that the kernel spreads connections over
the workers instead of letting the first one to wake take them all.

uvicorn's workers share one listening socket. Whichever worker's event loop wakes first accepts
every connection that is waiting, so a client that opens its connections in a burst (a browser,
a load balancer's pool, a benchmark) can find most of them on one worker: one core busy, the
other idle, the requests queued behind each other (measured: peer-bench at concurrency 8, 100%
server CPU of 200%, half TorchServe's throughput; docs/profile.md). With a socket of its own per
worker, bound to the same address with SO_REUSEPORT, the kernel hands each new connection to one
of the listening sockets by a hash of its addresses: even on average, without any worker waking.

The supervisor (uvicorn's, which restarts dead workers and forwards signals) keeps a bound socket
that never listens: it holds the port, so that a port in use is reported once at start-up, and
receives no connections (only listening sockets do).
"""

from __future__ import annotations

import logging
import socket
import sys

import uvicorn
from uvicorn.supervisors import multiprocess

log = logging.getLogger("uvicorn.error")  # where uvicorn reports its own start-up failures

STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot bind


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (not yet listening)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class OwnSocketProcess(multiprocess.Process):
    """A uvicorn worker that listens on a socket of its own instead of the supervisor's."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # in the worker
        for inherited in sockets or []:
            inherited.close()  # the supervisor's placeholder: never listened on
        own = reuse_port_socket(self.config.host, self.config.port)
        super().target([own])


def run_workers(config: uvicorn.Config) -> None:
    """uvicorn's multi-process supervisor, with one listening socket per worker."""
    try:
        placeholder = reuse_port_socket(config.host, config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    # The supervisor makes its workers through this module-level name; ours listen on their own.
    multiprocess.Process = OwnSocketProcess  # type: ignore[misc]
    multiprocess.Multiprocess(config, sockets=[placeholder]).run()
