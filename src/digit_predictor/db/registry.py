"""The model registry: versions, their weights and cards, and which one is the champion.

Weights live in PostgreSQL so that every api process and replica, on any machine, serves the
same champion without a shared volume. Promotion and rollback are one transaction each and send
a `NOTIFY` on `CHANNEL`, which the api listens to (with a periodic check as a fallback).

No torch here: the web app reads the registry too, and it has no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import select
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from digit_predictor.db.pool import Database, DatabaseUnavailable
from digit_predictor.ml.card import graph_beside

log = logging.getLogger(__name__)

CHANNEL = "model_registry"
STATUSES = ("candidate", "champion", "retired", "rejected")
CARD_NAME = "model_card.json"  # beside the shipped weights
# Serialises registrations of the shipped model by processes starting together.
_SHIPPED_LOCK_KEY = 4_242_002
# Serialises changes of champion: two promotions at once must both succeed, one after the other.
_CHAMPION_LOCK_KEY = 4_242_003

_COLUMNS = "version, created_at, parent_version, arch, sha256, status, promoted_at, reason, card"


class RegistryError(RuntimeError):
    """An unknown version, nothing to roll back to, or a change the registry refuses."""


class RegistryMissing(DatabaseUnavailable):
    """The database answers but has no registry yet (migrations not applied)."""


@dataclass(frozen=True)
class ModelRecord:
    version: str
    created_at: datetime
    parent_version: str | None
    arch: str
    sha256: str
    status: str
    promoted_at: datetime | None
    reason: str | None
    card: dict[str, Any]


def _record(row: tuple[Any, ...]) -> ModelRecord:
    return ModelRecord(
        version=row[0],
        created_at=row[1],
        parent_version=row[2],
        arch=row[3],
        sha256=row[4],
        status=row[5],
        promoted_at=row[6],
        reason=row[7],
        card=dict(row[8] or {}),
    )


def _fetch(cur: psycopg2.extensions.cursor, version: str, *, lock: bool = False) -> ModelRecord:
    cur.execute(
        f"SELECT {_COLUMNS} FROM models WHERE version = %s" + (" FOR UPDATE" if lock else ""),
        (version,),
    )
    row = cur.fetchone()
    if row is None:
        raise RegistryError(f"no model version {version!r} in the registry")
    return _record(row)


def _notify(cur: psycopg2.extensions.cursor, version: str) -> None:
    # Delivered at commit, so listeners never see a promotion that was rolled back.
    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, version))


def register(
    db: Database,
    *,
    version: str,
    parent_version: str | None,
    arch: str,
    weights: bytes,
    card: dict[str, Any],
    onnx: bytes | None = None,
    status: str = "candidate",
    reason: str | None = None,
) -> ModelRecord:
    """Add a version (a candidate unless told otherwise) with its weights and, when given, the
    ONNX graph the api serves it as; the same version and bytes again is a no-op, the same
    version with other bytes is refused."""
    if status not in ("candidate", "rejected"):
        raise RegistryError(f"a new version is registered as a candidate, not {status!r}")
    sha = hashlib.sha256(weights).hexdigest()
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO models (version, parent_version, arch, sha256, weights, card, status,
                                   reason, onnx, onnx_sha256)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (version) DO NOTHING""",
            (
                version,
                parent_version,
                arch,
                sha,
                psycopg2.Binary(weights),
                psycopg2.extras.Json(card),
                status,
                reason,
                *_graph_columns(onnx),
            ),
        )
        record = _fetch(cur, version)
    if record.sha256 != sha:
        raise RegistryError(f"version {version!r} is already registered with other weights")
    return record


def champion(db: Database) -> ModelRecord | None:
    with db.connection() as conn, conn.cursor() as cur:
        try:
            cur.execute(f"SELECT {_COLUMNS} FROM models WHERE status = 'champion'")
        except psycopg2.errors.UndefinedTable as exc:
            raise RegistryMissing("the model registry does not exist yet (run migrate)") from exc
        row = cur.fetchone()
    return _record(row) if row else None


def get_model(db: Database, version: str) -> ModelRecord:
    with db.connection() as conn, conn.cursor() as cur:
        return _fetch(cur, version)


def load_weights(db: Database, version: str) -> bytes:
    """The weights of a version, checked against the sha256 recorded with them."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT weights, sha256 FROM models WHERE version = %s", (version,))
        row = cur.fetchone()
    if row is None:
        raise RegistryError(f"no model version {version!r} in the registry")
    weights = bytes(row[0])
    if hashlib.sha256(weights).hexdigest() != row[1]:
        raise RegistryError(f"the stored weights of {version!r} do not match their sha256")
    return weights


def load_graph(db: Database, version: str) -> bytes | None:
    """The ONNX graph of a version, checked against its sha256; None when none is stored yet."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT onnx, onnx_sha256 FROM models WHERE version = %s", (version,))
        row = cur.fetchone()
    if row is None:
        raise RegistryError(f"no model version {version!r} in the registry")
    if row[0] is None:
        return None
    graph = bytes(row[0])
    if hashlib.sha256(graph).hexdigest() != row[1]:
        raise RegistryError(f"the stored ONNX graph of {version!r} does not match its sha256")
    return graph


def store_graph(db: Database, version: str, graph: bytes) -> None:
    """Keep the graph exported for a version that had none (the first exporter wins)."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE models SET onnx = %s, onnx_sha256 = %s WHERE version = %s AND onnx IS NULL",
            (*_graph_columns(graph), version),
        )


def _graph_columns(graph: bytes | None) -> tuple[Any, str | None]:
    if graph is None:
        return None, None
    return psycopg2.Binary(graph), hashlib.sha256(graph).hexdigest()


def list_models(db: Database) -> list[ModelRecord]:
    """Every version, newest first."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM models ORDER BY created_at DESC, version")
        return [_record(row) for row in cur.fetchall()]


