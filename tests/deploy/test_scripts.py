"""The deployment scripts: strict bash, lint-clean, and deploy.sh's .env checks."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from .files import ENV_EXAMPLE, ROOT

SCRIPTS = [
    ROOT / "scripts" / name
    for name in (
        "provision_vps.sh",
        "deploy.sh",
        "backup_db.sh",
        "restore_db.sh",
        "compose_smoke.sh",
    )
]
DEPLOY = ROOT / "scripts" / "deploy.sh"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_strict_bash(script: Path) -> None:
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines[:40]
    assert script.stat().st_mode & stat.S_IXUSR, f"{script.name} is not executable"
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def _check_env(env_text: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "env"
    env_file.write_text(env_text)
    env_file.chmod(0o600)
    return subprocess.run(
        [str(DEPLOY), "--check-env", *args],
        env={**os.environ, "ENV_FILE": str(env_file)},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def _filled(**values: str) -> str:
    """.env.example with its placeholders replaced and `values` set."""
    text = ENV_EXAMPLE.read_text()
    text = text.replace("DB_PASSWORD=change-me-db-password", "DB_PASSWORD=" + "a1" * 16)
    text = text.replace("API_KEY=change-me-api-key", "API_KEY=" + "b2" * 16)
    for name, value in values.items():
        text += f"{name}={value}\n"
    return text


def test_deploy_accepts_a_filled_in_env(tmp_path: Path) -> None:
    result = _check_env(_filled(DOMAIN="digits.example.org", ACME_EMAIL="ops@x.org"), tmp_path)
    assert result.returncode == 0, result.stderr


def test_deploy_refuses_the_example_as_it_is(tmp_path: Path) -> None:
    result = _check_env(ENV_EXAMPLE.read_text(), tmp_path, "--no-proxy")
    assert result.returncode == 1
    assert "DB_PASSWORD" in result.stderr and "API_KEY" in result.stderr


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"DEBUG": "true", "DOMAIN": "d.example.org", "ACME_EMAIL": "o@x.org"}, "DEBUG"),
        ({"ACME_EMAIL": "ops@x.org"}, "DOMAIN is empty"),
        ({"DOMAIN": "digits.example.org"}, "ACME_EMAIL is empty"),
        ({"DOMAIN": "localhost", "ACME_EMAIL": "ops@x.org"}, "public name"),
        ({"DB_PASSWORD": "", "DOMAIN": "d.example.org", "ACME_EMAIL": "o@x.org"}, "DB_PASSWORD"),
    ],
)
def test_deploy_refuses_a_bad_env(tmp_path: Path, values: dict[str, str], complaint: str) -> None:
    result = _check_env(_filled(**values), tmp_path)
    assert result.returncode == 1 and complaint in result.stderr


def test_no_proxy_needs_no_domain(tmp_path: Path) -> None:
    assert _check_env(_filled(), tmp_path, "--no-proxy").returncode == 0


def test_deploy_tightens_env_permissions(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    result = _check_env(_filled(), tmp_path, "--no-proxy")
    assert result.returncode == 0
    env_file.chmod(0o644)
    subprocess.run(
        [str(DEPLOY), "--check-env", "--no-proxy"],
        env={**os.environ, "ENV_FILE": str(env_file)},
        capture_output=True,
        check=True,
    )
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
