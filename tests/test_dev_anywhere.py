"""`make dev` works from a clone in a private (0700) folder, as root's home or `mktemp -d` is.

The clone is of this checkout's HEAD; it shares this run's virtual environment (a symlink, with
the clone's own src/ first on PYTHONPATH) so that the test needs no network and no reinstall.
As root, the private cluster then belongs to `postgres`, which cannot enter the clone: the test
fails if the cluster's data is still kept inside it.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.servers import APP_SETTINGS, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
# make would otherwise reinstall the packages into the shared environment for the clone.
KEEP_INSTALL = ["-o", ".venv/.installed-api", "-o", ".venv/.installed-web"]

pytestmark = pytest.mark.slow


@pytest.fixture
def private_clone() -> Iterator[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("this test needs git and a git checkout to clone")
    folder = Path(tempfile.mkdtemp(prefix="digit-private-"))
    try:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        clone = folder / "digit-predictor"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        (clone / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
        yield clone
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def one_png() -> bytes:
    """A "1" as the canvas sends it: white ink in the alpha channel of a 280x280 RGBA PNG."""
    image = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(image).line([(140, 50), (140, 230)], fill=(255, 255, 255, 255), width=20)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_make_dev_runs_from_a_private_clone(private_clone: Path) -> None:
    api_port, web_port, pg_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in APP_SETTINGS}
    env.update(
        API_PORT=str(api_port),
        WEB_PORT=str(web_port),
        DEV_PG_PORT=str(pg_port),
        PYTHONPATH=str(private_clone / "src"),
    )
    env.pop("DEV_PG_DIR", None)
    cluster = Path(
        subprocess.run(
            [str(private_clone / "scripts" / "pg_cluster.sh"), "dev-dir"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.strip()
    )
    assert not cluster.exists(), f"a fresh clone found an existing cluster at {cluster}"
    log_path = private_clone.parent / "make-dev.log"
    with log_path.open("wb") as log:
        # A session of its own: Ctrl-C in a terminal signals the whole foreground group.
        dev = subprocess.Popen(
            ["make", *KEEP_INSTALL, "dev"],
            cwd=private_clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api, web = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{web_port}"

    def running_and(url: str) -> bool:
        assert dev.poll() is None, f"make dev exited early:\n{log_path.read_text()[-4000:]}"
        return httpx.get(url, timeout=5.0).status_code == 200

    try:
        wait_for(lambda: running_and(api + "/readyz"), timeout_s=180)
        wait_for(lambda: running_and(web + "/_stcore/health"), timeout_s=120)
        page = httpx.get(web + "/", timeout=10.0)
        assert page.status_code == 200 and "<title>" in page.text.lower()

        answer = httpx.post(
            api + "/v1/predictions",
            files={"image": ("one.png", one_png(), "image/png")},
            data={"source": "dev-anywhere-test"},
            timeout=30.0,
        )
        assert answer.status_code == 201, answer.text
        created = answer.json()
        assert created["digit"] == 1 and created["stored"] is True
        stored = httpx.get(f"{api}/v1/predictions/{created['id']}", timeout=10.0).json()
        assert stored["source"] == "dev-anywhere-test"

        # The data lives where `postgres` (as root) or the user can reach it, not in the clone.
        assert (cluster / "PG_VERSION").is_file()
        assert not cluster.is_relative_to(private_clone.parent)
        if os.geteuid() == 0:
            assert cluster.stat().st_uid == int(
                subprocess.run(["id", "-u", "postgres"], capture_output=True, text=True).stdout
            )

        os.killpg(dev.pid, signal.SIGINT)
        dev.wait(timeout=60)
        wait_for(lambda: not _group_alive(dev.pid), timeout_s=30)
        assert not (cluster / "postmaster.pid").exists(), "the cluster was left running"
        log_text = log_path.read_text()
        assert "stopping..." in log_text, log_text[-4000:]
    finally:
        if _group_alive(dev.pid):
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
        clean = subprocess.run(
            ["make", *KEEP_INSTALL, "clean"],
            cwd=private_clone,
            env=env,
            capture_output=True,
            text=True,
        )
    assert clean.returncode == 0, clean.stderr
    assert not cluster.exists(), "make clean left the cluster behind"
    assert Path(sys.prefix, "bin", "python").exists(), "make clean removed the shared venv"
