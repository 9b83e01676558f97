"""`python -m digit_predictor.api`: how many workers, and every worker flushes on shutdown."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

import digit_predictor.api.workers as workers_module
from digit_predictor.api.workers import (
    STARTUP_FAILURE,
    ConnectionBalance,
    ConnectionShares,
    CpuPlan,
    cpus_to_pin,
    hold_port,
    least_used_cpu,
    reuse_port_socket,
)
from digit_predictor.cpus import cgroup_cpu_limit, usable_cpus
from digit_predictor.db import Database, queries
from digit_predictor.testing.api_server import (
    ApiServer,
    app_free_environ,
    listening_sockets,
    start_api,
)
from tests.api import drawings
from tests.api.test_outage import database_down, post
from tests.pg import PostgresServer
from tests.servers import CLEAN_EXIT, ServerFailed, api_env, api_server, wait_for


def _files(tmp_path: Path, **contents: str) -> dict[str, Path]:
    paths = {}
    for name, text in contents.items():
        paths[name] = tmp_path / name
        paths[name].write_text(text)
    return paths


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("200000 100000\n", 2.0)],
)
def test_cgroup_v2_quota_in_cpus(tmp_path: Path, cpu_max: str, expected: float | None) -> None:
    f = _files(tmp_path, cpu_max=cpu_max)
    missing = tmp_path / "missing"
    assert cgroup_cpu_limit(f["cpu_max"], missing, missing) == expected


def test_cgroup_v1_quota_in_cpus(tmp_path: Path) -> None:
    f = _files(tmp_path, quota="50000\n", period="100000\n", unlimited="-1\n")
    missing = tmp_path / "missing"
    assert cgroup_cpu_limit(missing, f["quota"], f["period"]) == 0.5
    assert cgroup_cpu_limit(missing, f["unlimited"], f["period"]) is None
    assert cgroup_cpu_limit(missing, missing, missing) is None


def test_usable_cpus_follows_affinity_and_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    import digit_predictor.cpus as entry

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(entry, "cgroup_cpu_limit", lambda: None)
    assert usable_cpus() == 4
    monkeypatch.setattr(entry, "cgroup_cpu_limit", lambda: 1.5)  # a 1.5-CPU container
    assert usable_cpus() == 2
    monkeypatch.setattr(entry, "cgroup_cpu_limit", lambda: 0.25)
    assert usable_cpus() == 1


def test_workers_are_pinned_only_when_there_is_one_cpu_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 1})
    monkeypatch.setattr(workers_module, "usable_cpus", lambda: 2)
    assert cpus_to_pin(2) == [1, 3]
    assert cpus_to_pin(3) is None  # more workers than CPUs (API_WORKERS=3)
    assert cpus_to_pin(1) is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert cpus_to_pin(2) is None  # a 2-CPU quota on a 16-CPU host: the CPUs are shared
    monkeypatch.setattr(workers_module, "usable_cpus", lambda: 16)
    assert cpus_to_pin(16) == list(range(16))


def test_a_new_worker_takes_the_cpu_fewest_live_workers_run_on() -> None:
    assert least_used_cpu([0, 1], []) == 0
    assert least_used_cpu([0, 1], [0]) == 1
    assert least_used_cpu([2, 5], [2]) == 5
    assert least_used_cpu([0, 1], [1]) == 0  # the worker on CPU 0 died: its replacement
    # SIGHUP: each replacement starts before the worker it replaces (the oldest) is retired,
    # and takes that worker's CPU.
    assert least_used_cpu([0, 1], [0, 1]) == 0
    assert least_used_cpu([0, 1], [1, 0]) == 1
    assert least_used_cpu([0, 1], [0, 1, 0]) == 1  # the first retired worker still stopping


class _FakeWorker:
    """What CpuPlan reads of a uvicorn worker: its process's exit code."""

    def __init__(self) -> None:
        self.process = self
        self.exitcode: int | None = None


def test_a_restart_keeps_one_worker_per_cpu() -> None:
    plan = CpuPlan([0, 1])
    a, b = _FakeWorker(), _FakeWorker()
    assert [plan.assign(a), plan.assign(b)] == [0, 1]  # type: ignore[arg-type]
    # uvicorn's restart (SIGHUP): a replacement, then the worker it replaces retires.
    a2 = _FakeWorker()
    assert plan.assign(a2) == 0  # type: ignore[arg-type]
    a.exitcode = 0
    b2 = _FakeWorker()
    assert plan.assign(b2) == 1  # type: ignore[arg-type]
    b.exitcode = 0
    # A worker that crashed is replaced on its own CPU.
    a2.exitcode = -9
    assert plan.assign(_FakeWorker()) == 0  # type: ignore[arg-type]