def promote(db: Database, version: str, *, reason: str) -> ModelRecord:
    """Make `version` the champion and retire the previous one, in one transaction."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAMPION_LOCK_KEY,))
        target = _fetch(cur, version, lock=True)
        if target.status == "champion":
            raise RegistryError(f"{version!r} is already the champion")
        cur.execute(
            "UPDATE models SET status = 'retired' WHERE status = 'champion' RETURNING version"
        )
        cur.execute(
            """UPDATE models SET status = 'champion', promoted_at = now(), reason = %s,
                                 rolled_back = false
               WHERE version = %s""",
            (reason, version),
        )
        _notify(cur, version)
        return _fetch(cur, version)


def reject(db: Database, version: str, *, reason: str) -> ModelRecord:
    with db.connection() as conn, conn.cursor() as cur:
        target = _fetch(cur, version, lock=True)
        if target.status == "champion":
            raise RegistryError(f"{version!r} is the champion; roll back instead of rejecting")
        cur.execute(
            "UPDATE models SET status = 'rejected', reason = %s WHERE version = %s",
            (reason, version),
        )
        return _fetch(cur, version)


def rollback(db: Database, *, reason: str) -> ModelRecord:
    """Retire the champion and bring back the one promoted before it, in one transaction."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAMPION_LOCK_KEY,))
        # Locks every promoted row: two rollbacks at once cannot skip a version.
        cur.execute(
            f"""SELECT {_COLUMNS} FROM models
                WHERE promoted_at IS NOT NULL AND status IN ('champion', 'retired')
                  AND NOT rolled_back
                ORDER BY promoted_at DESC FOR UPDATE"""
        )
        promoted = [_record(row) for row in cur.fetchall()]
        if not promoted or promoted[0].status != "champion":
            raise RegistryError("there is no champion to roll back")
        if len(promoted) < 2:
            raise RegistryError(
                f"{promoted[0].version!r} is the only version promoted and never rolled back: "
                "nothing to roll back to"
            )
        current, previous = promoted[0], promoted[1]
        cur.execute(
            """UPDATE models SET status = 'retired', rolled_back = true, reason = %s
               WHERE version = %s""",
            (f"rolled back: {reason}", current.version),
        )
        cur.execute(
            """UPDATE models SET status = 'champion', promoted_at = now(), reason = %s
               WHERE version = %s""",
            (f"rollback from {current.version}: {reason}", previous.version),
        )
        _notify(cur, previous.version)
        return _fetch(cur, previous.version)


def register_shipped(db: Database, weights_path: Path) -> ModelRecord:
    """Register the weights shipped with the app (and their card) idempotently: as the first
    champion when there is none, else as a candidate that the gate or a person may promote."""
    card_path = weights_path.with_name(CARD_NAME)
    card = json.loads(card_path.read_text(encoding="utf-8"))
    weights = weights_path.read_bytes()
    version, arch = str(card["version"]), str(card["architecture"])
    sha = hashlib.sha256(weights).hexdigest()
    graph = graph_beside(weights_path, card.get("onnx_sha256"))
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SHIPPED_LOCK_KEY,))
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAMPION_LOCK_KEY,))
        cur.execute("SELECT sha256 FROM models WHERE version = %s", (version,))
        existing = cur.fetchone()
        if existing is not None:
            if existing[0] != sha:
                raise RegistryError(
                    f"the shipped {version!r} differs from the registered one (sha256)"
                )
            return _fetch(cur, version)
        cur.execute("SELECT 1 FROM models WHERE status = 'champion'")
        first = cur.fetchone() is None
        cur.execute(
            """INSERT INTO models (version, arch, sha256, weights, card, status, promoted_at,
                                   reason, onnx, onnx_sha256)
               VALUES (%s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END, %s, %s, %s)""",
            (
                version,
                arch,
                sha,
                psycopg2.Binary(weights),
                psycopg2.extras.Json(card),
                "champion" if first else "candidate",
                first,
                "shipped with the app"
                if first
                else "shipped with the app; not promoted "
                "because a champion already serves (promote it to serve it)",
                *_graph_columns(graph),
            ),
        )
        if first:
            _notify(cur, version)
        record = _fetch(cur, version)
    log.info(
        "registered the shipped model",
        extra={"model_version": version, "registry_status": record.status},
    )
    return record


class ChampionListener:
    """A dedicated connection that LISTENs for promotions and rollbacks.

    Pooled connections cannot listen (they are shared and reset); this one is owned by one
    watcher thread. Any connection problem surfaces as DatabaseUnavailable; the next `wait`
    reconnects.
    """

    def __init__(self, dsn: str, *, connect_timeout_s: int = 3) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg2.extensions.connection | None = None

    def _connect(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            try:
                conn = psycopg2.connect(
                    self._dsn,
                    connect_timeout=self._connect_timeout_s,
                    application_name="digit-predictor-model-listener",
                )
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f"LISTEN {CHANNEL}")
            except psycopg2.Error as exc:
                raise DatabaseUnavailable(str(exc).strip()) from exc
            self._conn = conn
        return self._conn

    def wait(self, timeout_s: float) -> list[str]:
        """Block up to `timeout_s`; return the versions announced meanwhile (maybe none)."""
        conn = self._connect()
        try:
            readable, _, _ = select.select([conn], [], [], timeout_s)
            if readable:
                conn.poll()
            versions = [note.payload for note in conn.notifies]
            conn.notifies.clear()
        except (psycopg2.Error, OSError, ValueError) as exc:
            self.close()
            raise DatabaseUnavailable(f"model listener connection lost: {exc}") from exc
        return versions

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None
