"""Run the Streamlit web app as a real subprocess, exactly as the containers and `make dev` do.

    with web_server({"API_URL": api.url, "DATABASE_URL": url}) as web:
        page.goto(web.url)

Like api_server.py for the api: a working directory of its own (no developer `.env`) that
holds only a link to src/, so the script path is the same relative `src/digit_predictor/web/app.py`
the containers use; the app settings given in `env` and none inherited; output to a log file;
ready once `/_stcore/health` answers.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from digit_predictor.config import PROJECT_ROOT
from digit_predictor.testing.api_server import app_free_environ
from digit_predictor.testing.loopback import ServerFailed, free_port, wait_ready

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
        wait_ready(
            self.url + "/_stcore/health",
            self.process,
            name="streamlit",
            log_tail=self.logs,
            timeout_s=timeout_s,
        )

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
    env: Mapping[str, str],
    *,
    log_dir: str | os.PathLike[str] | None = None,
    timeout_s: float = 60.0,
) -> WebServer:
    full_env = {**app_free_environ(), **env, "PYTHONUNBUFFERED": "1"}
    workdir = tempfile.TemporaryDirectory(prefix="digit-web-")
    (Path(workdir.name) / "src").symlink_to(PROJECT_ROOT / "src", target_is_directory=True)
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
def web_server(
    env: Mapping[str, str],
    *,
    log_dir: str | os.PathLike[str] | None = None,
    timeout_s: float = 60.0,
) -> Iterator[WebServer]:
    server = start_web(env, log_dir=log_dir, timeout_s=timeout_s)
    try:
        yield server
    finally:
        server.stop()