def _cpus_of_every_thread(pid: int) -> set[frozenset[int]]:
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.parametrize("pin", [True, False])
def test_with_one_worker_per_cpu_each_worker_runs_on_its_own(
    database_url: str, model_path: Path, pin: bool
) -> None:
    mine = os.sched_getaffinity(0)
    two = set(sorted(mine)[:2])
    os.sched_setaffinity(0, two)  # the api inherits it: two CPUs, two workers, on any machine
    try:
        if cpus_to_pin(2) is None:
            pytest.skip("fewer than two usable CPUs here")
        env = {**api_env(database_url, model_path), "API_PIN_WORKERS": str(pin).lower()}
        with api_server(env, workers=2) as api:
            records = api.log_records()
            pids = {r["pid"] for r in records if r.get("msg") == "api ready to serve"}
            assert len(pids) == 2
            masks = {pid: _cpus_of_every_thread(pid) for pid in pids}
    finally:
        os.sched_setaffinity(0, mine)
    if pin:
        # Every thread of a worker (event loop, compute, writer, ...) on one CPU; one CPU each.
        assert all(
            len(threads) == 1 and len(next(iter(threads))) == 1 for threads in masks.values()
        ), masks
        assert set().union(*(next(iter(t)) for t in masks.values())) == two, masks
    else:
        assert all(threads == {frozenset(two)} for threads in masks.values()), masks


def test_graceful_stop_flushes_every_workers_queue(
    pg_server: PostgresServer, database_url: str, model_path: Path, db: Database
) -> None:
    pg_server.require_control()
    with api_server(api_env(database_url, model_path), workers=2) as api:
        queued: list[httpx.Response] = []
        with database_down(pg_server):
            # A new connection per request: the kernel hands them to both workers.
            for i in range(16):
                with api.client() as client:
                    queued.append(post(client, drawings.drawing_png(1, shift=(i, 0))))
            assert [r.status_code for r in queued] == [202] * len(queued)
        # The database is back; stop at once: each worker writes its own queue on the way out.
        assert api.stop() in CLEAN_EXIT
        records = api.log_records()
    workers_with_queued_rows = {
        r["pid"] for r in records if r.get("msg") == "request" and r.get("status") == 202
    }
    assert len(workers_with_queued_rows) == 2, "the load did not reach both workers"
    stopped = {r["pid"] for r in records if r.get("msg") == "api stopped"}
    assert workers_with_queued_rows <= stopped
    assert not any("could not be written" in r.get("msg", "") for r in records)
    stored = {str(r.request_id) for r in queries.recent_predictions(db, limit=100)}
    assert stored == {r.json()["request_id"] for r in queued}


def test_connections_opened_at_once_are_spread_over_the_workers(
    database_url: str, model_path: Path
) -> None:
    # 32 connections opened in one burst (as a browser, a proxy's pool or a benchmark does):
    # with one shared listening socket the worker that woke first took most of them (measured:
    # one core busy at concurrency 8). Each worker now listens on its own socket and the kernel
    # spreads connections by a hash: fewer than 4 on either worker has odds of 1 in 400,000.
    with api_server(api_env(database_url, model_path), workers=2) as api:
        host, port = api.url.removeprefix("http://").split(":")
        connections = [http.client.HTTPConnection(host, int(port), timeout=10) for _ in range(32)]
        for connection in connections:
            connection.connect()
        for connection in connections:
            connection.request("GET", "/healthz")
        request_ids = []
        for connection in connections:
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            request_ids.append(response.getheader("X-Request-ID"))
            connection.close()
        api.stop()
        records = api.log_records()
    answered_by = Counter(
        r["pid"] for r in records if r.get("msg") == "request" and r["request_id"] in request_ids
    )
    assert sum(answered_by.values()) == 32
    assert len(answered_by) == 2 and min(answered_by.values()) >= 4, answered_by


def test_a_port_in_use_stops_the_workers_supervisor_with_a_clear_error(
    database_url: str, model_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerFailed, match=r"(?i)address already in use"):
            start_api(api_env(database_url, model_path), workers=2, port=port, timeout_s=30)


