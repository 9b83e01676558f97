"""docker-compose.yml, .env.example and the settings class name the same variables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from digit_predictor.config import DEFAULT_MODEL_PATH, DataSettings, Settings

from .files import (
    COMPOSE,
    COMPOSE_ONLY_VARS,
    DATA_VARS,
    ENV_EXAMPLE,
    ROOT,
    SETTINGS_VARS,
    app_services,
    load_compose,
    read_env_file,
    references,
)

# Settings that compose deliberately does not pass: it wires its own `db` service by parts.
NOT_PASSED_BY_COMPOSE = frozenset({"DATABASE_URL"})
# Example values that are not the default on purpose (a placeholder, an example URL).
EXAMPLE_NOT_DEFAULT = frozenset({"DB_PASSWORD", "API_KEY", "DATABASE_URL"})
REAL_SECRETS = {"DB_PASSWORD": "x9Lq2v7unguessable", "API_KEY": "k3y-Zt8wQ-unguessable"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting leaks in from the environment the tests run in."""
    for name in SETTINGS_VARS | DATA_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _default(field: str) -> object:
    return Settings.model_fields[field.lower()].default


def _parsed(clean_env: pytest.MonkeyPatch, name: str, value: str) -> object:
    clean_env.setenv("DEBUG", "true")  # accept placeholders: only `name` is under test here
    clean_env.setenv(name, value)
    try:
        return getattr(Settings(_env_file=None), name.lower())  # type: ignore[call-arg]
    finally:
        clean_env.delenv(name)
        clean_env.delenv("DEBUG", raising=False)


def test_compose_reads_only_settings_and_allowlisted_variables() -> None:
    names = {ref.name for ref in references(COMPOSE.read_text())}
    unknown = names - SETTINGS_VARS - COMPOSE_ONLY_VARS
    assert not unknown, f"docker-compose.yml reads variables no setting defines: {unknown}"


def test_app_containers_get_only_settings() -> None:
    for name, service in app_services(load_compose()).items():
        unknown = set(service["environment"]) - SETTINGS_VARS
        assert not unknown, f"{name} gets variables no setting defines: {unknown}"


@pytest.mark.parametrize("service", ["migrate", "api", "web"])
def test_every_setting_reaches_every_app_container(service: str) -> None:
    passed = set(load_compose()["services"][service]["environment"])
    missing = SETTINGS_VARS - NOT_PASSED_BY_COMPOSE - passed
    assert not missing, f"{service} never gets {missing}; add them to x-app-environment"


def test_env_example_documents_every_setting_and_nothing_else() -> None:
    active, commented = read_env_file()
    named = set(active) | set(commented)
    assert SETTINGS_VARS - named == set(), "settings missing from .env.example"
    assert DATA_VARS - named == set(), "training data settings missing from .env.example"
    unknown = named - SETTINGS_VARS - DATA_VARS - COMPOSE_ONLY_VARS
    assert unknown == set(), f".env.example names unknown vars: {unknown}"
    assert named >= COMPOSE_ONLY_VARS, "compose-only variables missing from .env.example"


def test_training_data_settings_stay_out_of_compose() -> None:
    read = {ref.name for ref in references(COMPOSE.read_text())}
    assert not DATA_VARS & read, "the containers never train: compose must not read these"
    assert not DATA_VARS & SETTINGS_VARS


def test_env_example_data_dirs_are_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    _, commented = read_env_file()
    clean_env.chdir(ROOT)  # relative paths in .env.example are from the checkout
    for name in DATA_VARS:
        clean_env.setenv(name, commented[name])
    given = DataSettings(_env_file=None)  # type: ignore[call-arg]
    for name in DATA_VARS:
        clean_env.delenv(name)
    default = DataSettings(_env_file=None)  # type: ignore[call-arg]
    for name in DATA_VARS:
        field = name.lower()
        assert getattr(given, field).resolve() == getattr(default, field).resolve(), name


def test_compose_only_variables_are_really_used() -> None:
    # An allowlist entry nobody reads would hide a typo; COMPOSE_PROJECT_NAME is compose's own.
    read = {ref.name for ref in references(COMPOSE.read_text())}
    unused = COMPOSE_ONLY_VARS - read - {"COMPOSE_PROJECT_NAME"}
    assert not unused, f"allowlisted but unused by docker-compose.yml: {unused}"
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    assert "{$DOMAIN}" in caddyfile and "{$ACME_EMAIL}" in caddyfile


def test_env_example_defaults_are_the_settings_defaults(clean_env: pytest.MonkeyPatch) -> None:
    active, commented = read_env_file()
    for name, value in {**commented, **active}.items():
        if name not in SETTINGS_VARS or name in EXAMPLE_NOT_DEFAULT:
            continue
        parsed = _parsed(clean_env, name, value)
        if name == "MODEL_PATH":  # relative to the checkout, where `make dev` runs
            assert ROOT / str(parsed) == DEFAULT_MODEL_PATH
            continue
        assert parsed == _default(name), f".env.example: {name}={value} is not the default"


def test_compose_defaults_are_the_settings_defaults(clean_env: pytest.MonkeyPatch) -> None:
    for ref in references(COMPOSE.read_text()):
        if ref.name in SETTINGS_VARS and ref.op in (":-", "-") and ref.arg:
            parsed = _parsed(clean_env, ref.name, ref.arg)
            assert parsed == _default(ref.name), f"compose: ${{{ref.name}:-{ref.arg}}}"


def test_env_example_placeholders_are_refused_outside_debug(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.chdir(ROOT)
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]
    clean_env.setenv("DEBUG", "true")
    assert Settings(_env_file=ENV_EXAMPLE).debug is True  # type: ignore[call-arg]


def test_every_secret_in_env_example_is_a_placeholder() -> None:
    active, _ = read_env_file()
    for name in ("DB_PASSWORD", "API_KEY"):
        assert active[name].startswith("change-me"), f"{name} must be a change-me placeholder"


@pytest.mark.parametrize("service", ["migrate", "api", "web"])
def test_each_app_container_environment_is_valid(
    clean_env: pytest.MonkeyPatch, service: str
) -> None:
    # What compose hands the container, from .env.example with real secrets filled in.
    active, _ = read_env_file()
    env = {**active, **REAL_SECRETS}
    environment = load_compose(env=env)["services"][service]["environment"]
    for name, value in environment.items():
        clean_env.setenv(name, str(value))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.debug is False
    assert settings.dsn == (f"postgresql://digits:{REAL_SECRETS['DB_PASSWORD']}@db:5432/digits")
    assert settings.api_url == "http://api:8000"
    assert settings.api_key == REAL_SECRETS["API_KEY"]
    assert str(settings.model_path) == "/app/model/saved_model/model.pt"
