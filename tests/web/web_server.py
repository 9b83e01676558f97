"""Run the Streamlit web app as a real subprocess, exactly as the containers and `make dev` do.

    with web_server({"API_URL": api.url, "DATABASE_URL": url}) as web:
        page.goto(web.url)

Like tests/servers.py for the api: a working directory of its own (no developer `.env`) that
holds only a link to src/, so the script path is the same relative `src/digit_predictor/web/app.py`
the containers use; the app settings given in `env` and none inherited; output to a log file;
ready once `/_stcore/health` answers.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.servers import APP_SETTINGS, ServerFailed, free_port

ROOT = Path(__file__).resolve().parents[2]
APP = "src/digit_predictor/web/app.py"  # relative, as in Dockerfile.web and scripts/dev.sh


@dataclass
class WebServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def is_running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                raise ServerFailed(
                    f"streamlit exited with {self.process.returncode}\n{self.logs()}"
                )
            try:
                if httpx.get(self.url + "/_stcore/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ServerFailed(f"streamlit not ready at {self.url} within {timeout_s} s\n{self.logs()}")

    def stop(self) -> None:
        if self.is_running():
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def start_web(
    env: Mapping[str, str], *, log_dir: str | Path | None = None, timeout_s: float = 60.0
) -> WebServer:
    import os

    base = {k: v for k, v in os.environ.items() if k not in APP_SETTINGS}
    full_env = {**base, **env, "PYTHONUNBUFFERED": "1"}
    workdir = tempfile.TemporaryDirectory(prefix="digit-web-")
    (Path(workdir.name) / "src").symlink_to(ROOT / "src", target_is_directory=True)
    log_path = Path(log_dir or workdir.name) / f"web-{time.time_ns()}.log"
    port = free_port()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                APP,
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=workdir.name,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = WebServer(f"http://127.0.0.1:{port}", process, log_path, workdir)
    try:
        server.wait_ready(timeout_s)
    except ServerFailed:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def web_server(env: Mapping[str, str], **kwargs: object) -> Iterator[WebServer]:
    server = start_web(env, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
