from typing import Any

import pytest
from pydantic import ValidationError

from digit_predictor.config import Settings


def _settings(**env: Any) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


def test_dsn_from_parts() -> None:
    s = _settings(
        db_host="db", db_port="5433", db_name="digits", db_user="app", db_password="s3cr:t"
    )
    assert s.dsn == "postgresql://app:s3cr%3At@db:5433/digits"


def test_database_url_wins_over_parts() -> None:
    s = _settings(database_url="postgresql://u@h:1/d", db_host="elsewhere")
    assert s.dsn == "postgresql://u@h:1/d"


@pytest.mark.parametrize(
    "env",
    [
        {"db_password": "change-me-to-a-long-random-password"},
        {"database_url": "postgresql://digits:change-me@db:5432/digits"},
        {"api_key": "change-me"},
    ],
)
def test_placeholder_secrets_are_refused_outside_debug(env: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        _settings(**env)
    assert _settings(debug="true", **env).debug is True


def test_real_password_is_accepted() -> None:
    assert _settings(db_password="x9-Lq2v7-unguessable").db_password == "x9-Lq2v7-unguessable"


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        _settings(high_score_tz="Mars/Olympus")
    assert _settings(high_score_tz="Europe/Paris").tz.key == "Europe/Paris"


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIGH_SCORE_TZ", "UTC")
    monkeypatch.setenv("DB_POOL_MAX", "3")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.high_score_tz == "UTC" and s.db_pool_max == 3
