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

The kernel's hash spreads connections evenly only on average: 32 connections opened at once
often split 20/12, and as both workers answer about as many requests per second, each request
on the fuller worker waits longer (measured: p50 50 against 30 ms, p99 75 against 50 ms). So the
workers publish how many connections each holds (`ConnectionShares`, memory the supervisor
shares with them), and a worker holding more than its share asks a client to reconnect: it
answers one request with `Connection: close` (`ConnectionBalanceMiddleware`), and the client's
next connection is hashed again. Once even, nothing more happens.

When there are exactly as many workers as CPUs this process may use, each worker runs on a CPU
of its own (`cpus_to_pin`, `CpuPlan`): its event loop, compute thread and writer then share one
core's caches instead of following each other around, and the scheduler stops moving busy
workers between cores (measured at c=32: 4% more answers a second, p99 a few ms lower;
docs/profile.md). PostgreSQL's backends are not pinned.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.sharedctypes import RawArray
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.supervisors import multiprocess

from digit_predictor.cpus import usable_cpus

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


class ConnectionShares:
    """How many connections each worker holds: one (pid, connections) pair per worker, in
    memory shared by the supervisor and its workers (made before they are spawned).

    Counts are written and read without a lock (aligned 64-bit words): a count read a moment
    late only delays a decision. Only claiming a slot takes the lock."""

    def __init__(self, workers: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        # Twice the workers: uvicorn's restart (SIGHUP) starts each replacement before it
        # retires the worker it replaces.
        self._table: Any = RawArray("q", 2 * 2 * workers)
        self._lock = ctx.Lock()
        self.slot = -1  # this worker's, once claimed

    def claim(self) -> bool:
        """Take a free slot (or a dead worker's) for this process; False if none is left (more
        workers than foreseen: SIGTTIN adds one), and then this worker does not balance."""
        with self._lock:
            for slot in range(len(self._table) // 2):
                pid = self._table[2 * slot]
                if pid == 0 or not _alive(pid):
                    self._table[2 * slot] = os.getpid()
                    self._table[2 * slot + 1] = 0
                    self.slot = slot
                    return True
        return False

    def publish(self, connections: int) -> None:
        self._table[2 * self.slot + 1] = connections

    def others(self) -> list[int]:
        """The connections of each other live worker. A worker that died (or was retired by a
        restart) keeps its last count in its slot: it is left out."""
        table = self._table
        return [
            table[2 * slot + 1]
            for slot in range(len(table) // 2)
            if slot != self.slot and table[2 * slot] and _alive(table[2 * slot])
        ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone (or the pid is someone else's now)
        return False
    return True


def _fair_share(mine: int, others: list[int]) -> int:
    """Each worker's share of all the connections, rounded up."""
    return -(-(mine + sum(others)) // (1 + len(others)))


class ConnectionBalance:
    """In a worker: whether to ask the client of the response about to start to reconnect."""

    SHED_EVERY_S = 0.01  # at most one a 10 ms: the counts need a moment to catch up

    def __init__(self, shares: ConnectionShares, count_connections: Callable[[], int]) -> None:
        self._shares = shares
        self._count = count_connections
        self._last_shed = 0.0

    def should_close(self) -> bool:
        mine = self._count()
        self._shares.publish(mine)
        others = self._shares.others()
        if not others or mine <= _fair_share(mine, others):
            return False
        now = time.monotonic()
        if now - self._last_shed < self.SHED_EVERY_S:
            return False
        self._last_shed = now
        return True


CONNECTION_CLOSE = (b"connection", b"close")


class ConnectionBalanceMiddleware:
    """Answers a request with `Connection: close` when this worker holds more than its share of
    the open connections (see the module's docstring); uvicorn then closes the connection after
    the response, and the client opens a new one, which the kernel may give another worker."""

    def __init__(self, app: ASGIApp, *, balance: ConnectionBalance) -> None:
        self.app = app
        self.balance = balance

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def balanced_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                closing = any(
                    name.lower() == b"connection" and value.lower() == b"close"
                    for name, value in headers
                )
                if not closing and self.balance.should_close():
                    message = {**message, "headers": [*headers, CONNECTION_CLOSE]}
            await send(message)

        await self.app(scope, receive, balanced_send)


# Set in each worker of a multi-worker api before its app is made (`create_app` asks for it).
_balance: ConnectionBalance | None = None


def connection_balance() -> ConnectionBalance | None:
    return _balance


def cpus_to_pin(workers: int) -> list[int] | None:
    """The CPUs to give one worker each, or None (the kernel places the workers): only when the
    workers are exactly as many as the CPUs this process may run on, with no cgroup quota below
    that. In a container limited by quota alone (the usual Kubernetes CPU limit) the affinity
    holds every CPU of the host, shared with others: pinning there would only take choices away
    from the scheduler."""
    cpus = sorted(os.sched_getaffinity(0))
    if workers < 2 or workers != len(cpus) or usable_cpus() != len(cpus):
        return None
    return cpus


def least_used_cpu(cpus: Sequence[int], taken: Sequence[int]) -> int:
    """The CPU for a new worker: the one fewest live workers run on. `taken` holds the CPUs of the
    live workers, oldest first; on a tie the oldest's CPU wins, since uvicorn replaces workers
    oldest first and starts each replacement before it retires the worker it replaces (SIGHUP),
    so the replacement takes over the CPU of the worker it is about to replace."""
    counts = {cpu: 0 for cpu in cpus}
    for cpu in taken:
        if cpu in counts:
            counts[cpu] += 1
    fewest = min(counts.values())
    for cpu in taken:
        if counts.get(cpu) == fewest:
            return cpu
    return next(cpu for cpu in cpus if counts[cpu] == fewest)


class CpuPlan:
    """In the supervisor: which CPU each new worker gets (`least_used_cpu` over the live ones)."""

    def __init__(self, cpus: Sequence[int]) -> None:
        self.cpus = list(cpus)
        self._workers: list[tuple[multiprocess.Process, int]] = []  # oldest first

    def assign(self, worker: multiprocess.Process) -> int:
        # A worker made but not started yet counts as live: it is about to start.
        self._workers = [(w, cpu) for w, cpu in self._workers if w.process.exitcode is None]
        cpu = least_used_cpu(self.cpus, [cpu for _, cpu in self._workers])
        self._workers.append((worker, cpu))
        return cpu


class OwnSocketProcess(multiprocess.Process):
    """A uvicorn worker that listens on a socket of its own instead of the supervisor's, stops
    when the supervisor is gone, keeps its share of the connections even, and runs on a CPU of
    its own when there is one per worker."""

    # Set by run_workers, before any worker is made (uvicorn makes them, from this class).
    shares: ConnectionShares | None = None
    cpu_plan: CpuPlan | None = None

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        # Both pickled with the process when it is spawned.
        self._shares = OwnSocketProcess.shares
        plan = OwnSocketProcess.cpu_plan
        self._cpu = plan.assign(self) if plan is not None else None

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # in the worker
        global _balance
        if self._cpu is not None:
            # Before any thread starts: threads inherit the mask of the thread that makes them.
            try:
                os.sched_setaffinity(0, {self._cpu})
            except OSError as exc:  # the CPU went offline since the supervisor looked
                log.warning("worker runs unpinned: cannot pin it to CPU %s: %s", self._cpu, exc)
        stop_when_parent_dies()
        if self._shares is not None and self._shares.claim():
            connections = self.server.server_state.connections
            _balance = ConnectionBalance(self._shares, lambda: len(connections))
        for inherited in sockets or []:
            inherited.close()  # the supervisor's placeholder: never listened on
        own = reuse_port_socket(self.config.host, self.config.port)
        super().target([own])


def run_workers(config: uvicorn.Config, *, pin_cpus: bool = True) -> None:
    """uvicorn's multi-process supervisor, with one listening socket per worker, and a CPU of its
    own per worker when `pin_cpus` and `cpus_to_pin` finds one for each."""
    try:
        placeholder = hold_port(config.host, config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    # The supervisor makes its workers through this module-level name; ours listen on their own.
    OwnSocketProcess.shares = ConnectionShares(config.workers)
    cpus = cpus_to_pin(config.workers) if pin_cpus else None
    OwnSocketProcess.cpu_plan = CpuPlan(cpus) if cpus is not None else None
    multiprocess.Process = OwnSocketProcess  # type: ignore[misc]
    multiprocess.Multiprocess(config, sockets=[placeholder]).run()