def _shares_with_another_worker(pid: int, connections: int) -> ConnectionShares:
    shares = ConnectionShares(2)
    assert shares.claim()  # slot 0: this process
    shares._table[2], shares._table[3] = pid, connections  # slot 1: the other worker
    return shares


def test_replacements_get_slots_and_a_worker_without_one_runs_unbalanced() -> None:
    shares = ConnectionShares(1)
    assert shares.claim()
    assert shares.claim()  # a replacement started before the worker it replaces stops
    assert not shares.claim()  # beyond that: no slot, no balancing, no crash


def test_a_worker_over_its_share_of_connections_closes_one_at_a_time() -> None:
    mine = 17
    balance = ConnectionBalance(_shares_with_another_worker(os.getpid(), 15), lambda: mine)
    assert balance.should_close()  # 17 of 32: its share is 16
    assert not balance.should_close()  # the count needs a moment to catch up: one at a time
    time.sleep(ConnectionBalance.SHED_EVERY_S * 1.5)
    assert balance.should_close()
    mine = 16
    time.sleep(ConnectionBalance.SHED_EVERY_S * 1.5)
    assert not balance.should_close()  # even
    mine = 17
    balance = ConnectionBalance(_shares_with_another_worker(os.getpid(), 16), lambda: mine)
    assert not balance.should_close()  # 17 of 33 is its share, rounded up


def test_a_dead_workers_last_count_is_left_out() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # The dead worker's last count would make 20 of 30 look over its share; alone, it is not.
    balance = ConnectionBalance(_shares_with_another_worker(dead.pid, 10), lambda: 20)
    assert not balance.should_close()


def _workers_that_answered(api: ApiServer, request_ids: list[str]) -> dict[str, int]:
    """request id -> pid of the worker that answered, from the api's log. A request's line is
    written as its response goes out, so it may lag the client a little: wait for all."""
    pid_of: dict[str, int] = {}

    def logged() -> bool:
        records = api.log_records()
        pid_of.update((r["request_id"], r["pid"]) for r in records if r.get("msg") == "request")
        return all(i in pid_of for i in request_ids)

    wait_for(logged, timeout_s=10)
    return pid_of


def test_connections_opened_at_once_end_up_even_over_the_workers(
    database_url: str, model_path: Path
) -> None:
    # The kernel's hash splits a burst of connections evenly only on average (20/12 is common
    # for 32); a worker over its share answers with `Connection: close` until they are even.
    with api_server(api_env(database_url, model_path), workers=2) as api:
        host, port = api.url.removeprefix("http://").split(":")
        for _attempt in range(10):  # until a burst starts uneven, which most do
            connections = [
                http.client.HTTPConnection(host, int(port), timeout=10) for _ in range(32)
            ]
            rounds: list[list[str]] = []
            closed = 0
            for _round in range(30):
                request_ids = []
                for connection in connections:
                    connection.request("GET", "/healthz")  # reconnects if the last one closed
                    response = connection.getresponse()
                    response.read()
                    assert response.status == 200
                    closed += response.getheader("connection", "").lower() == "close"
                    request_ids.append(str(response.getheader("X-Request-ID")))
                rounds.append(request_ids)
            for connection in connections:
                connection.close()
            pid_of = _workers_that_answered(api, rounds[0] + rounds[-1])
            first, last = (Counter(pid_of[i] for i in ids) for ids in (rounds[0], rounds[-1]))
            if min(first.values(), default=0) <= 14 or len(first) < 2:
                break
        else:
            pytest.skip("ten bursts of 32 connections all started even")  # odds: about 1 in 9,000
    assert closed > 0
    assert len(last) == 2 and min(last.values()) >= 15, (first, last)


def test_a_held_port_takes_this_apis_workers_and_refuses_another_api() -> None:
    # Before any worker listens (the model takes seconds to load), the placeholder alone must
    # keep a second api out, while letting this api's workers in.
    with hold_port("127.0.0.1", 0) as placeholder:
        port = placeholder.getsockname()[1]
        with pytest.raises(OSError, match=r"(?i)address already in use"):
            hold_port("127.0.0.1", port).close()
        with reuse_port_socket("127.0.0.1", port) as worker:
            worker.listen()
            with pytest.raises(OSError, match=r"(?i)address already in use"):
                hold_port("127.0.0.1", port).close()


