"""docker-compose.yml does what issue 6 asks, and a compose CLI (when installed) accepts it."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .files import (
    COMPOSE,
    HOSTNET,
    ROOT,
    InterpolationError,
    app_services,
    dev_sh_commands,
    interpolate,
    load_compose,
    read_env_file,
)

LONG_RUNNING = ("db", "api", "web", "proxy")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    active, _ = read_env_file()
    return load_compose(env=active)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def _healthcheck(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def test_the_expected_services(services: dict[str, Any]) -> None:
    assert set(services) == {"db", "migrate", "api", "web", "proxy", "trainer"}


def test_db_image_is_pinned_postgres_15(services: dict[str, Any]) -> None:
    assert re.fullmatch(r"postgres:15\.\d+(-[a-z]+)?", services["db"]["image"])


def test_db_keeps_its_data_in_a_named_volume(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["db"]["volumes"]
    assert "pgdata:/var/lib/postgresql/data" in volumes
    assert "pgdata" in compose["volumes"]


def test_db_health_is_pg_isready_over_tcp(services: dict[str, Any]) -> None:
    check = _healthcheck(services["db"])
    assert "pg_isready" in check and "-h 127.0.0.1" in check


def test_db_and_api_are_not_published(services: dict[str, Any]) -> None:
    for name in ("db", "api", "migrate"):
        assert "ports" not in services[name], f"{name} must not be reachable from outside"
        assert "network_mode" not in services[name]


def test_migrations_run_once_before_the_api(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == dev_sh_commands()[0]  # the command `make dev` runs
    assert migrate["command"][-2:] == ["--wait", "60"]
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"  # one-shot
    assert migrate["image"] == services["api"]["image"]
    assert services["api"]["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }


def test_api_health_is_readyz(services: dict[str, Any]) -> None:
    assert "http://127.0.0.1:8000/readyz" in _healthcheck(services["api"])


def test_web_publishes_8501_after_the_api_is_healthy(services: dict[str, Any]) -> None:
    web = services["web"]
    assert web["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert [p.rsplit(":", 1)[-1] for p in web["ports"]] == ["8501"]
    assert web["ports"] == ["127.0.0.1:8501:8501"]  # from .env.example's defaults
    assert "/_stcore/health" in _healthcheck(web)


def test_long_running_services_restart_unless_stopped(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name


def test_app_images_are_built_from_the_dockerfiles(compose: dict[str, Any]) -> None:
    built = {name: svc["build"]["dockerfile"] for name, svc in app_services(compose).items()}
    assert built == {
        "migrate": "Dockerfile.api",
        "api": "Dockerfile.api",
        "web": "Dockerfile.web",
        "trainer": "Dockerfile.api",
    }


def test_secrets_come_only_from_env() -> None:
    raw = load_compose()  # before interpolation
    secret = re.compile(r"PASSWORD|KEY|SECRET|TOKEN")
    for name, service in raw["services"].items():
        for var, value in (service.get("environment") or {}).items():
            if secret.search(var):
                assert re.fullmatch(r"\$\{[A-Z_]+(:?[-?][^}]*)?\}", str(value)), (name, var)
                assert not re.search(r":-[^}]", str(value)), f"{name}.{var} has a default"


def test_db_password_is_required() -> None:
    with pytest.raises(InterpolationError, match="DB_PASSWORD"):
        interpolate(COMPOSE.read_text(), {})


def test_trainer_is_a_one_shot_retraining_under_its_own_profile(services: dict[str, Any]) -> None:
    trainer = services["trainer"]
    assert trainer["profiles"] == ["trainer"]
    assert trainer["command"] == ["python", "-m", "digit_predictor.ml.retrain", "--promote"]
    assert trainer["restart"] == "no"
    assert trainer["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert all(v.endswith(":/shared/data:ro") for v in trainer["volumes"])


def test_proxy_profile_serves_domain_with_tls(services: dict[str, Any]) -> None:
    proxy = services["proxy"]
    assert proxy["profiles"] == ["proxy"]
    assert re.fullmatch(r"caddy:2\.\d+\.\d+(-[a-z]+)?", proxy["image"])
    assert {"80:80", "443:443"} <= set(proxy["ports"])
    mounts = proxy["volumes"]
    assert "./deploy/Caddyfile:/etc/caddy/Caddyfile:ro" in mounts
    assert (ROOT / "deploy" / "Caddyfile").is_file()
    assert any(m.startswith("caddy_data:/data") for m in mounts)  # certificates survive
    assert set(proxy["environment"]) == {"DOMAIN", "ACME_EMAIL"}
    assert "reverse_proxy web:8501" in (ROOT / "deploy" / "Caddyfile").read_text()


def test_nothing_privileged(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert not service.get("privileged"), name
        for mount in service.get("volumes", []):
            assert "docker.sock" not in mount, name


PRIVATE_RANGES = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
]


def _private_addresses(text: str) -> list[str]:
    found = []
    for candidate in re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?\b", text):
        try:
            network = ipaddress.ip_network(candidate, strict=False)
        except ValueError:
            continue
        if any(network.overlaps(private) for private in PRIVATE_RANGES):
            found.append(candidate)
    return found


def test_hostnet_override_puts_everything_on_host_networking() -> None:
    base = load_compose()
    override = load_compose(HOSTNET)
    assert set(override) == {"services"}, "the override must declare no networks"
    for name, service in base["services"].items():
        assert override["services"][name]["network_mode"] == "host", name
        if "build" in service:
            assert override["services"][name]["build"] == {"network": "host"}, name
    for path in (COMPOSE, HOSTNET):
        assert not _private_addresses(path.read_text()), path.name
        assert "networks:" not in path.read_text(), path.name


def test_private_address_detector_works() -> None:
    text = "a 10.0.0.1 b 172.17.0.0/16 c 192.168.1.1 127.0.0.1 0.0.0.0 172.32.0.1 8.8.8.8"
    assert _private_addresses(text) == ["10.0.0.1", "172.17.0.0/16", "192.168.1.1"]


# ---- the real compose CLI, where installed (Debian: apt-get install docker-compose) ----------


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _config(env_text: str, tmp_path: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no compose CLI (apt-get install docker-compose, or the docker compose plugin)")
    env_file = tmp_path / "env"
    env_file.write_text(env_text)
    args = [*cli, "--project-directory", str(ROOT), "--env-file", str(env_file)]
    for path in files:
        args += ["-f", str(path)]
    return subprocess.run(
        [*args, "config", "-q"], capture_output=True, text=True, check=False, timeout=60
    )


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, HOSTNET)], ids=["base", "hostnet"])
def test_compose_cli_accepts_the_file(tmp_path: Path, files: tuple[Path, ...]) -> None:
    result = _config((ROOT / ".env.example").read_text(), tmp_path, *files)
    assert result.returncode == 0, result.stderr


def test_compose_cli_refuses_a_missing_password(tmp_path: Path) -> None:
    result = _config("DB_NAME=digits\n", tmp_path, COMPOSE)
    assert result.returncode != 0
    assert "DB_PASSWORD" in result.stderr


def test_caddyfile_is_valid(tmp_path: Path) -> None:
    caddy = shutil.which("caddy")
    if not caddy:
        pytest.skip("caddy not installed (apt-get install caddy)")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
        "DOMAIN": "digits.example.org",
        "ACME_EMAIL": "ops@example.org",
    }
    caddyfile = str(ROOT / "deploy" / "Caddyfile")
    args = [caddy, "adapt", "--config", caddyfile, "--adapter", "caddyfile", "--validate"]
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert '"digits.example.org"' in result.stdout and '"ops@example.org"' in result.stdout
    assert '"web:8501"' in result.stdout
