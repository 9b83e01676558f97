"""The api's worker processes: one listening socket per worker (SO_REUSEPORT), one port per api,
and no worker outliving its supervisor.

uvicorn's workers share one listening socket. Whichever worker's event loop wakes first accepts
every connection that is waiting, so a client that opens its connections in a burst (a browser,
a load balancer's pool, a benchmark) can find most of them on one worker: one core busy, the
other idle, the requests queued behind each other (measured: peer-bench at concurrency 8, 100%
server CPU of 200%, half TorchServe's throughput; docs/profile.md). With a socket of its own per
worker, bound to the same address with SO_REUSEPORT, the kernel hands each new connection to one
of the listening sockets by a hash of its addresses: even on average, without any worker waking.

SO_REUSEPORT lets any process of the same user join the port, a second api included: started
twice on one port (or while workers of a killed api still run), two apis would split the
connections between them, silently. So the supervisor holds the port with a bound socket that
never listens, made so that only its own workers can join it (`hold_port`): a second api is
refused at start-up, "address already in use", as with one shared socket. And each worker
stops (gracefully: it flushes its queue) when its supervisor dies, even by SIGKILL, instead of
serving on as an orphan that nobody restarts or stops.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading

import uvicorn
from uvicorn.supervisors import multiprocess

log = logging.getLogger("uvicorn.error")  # where uvicorn reports its own start-up failures

STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot bind


def _tcp_socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A worker's TCP socket bound to host:port with SO_REUSEPORT (not yet listening)."""
    sock = _tcp_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def hold_port(host: str, port: int) -> socket.socket:
    """The supervisor's placeholder: bound to host:port, never listening, so that the workers
    can join it and nobody else can. Raises OSError (EADDRINUSE) if the port is taken.

    First a probe with SO_REUSEADDR alone: it ignores connections left in TIME_WAIT by an api
    that just stopped, but fails where any socket listens, SO_REUSEPORT or not (a bind joins a
    SO_REUSEPORT group only if it asks to). Then the placeholder, with SO_REUSEPORT but without
    SO_REUSEADDR: the workers' sockets join it by SO_REUSEPORT, while another api's probe,
    lacking SO_REUSEPORT, finds it in the way even before any of our workers listens."""
    with _tcp_socket(host) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    sock = _tcp_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def stop_when_parent_dies() -> None:
    """SIGTERM this process (uvicorn's graceful shutdown) once the process that spawned it has
    ended, however it ended. multiprocessing gives a spawned child a pipe from its parent that
    reaches end-of-file when the parent is gone; a thread waits on it."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns once the parent has exited
        log.warning("the api's supervisor is gone: stopping this worker")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


class OwnSocketProcess(multiprocess.Process):
    """A uvicorn worker that listens on a socket of its own instead of the supervisor's, and
    stops when the supervisor is gone."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # in the worker
        stop_when_parent_dies()
        for inherited in sockets or []:
            inherited.close()  # the supervisor's placeholder: never listened on
        own = reuse_port_socket(self.config.host, self.config.port)
        super().target([own])


def run_workers(config: uvicorn.Config) -> None:
    """uvicorn's multi-process supervisor, with one listening socket per worker."""
    try:
        placeholder = hold_port(config.host, config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    # The supervisor makes its workers through this module-level name; ours listen on their own.
    multiprocess.Process = OwnSocketProcess  # type: ignore[misc]
    multiprocess.Multiprocess(config, sockets=[placeholder]).run()