@pytest.mark.parametrize("second_workers", [2, 1])
def test_a_second_api_on_the_same_port_is_refused_and_the_first_keeps_every_connection(
    database_url: str, model_path: Path, second_workers: int
) -> None:
    # SO_REUSEPORT would let a second api (same user) join the first one's port and silently
    # take half its connections: a stale copy, a second `make dev`.
    env = api_env(database_url, model_path)
    with api_server(env, workers=2) as api:
        second = subprocess.run(
            [sys.executable, "-m", "digit_predictor.api"],
            env={
                **app_free_environ(),
                **env,
                "API_HOST": "127.0.0.1",
                "API_PORT": str(api.port),
                "API_WORKERS": str(second_workers),
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == STARTUP_FAILURE, second.stdout + second.stderr
        assert "address already in use" in (second.stdout + second.stderr).lower()
        assert listening_sockets(api.port) == 2
        request_ids = []
        for _ in range(20):  # a new connection each: the kernel spreads them over the listeners
            with api.client() as client:
                response = client.get("/healthz")
                assert response.status_code == 200
                request_ids.append(response.headers["X-Request-ID"])
        api.stop()
        records = api.log_records()
    logged = {r["request_id"] for r in records if r.get("msg") == "request"}
    assert set(request_ids) <= logged  # every one answered by this api's workers


def test_workers_stop_when_their_supervisor_is_killed(database_url: str, model_path: Path) -> None:
    # SIGKILL reaches only the supervisor (OOM killer, `kill -9`, a crashed container runtime's
    # shim): its workers must not serve on as orphans that nobody restarts or stops.
    with api_server(api_env(database_url, model_path), workers=2) as api:
        workers = {r["pid"] for r in api.log_records() if r.get("msg") == "api ready to serve"}
        assert len(workers) == 2
        api.kill()
        wait_for(lambda: listening_sockets(api.port) == 0, timeout_s=20)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), timeout_s=20)
        records = api.log_records()
    gone = "the api's supervisor is gone: stopping this worker"
    assert {r["pid"] for r in records if r.get("msg") == gone} == workers
    assert {r["pid"] for r in records if r.get("msg") == "api stopped"} == workers  # gracefully


def test_with_a_spool_a_worker_killed_during_an_outage_loses_nothing(
    pg_server: PostgresServer, database_url: str, model_path: Path, db: Database, tmp_path: Path
) -> None:
    pg_server.require_control()
    env = api_env(database_url, model_path, write_spool_dir=tmp_path / "spool")
    with database_down(pg_server), api_server(env) as api:
        with api.client() as client:
            queued = [post(client, drawings.drawing_png(1, shift=(i, 0))) for i in range(5)]
        assert [r.status_code for r in queued] == [202] * 5
        api.kill()  # SIGKILL: no lifespan, no flush
    assert list((tmp_path / "spool").glob("spool-*.sqlite"))  # the rows are on disk
    # PostgreSQL is back; a new api with the same spool takes the dead worker's rows over.
    with api_server(env) as api, api.client() as client:
        wait_for(lambda: queries.count_predictions(db) == 5)
        assert client.get("/readyz").json()["queued_writes"] == 0
        api.stop()
    stored = {str(r.request_id) for r in queries.recent_predictions(db, limit=100)}
    assert stored == {r.json()["request_id"] for r in queued}
    assert list((tmp_path / "spool").glob("spool-*")) == []  # written, then removed


WORKER_RSS_LIMIT_MIB = 300  # issue 16


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kib) / 1024


def _holds_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_a_worker_that_predicts_never_loads_torch_and_one_that_explains_does(
    database_url: str, model_path: Path
) -> None:
    # The model runs as an ONNX graph (ml/serving.py); torch comes in only for gradients.
    with api_server(api_env(database_url, model_path)) as api, api.client() as client:
        pid = api.process.pid  # one worker: uvicorn runs it in this process
        ids = []
        for i in range(40):
            response = post(client, drawings.drawing_png((0, 1, 4, 7)[i % 4], shift=(i - 20, 0)))
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        assert not _holds_torch(pid)
        assert _rss_mib(pid) <= WORKER_RSS_LIMIT_MIB
        explained = client.get(f"/v1/predictions/{ids[0]}/explanation")
        assert explained.status_code == 200, explained.text
        assert _holds_torch(pid)
