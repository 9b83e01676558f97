"""The api (`python -m digit_predictor.api`) as a real subprocess on a loopback port.

    with api_server(api_env(database_url, model_path)) as api:
        with api.client() as client:
            client.post("/v1/predictions", files={"image": ("d.png", png, "image/png")})

The process starts in an empty working directory (so no developer `.env` leaks in) with only the
settings given in `env` on top of the parent's environment minus every app setting. Its stdout and
stderr (JSON log lines) go to a file: `api.logs()` / `api.log_records()` read them, and a failed
start raises with the log's tail. `stop()` sends SIGTERM (graceful: the lifespan flushes the write
queue) and `kill()` SIGKILL, for crash tests: with one worker that is the worker itself; with
several, only their supervisor, and the workers then stop gracefully (api/workers.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from digit_predictor.config import Settings
from digit_predictor.testing.loopback import ServerFailed, free_port, wait_for, wait_ready

# Settings the app reads, as environment variables; never inherited from the caller.
APP_SETTINGS = frozenset(name.upper() for name in Settings.model_fields)


def app_free_environ() -> dict[str, str]:
    """This process's environment minus every app setting (pydantic-settings ignores case)."""
    return {k: v for k, v in os.environ.items() if k.upper() not in APP_SETTINGS}


def api_env(
    database_url: str, model_path: str | os.PathLike[str], **settings: Any
) -> dict[str, str]:
    """Environment for the api: `api_env(url, model, api_key="k", write_queue_size=3)`."""
    env = {"DATABASE_URL": database_url, "MODEL_PATH": str(model_path)}
    env.update({key.upper(): str(value) for key, value in settings.items()})
    return env


def make_test_model(directory: str | os.PathLike[str], *, version: str = "test-model-1") -> Path:
    """Write untrained (seeded) weights, their ONNX graph and a model card; predictions are valid,
    not accurate."""
    import torch

    from digit_predictor.ml.card import GRAPH_NAME
    from digit_predictor.ml.export import write_graph
    from digit_predictor.ml.models import DEFAULT_ARCHITECTURE, build_model

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weights = folder / "model.pt"
    model = build_model(DEFAULT_ARCHITECTURE).eval()
    torch.save(model.state_dict(), weights)
    card = {
        "version": version,
        "architecture": DEFAULT_ARCHITECTURE,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "onnx_file": GRAPH_NAME,
        "onnx_sha256": write_graph(model, folder),
        "note": "untrained weights for tests",
    }
    (folder / "model_card.json").write_text(json.dumps(card), encoding="utf-8")
    return weights


# uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: -15 is a clean stop.
CLEAN_EXIT = (0, -signal.SIGTERM)


@dataclass
class ApiServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False)
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30.0)
        if "api_key" in kwargs:
            kwargs.setdefault("headers", {})["X-API-Key"] = kwargs.pop("api_key")
        return httpx.Client(base_url=self.url, **kwargs)

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (uvicorn's few plain start-up lines are skipped)."""
        records = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        return records

    def is_running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, path: str = "/healthz", timeout_s: float = 60.0) -> None:
        """Poll `path` until it answers 200; raise ServerFailed if the process dies first."""
        wait_ready(
            self.url + path, self.process, name="api", log_tail=self._tail, timeout_s=timeout_s
        )

    def wait_listening(self, workers: int, timeout_s: float = 60.0) -> None:
        """Ready means one worker answers; each worker listens on its own socket once its model
        is loaded (api/workers.py). Wait for all, or the first would take every connection."""
        wait_for(lambda: listening_sockets(self.port) >= workers, timeout_s)

    def stop(self, timeout_s: float = 20.0) -> int:
        """Graceful stop (SIGTERM, as Docker sends); SIGKILL if it does not end in time.

        Returns the exit status; one of CLEAN_EXIT after a graceful shutdown.
        """
        if self.is_running():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def kill(self) -> None:
        if self.is_running():
            self.process.kill()
            self.process.wait()

    def cleanup(self) -> None:
        self.stop()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on `port` (Linux: /proc/net/tcp and tcp6)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table, encoding="ascii") as rows:
            next(rows)  # the header
            for row in rows:
                local, state = row.split()[1], row.split()[3]
                count += state == "0A" and int(local.rsplit(":", 1)[1], 16) == port  # 0A: LISTEN
    return count


def start_api(
    env: Mapping[str, str] | None = None,
    *,
    ready_path: str = "/healthz",
    timeout_s: float = 60.0,
    log_dir: str | os.PathLike[str] | None = None,
    port: int | None = None,
    workers: int = 1,
) -> ApiServer:
    """Start `python -m digit_predictor.api` on a loopback port and wait for it.

    `port` pins the address (a restart "at the same place", as a container restart would);
    by default a free port is picked. The caller owns the result: call `cleanup()` (or use
    `api_server`).
    """
    full_env = {**app_free_environ(), **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    last_error: ServerFailed | None = None
    # A free port can be taken between probing and binding: then try another (unless pinned).
    for _ in range(1 if port else 3):
        workdir = tempfile.TemporaryDirectory(prefix="digit-api-")
        log_path = Path(log_dir or workdir.name) / f"api-{time.time_ns()}.log"
        bind_port = port or free_port()
        process_env = {
            **full_env,
            "API_HOST": "127.0.0.1",
            "API_PORT": str(bind_port),
            "API_WORKERS": str(workers),
        }
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "digit_predictor.api"],
                cwd=workdir.name,
                env=process_env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        server = ApiServer(
            url=f"http://127.0.0.1:{bind_port}",
            port=bind_port,
            process=process,
            log_path=log_path,
            env=process_env,
            _workdir=workdir,
        )
        try:
            server.wait_ready(ready_path, timeout_s)
            server.wait_listening(workers, timeout_s)
            return server
        except ServerFailed as exc:
            server.cleanup()
            if "address already in use" not in str(exc).lower():
                raise
            last_error = exc
    assert last_error is not None
    raise last_error


@contextlib.contextmanager
def api_server(env: Mapping[str, str] | None = None, **kwargs: Any) -> Iterator[ApiServer]:
    server = start_api(env, **kwargs)
    try:
        yield server
    finally:
        server.cleanup()
