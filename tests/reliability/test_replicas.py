"""Replicas for real, on loopback: two api and two web processes behind Caddy.

What deploy/k8s/ asks of Kubernetes (a Service spreading requests over api pods, an ingress
keeping each browser on one web pod, pods stopped one at a time), shown on one machine with a
real PostgreSQL, real uvicorn and Streamlit processes and Caddy (tests/reliability/
replicas.Caddyfile): fewest requests in flight to the api, cookie affinity to the web.

(a) requests reach both api replicas; (b) a browser session stays on its web replica across
reruns and reloads, and has to (its media exist on that replica only); (c) SIGTERM to one api
replica under load loses no prediction: its /readyz fails first, Caddy stops sending to it,
its in-flight requests finish, its queue is flushed, the other replica takes the rest, and the
rows in PostgreSQL are exactly the answered predictions.

    pytest -s tests/reliability/test_replicas.py
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api import drawings
from tests.pg import free_port
from tests.reliability.load import run_load
from tests.reliability.test_load import stored_request_ids
from tests.servers import CLEAN_EXIT, ApiServer, api_env, start_api, wait_for
from tests.web.web_server import WebServer, start_web

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(420)]

CADDYFILE = Path(__file__).with_name("replicas.Caddyfile")
# How long a stopping api keeps serving with /readyz failing; Caddy checks every 0.2 s.
DRAIN_S = 2.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts" / "replicas"


def caddy_binary() -> str:
    found = shutil.which("caddy")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("caddy is missing: .ci/run installs it (apt-get install caddy)")
    pytest.skip("caddy not installed (apt-get install caddy)")


@dataclass
class Caddy:
    process: subprocess.Popen[bytes]
    api_url: str
    web_url: str
    admin_url: str
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_caddy(
    state_dir: Path, api_port: int, web_port: int, apis: list[ApiServer], webs: list[WebServer]
) -> Caddy:
    admin_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # Caddy's own files (autosaved config, storage) in the test's folder, never in ~.
        "HOME": str(state_dir),
        "XDG_DATA_HOME": str(state_dir),
        "XDG_CONFIG_HOME": str(state_dir),
        "STATE_DIR": str(state_dir),
        "ADMIN_PORT": str(admin_port),
        "API_PORT": str(api_port),
        "API_1": str(apis[0].port),
        "API_2": str(apis[1].port),
        "WEB_PORT": str(web_port),
        "WEB_1": web_port_of(webs[0]),
        "WEB_2": web_port_of(webs[1]),
    }
    log_path = state_dir / "caddy.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [caddy_binary(), "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
            cwd=state_dir,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    caddy = Caddy(
        process,
        api_url=f"http://127.0.0.1:{api_port}",
        web_url=f"http://127.0.0.1:{web_port}",
        admin_url=f"http://127.0.0.1:{admin_port}",
        log_path=log_path,
    )
    try:
        wait_for(lambda: httpx.get(caddy.api_url + "/readyz", timeout=2.0).status_code == 200)
        wait_for(
            lambda: httpx.get(caddy.web_url + "/_stcore/health", timeout=2.0).status_code == 200
        )
    except AssertionError:
        caddy.stop()
        raise AssertionError(f"caddy did not come up:\n{caddy.logs()[-3000:]}") from None
    return caddy


def web_port_of(web: WebServer) -> str:
    return web.url.rsplit(":", 1)[1]


@dataclass
class Replicas:
    caddy: Caddy
    apis: list[ApiServer]
    webs: list[WebServer]
    database_url: str
    _stops: list[Any] = field(default_factory=list, repr=False)


@pytest.fixture(scope="module")
def replicas(migrated_database_url: str, reliability_model: Path) -> Iterator[Replicas]:
    caddy_binary()  # fail or skip before starting anything
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    state = tempfile.TemporaryDirectory(prefix="digit-caddy-")
    api_port, web_port = free_port(), free_port()
    env = api_env(
        migrated_database_url, reliability_model, shutdown_drain_s=DRAIN_S, db_pool_max=20
    )
    apis: list[ApiServer] = []
    webs: list[WebServer] = []
    caddy: Caddy | None = None
    try:
        for _ in range(2):
            apis.append(start_api(env, ready_path="/readyz", log_dir=ARTIFACTS))
        # The pages reach the api through Caddy, as web pods reach the api's Service.
        web_env = {"API_URL": f"http://127.0.0.1:{api_port}", "DATABASE_URL": migrated_database_url}
        for _ in range(2):
            webs.append(start_web(web_env, log_dir=ARTIFACTS))
        caddy = start_caddy(Path(state.name), api_port, web_port, apis, webs)
        yield Replicas(caddy, apis, webs, migrated_database_url)
    finally:
        if caddy is not None:
            shutil.copy(caddy.log_path, ARTIFACTS / "caddy.log")
            caddy.stop()
        for web in webs:
            web.stop()
        for api in apis:
            api.cleanup()
        state.cleanup()


def predictions_served(api: ApiServer) -> list[str]:
    """request_ids of the predictions this replica answered (201 stored, 202 queued)."""
    return [
        str(r["request_id"])
        for r in api.log_records()
        if r.get("msg") == "request"
        and r.get("path") == "/v1/predictions"
        and r.get("status") in (201, 202)
    ]


def images() -> list[bytes]:
    return [drawings.drawing_png(digit) for digit in drawings.STROKES]


def answered_ids(outcomes: list[Any]) -> list[str]:
    return sorted(str(o.body["request_id"]) for o in outcomes if o.body and o.status in (201, 202))


# ---- (a) load balancing -------------------------------------------------------------------


def test_requests_reach_both_api_replicas(replicas: Replicas, database_url: str) -> None:
    before = [set(predictions_served(api)) for api in replicas.apis]
    result = run_load(replicas.caddy.api_url, images(), total=200, concurrency=4)

    assert result.errors() == []
    assert result.statuses() == {201: 200}
    answered = answered_ids(result.outcomes)

    def per_replica_now() -> list[set[str]]:
        return [
            set(predictions_served(api)) - seen
            for api, seen in zip(replicas.apis, before, strict=True)
        ]

    # A request's log line is written just after its answer is sent.
    wait_for(lambda: sum(len(served) for served in per_replica_now()) >= len(answered), 10.0)
    per_replica = per_replica_now()
    print(f"\n200 predictions through Caddy: {[len(s) for s in per_replica]} per api replica")
    # Fewest in flight: each replica took about half; together exactly the answered ones, once each.
    assert all(60 <= len(served) <= 140 for served in per_replica), per_replica
    assert per_replica[0].isdisjoint(per_replica[1])
    assert sorted(per_replica[0] | per_replica[1]) == answered
    assert sorted(stored_request_ids(database_url)) == answered


# ---- (b) sticky web sessions --------------------------------------------------------------


def test_clients_without_a_cookie_are_spread_over_both_web_replicas(replicas: Replicas) -> None:
    seen: Counter[str] = Counter()
    for _ in range(16):
        answer = httpx.get(replicas.caddy.web_url + "/", timeout=10.0)
        assert answer.status_code == 200
        seen[answer.headers["X-Web-Replica"]] += 1
    assert set(seen) == {web_port_of(web) for web in replicas.webs}, seen


def test_a_client_with_the_cookie_stays_on_its_web_replica(replicas: Replicas) -> None:
    with httpx.Client(base_url=replicas.caddy.web_url, timeout=10.0) as client:
        first = client.get("/")
        assert "digit_web" in client.cookies  # Caddy's affinity cookie
        replica = first.headers["X-Web-Replica"]
        for path in ["/", "/_stcore/health", "/", "/_stcore/host-config"] * 3:
            assert client.get(path).headers["X-Web-Replica"] == replica


@pytest.mark.browser
def test_a_browser_session_stays_on_its_web_replica_across_reruns(
    replicas: Replicas, database_url: str
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import Response, sync_playwright

    from tests.web.test_browser import DIGITS, _draw, _predict, _wait_idle

    served_by: list[tuple[str, int, str | None]] = []  # (path, status, replica)

    def record(response: Response) -> None:
        if response.url.startswith(replicas.caddy.web_url):
            path = response.url.removeprefix(replicas.caddy.web_url)
            served_by.append((path, response.status, response.headers.get("x-web-replica")))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1200})
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("response", record)
        try:
            page.goto(replicas.caddy.web_url)
            _wait_idle(page)
            media: list[str] = []
            # Each Predict is a rerun on the session's websocket; each result brings an image
            # that Streamlit keeps in that process's memory and serves under /media/.
            for digit in (1, 7):
                _draw(page, DIGITS[digit])
                _predict(page)
                image = page.locator('[data-testid="stImage"] img').first
                image.wait_for()
                media.append(str(image.get_attribute("src")))
                page.get_by_role("button", name="Clear", exact=True).click()  # one more rerun
                _wait_idle(page)
            page.screenshot(path=str(ARTIFACTS / "sticky-session-result.png"))
            page.reload()  # a new session in the same browser: the cookie keeps the replica
            _wait_idle(page)
            page.screenshot(path=str(ARTIFACTS / "sticky-session-reloaded.png"))
        finally:
            context.close()
            browser.close()

    replicas_seen = {replica for _, _, replica in served_by}
    print(f"\nbrowser: {len(served_by)} responses, all from web replica(s) {replicas_seen}")
    assert len(replicas_seen) == 1, served_by
    (replica,) = replicas_seen
    media_answers = [(path, status) for path, status, _ in served_by if path.startswith("/media/")]
    assert len(media_answers) >= 2 and all(status == 200 for _, status in media_answers)
    assert len([p for p in served_by if p[0] in ("/", "")]) >= 2  # first load and the reload
    # Without affinity the page breaks: the other replica has never heard of these images.
    other = next(web for web in replicas.webs if web_port_of(web) != replica)
    for src in media:
        path = "/" + src.split("/", 3)[3] if src.startswith("http") else src
        assert httpx.get(other.url + path, timeout=5.0).status_code == 404, path
    # And the predictions the browser asked for went through the api replicas into PostgreSQL.
    assert len(stored_request_ids(database_url)) == 2


# ---- (c) one api replica stopped under load -------------------------------------------------


def test_sigterm_to_one_api_replica_under_load_loses_nothing(
    replicas: Replicas, database_url: str
) -> None:
    stopping, staying = replicas.apis
    served_before = [len(predictions_served(api)) for api in replicas.apis]
    stop_load = threading.Event()
    results: list[Any] = []
    loader = threading.Thread(
        target=lambda: results.append(
            run_load(replicas.caddy.api_url, images(), concurrency=8, stop=stop_load)
        )
    )
    # The stopping replica's /readyz, as Caddy sees it: (wall-clock time, status).
    readiness: list[tuple[float, int]] = []

    def watch_readiness() -> None:
        with httpx.Client(timeout=1.0) as client:
            while stopping.is_running():
                try:
                    status = client.get(stopping.url + "/readyz").status_code
                except httpx.HTTPError:
                    status = 0  # not listening any more
                readiness.append((time.time(), status))
                time.sleep(0.05)

    loader.start()
    watcher = threading.Thread(target=watch_readiness)
    try:
        time.sleep(2.0)
        watcher.start()
        sigterm_at = time.time()
        stopping.process.send_signal(signal.SIGTERM)
        exit_status = stopping.process.wait(30)
        stopped_at = time.time()
        time.sleep(2.0)  # the load goes on against the one replica left
    finally:
        stop_load.set()
        loader.join()
        watcher.join()
    result = results[0]
    statuses = result.statuses()
    after = [len(predictions_served(api)) for api in replicas.apis]
    print(
        f"\nload through SIGTERM to one of two api replicas: {statuses} in {result.seconds:.1f} s;"
        f" served {[a - b for a, b in zip(after, served_before, strict=True)]} per replica;"
        f" shutdown took {stopped_at - sigterm_at:.1f} s"
    )

    # Every request was answered, none failed, not one was lost.
    assert exit_status in CLEAN_EXIT, stopping.logs()[-3000:]
    assert result.errors() == []
    assert set(statuses) <= {201, 202}, statuses
    answered = answered_ids(result.outcomes)
    assert len(answered) == len(result.outcomes) > 100
    wait_for(lambda: len(stored_request_ids(database_url)) >= len(answered))
    assert sorted(stored_request_ids(database_url)) == answered

    # Readiness failed first: 503 while it still listened, for about the drain period.
    after_sigterm = [status for at, status in readiness if at >= sigterm_at]
    assert 503 in after_sigterm, readiness
    first_503 = after_sigterm.index(503)
    assert 200 not in after_sigterm[first_503:]
    draining = [at for at, status in readiness if status == 503]
    assert draining[-1] - draining[0] >= DRAIN_S * 0.7, draining
    # Both replicas served during the load; the one left served everything after the stop.
    assert after[0] > served_before[0] and after[1] > served_before[1]
    records = stopping.log_records()
    messages = [r.get("msg") for r in records]
    assert "SIGTERM: draining before shutdown" in messages
    assert "api stopped" in messages  # the lifespan ran to its end: the queue was flushed
    assert not [r for r in records if r.get("lost_rows")], "rows left in the queue"
    failed = [r for r in records if r.get("status", 0) >= 500 and r.get("path") != "/readyz"]
    assert not failed, failed
    assert staying.is_running()
    # Caddy took the draining replica out of rotation by its health check (every 0.2 s), well
    # before the replica closed its listener: its last prediction ended soon after the first 503.
    last_served = max(
        datetime.fromisoformat(r["ts"]).timestamp()
        for r in records
        if r.get("msg") == "request" and r.get("path") == "/v1/predictions"
    )
    print(
        f"first 503 {draining[0] - sigterm_at:.2f} s after SIGTERM; last prediction on the"
        f" stopping replica {last_served - draining[0]:.2f} s after that; listener closed"
        f" {draining[-1] - sigterm_at:.2f} s after SIGTERM"
    )
    assert last_served - draining[0] < DRAIN_S * 0.75
