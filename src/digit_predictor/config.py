"""Settings: one class, read from the environment and an optional `.env` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_PATH = PROJECT_ROOT / "model" / "saved_model" / "model.pt"
# Training data lives beside the checkout, never in it (datasets are not committed).
DEFAULT_MNIST_DIR = PROJECT_ROOT.parent / "shared" / "data" / "mnist" / "MNIST" / "raw"
DEFAULT_EXTRA_DIGITS_DIR = PROJECT_ROOT.parent / "shared" / "data" / "extra-digits"

# Passwords that only ever appear in examples; a deployment that still uses one is a mistake.
PLACEHOLDER_PASSWORDS = frozenset({"changeme", "change-me", "password", "postgres", "secret"})


def is_placeholder(secret: str) -> bool:
    lowered = secret.lower()
    return lowered in PLACEHOLDER_PASSWORDS or lowered.startswith("change-me")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    # Database: either one URL, or the parts the original project's .env used.
    database_url: str | None = None
    db_host: str = "localhost"
    db_port: int = Field(default=5432, ge=1, le=65535)
    db_name: str = "digits"
    db_user: str = "digits"
    db_password: str = ""
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, ge=1)
    db_statement_timeout_ms: int = Field(default=5000, ge=1)
    db_connect_timeout_s: int = Field(default=3, ge=1)

    # Services.
    api_url: str = "http://127.0.0.1:8000"
    # Where `python -m digit_predictor.api` listens, and how many processes serve (None: the
    # CPUs this process may use, see digit_predictor.cpus.usable_cpus).
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_workers: int | None = Field(default=None, ge=1, le=64)
    # With exactly one worker per CPU this process may use, each worker runs on its own CPU
    # (api/workers.py: cpus_to_pin).
    api_pin_workers: bool = True
    # Batches per worker that may be decoded, preprocessed and run through the model at once,
    # each in its own thread (api/compute.py).
    api_compute_threads: int = Field(default=1, ge=1, le=64)
    api_key: str | None = None
    model_path: Path = DEFAULT_MODEL_PATH
    # How often the api checks the model registry for a new champion when no NOTIFY arrives.
    model_check_interval_s: float = Field(default=5.0, gt=0, le=60)

    # Limits on what a client may send.
    max_upload_bytes: int = Field(default=1024 * 1024, ge=1)
    max_image_side: int = Field(default=2048, ge=28)
    request_timeout_s: float = Field(default=10.0, gt=0)
    write_queue_size: int = Field(default=10_000, ge=1)
    # On SIGTERM the api first fails /readyz for this long, still serving, so that a load
    # balancer polling /readyz stops sending before the listener closes (0: stop at once).
    shutdown_drain_s: float = Field(default=0.0, ge=0, le=60)
    # How long a request waits for its row to be committed before answering 202 (queued).
    # While PostgreSQL is known to be away nobody waits; this only bounds a slow commit.
    write_wait_ms: int = Field(default=1000, ge=0, le=10_000)
    # Where rows answered 202 are also kept on disk (SQLite), so that a worker killed during a
    # database outage loses nothing; unset: memory only.
    write_spool_dir: Path | None = None

    high_score_tz: str = "America/New_York"
    # Drop the drawings (not the rows) of uncorrected predictions older than this many days,
    # when `python -m digit_predictor.db prune-drawings` or the backup job runs. None: keep all.
    drawing_retention_days: int | None = Field(default=None, ge=1)
    debug: bool = False

    @field_validator("high_score_tz")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("DB_POOL_MIN must not exceed DB_POOL_MAX")
        if self.debug:
            return self
        password = self.db_password
        if self.database_url:
            password = urlsplit(self.database_url).password or ""
        if password and is_placeholder(password):
            raise ValueError(
                "the database password is still the placeholder from .env.example; "
                "set a real one (or DEBUG=true for local experiments)"
            )
        if self.api_key and is_placeholder(self.api_key):
            raise ValueError("API_KEY is still a placeholder; set a real one or leave it empty")
        return self

    @property
    def dsn(self) -> str:
        if self.database_url:
            return self.database_url
        auth = quote(self.db_user, safe="")
        if self.db_password:
            auth += ":" + quote(self.db_password, safe="")
        return f"postgresql://{auth}@{self.db_host}:{self.db_port}/{quote(self.db_name, safe='')}"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.high_score_tz)


@lru_cache
def get_settings() -> Settings:
    return Settings()


class DataSettings(BaseSettings):
    """Where training and evaluation read their data; the api and the web app never do, so
    these are not in `Settings` (and the containers never get them)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    # The four official gzipped MNIST IDX files (ml/data.py checks their md5).
    mnist_dir: Path = DEFAULT_MNIST_DIR
    # USPS and optdigits, for the extra training digits (ml/extra_digits.py checks sha256).
    extra_digits_dir: Path = DEFAULT_EXTRA_DIGITS_DIR
