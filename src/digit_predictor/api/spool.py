"""Rows answered 202 kept on local disk until PostgreSQL has them, so that a worker killed
during an outage (`kill -9`, out of memory) loses nothing.

Each worker owns one SQLite file in WAL mode (`WRITE_SPOOL_DIR/spool-*.sqlite`) and holds an
exclusive `flock` on it for its whole life. A row goes in just before its 202 is sent and out
once the writer has committed it to PostgreSQL. A worker that starts takes over every spool
whose owner is gone (the kernel released its lock when it died): it copies the rows into its
own spool and its write queue, then deletes the old file. Rows carry their request_id, and the
INSERT into PostgreSQL ignores one already stored, so a row spooled twice is still one row.

WAL with `synchronous=NORMAL` survives the process dying at any point (the data is in the
operating system's page cache); it is not fsynced per row, so a power cut may lose the last
moments' rows.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from digit_predictor.db.queries import NewPrediction

log = logging.getLogger(__name__)

PREFIX = "spool-"


def _encode(row: NewPrediction) -> str:
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(row):
        value = getattr(row, f.name)
        if f.name == "image_data":
            continue  # stored as a BLOB beside the JSON
        if isinstance(value, uuid.UUID | datetime):
            value = str(value) if isinstance(value, uuid.UUID) else value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        fields[f.name] = value
    return json.dumps(fields)


def _decode(fields_json: str, image: bytes) -> NewPrediction:
    fields = json.loads(fields_json)
    fields["request_id"] = uuid.UUID(fields["request_id"])
    if fields.get("created_at"):
        fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    return NewPrediction(image_data=bytes(image), **fields)


class Spool:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}.sqlite"
        fd = _lock(self.path)
        if fd is None:  # a new, unique name: nobody else can hold it
            raise RuntimeError(f"spool {self.path} is locked by another process")
        self._lock_fd = fd
        self._db = _open(self.path)
        self._mutex = threading.Lock()

    def add(self, row: NewPrediction) -> None:
        with self._mutex:
            self._db.execute(
                "INSERT OR IGNORE INTO rows (request_id, fields, image) VALUES (?, ?, ?)",
                (str(row.request_id), _encode(row), row.image_data),
            )

    def remove(self, request_ids: Iterable[uuid.UUID]) -> None:
        with self._mutex:
            self._db.executemany(
                "DELETE FROM rows WHERE request_id = ?", [(str(i),) for i in request_ids]
            )

    def __len__(self) -> int:
        with self._mutex:
            (count,) = self._db.execute("SELECT count(*) FROM rows").fetchone()
        return int(count)

    def adopt_orphans(self) -> list[NewPrediction]:
        """Rows of spools whose owner died, now in this spool (oldest first); their files are
        deleted."""
        adopted: list[NewPrediction] = []
        for path in sorted(self.directory.glob(f"{PREFIX}*.sqlite")):
            if path == self.path:
                continue
            fd = _lock(path)
            if fd is None:
                continue  # a live worker's spool
            try:
                orphan = _open(path)
                rows = orphan.execute("SELECT fields, image FROM rows ORDER BY rowid").fetchall()
                orphan.close()
                found = [_decode(fields, image) for fields, image in rows]
                for row in found:
                    self.add(row)
                adopted.extend(found)
                _delete(path)
            finally:
                os.close(fd)
        if adopted:
            log.warning(
                "took over prediction rows spooled by a worker that is gone",
                extra={"rows": len(adopted)},
            )
        adopted.sort(key=lambda r: r.created_at or datetime.min)
        return adopted

    def close(self, *, keep: bool) -> None:
        """Close; delete the file unless rows must survive (`keep`: some were not written)."""
        with self._mutex:
            self._db.close()
        if not keep:
            _delete(self.path)
        os.close(self._lock_fd)


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS rows (request_id TEXT PRIMARY KEY, fields TEXT, image BLOB)"
    )
    return db


def _lock(path: Path) -> int | None:
    """An exclusive lock on `path`'s lock file, or None when another process holds it."""
    fd = os.open(path.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.with_suffix(".lock").unlink(missing_ok=True)
