"""The model registry against a real PostgreSQL: one champion, atomic promotion and rollback with
NOTIFY, the shipped model registered once, weights checked on the way out."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from digit_predictor.db import Database, RowRejected, registry


def _add(db: Database, version: str, payload: bytes = b"", **kwargs: Any) -> registry.ModelRecord:
    return registry.register(
        db,
        version=version,
        parent_version=kwargs.pop("parent_version", None),
        arch="bn_cnn_wide",
        weights=payload or version.encode() * 10,
        card=kwargs.pop("card", {"note": version}),
        **kwargs,
    )


def _shipped(tmp_path: Path, version: str, payload: bytes) -> Path:
    folder = tmp_path / version
    folder.mkdir()
    weights = folder / "model.pt"
    weights.write_bytes(payload)
    card = {"version": version, "architecture": "bn_cnn_wide", "accuracy": 0.99}
    (folder / "model_card.json").write_text(json.dumps(card), encoding="utf-8")
    return weights


def _statuses(db: Database) -> dict[str, str]:
    return {record.version: record.status for record in registry.list_models(db)}


def test_the_shipped_model_becomes_the_first_champion_once(db: Database, tmp_path: Path) -> None:
    first = _shipped(tmp_path, "shipped-1", b"weights-one")
    record = registry.register_shipped(db, first)
    assert record.status == "champion" and record.promoted_at is not None
    assert record.sha256 == hashlib.sha256(b"weights-one").hexdigest()
    assert record.card["accuracy"] == 0.99
    # Again (every api start does this): nothing changes.
    again = registry.register_shipped(db, first)
    assert again == record
    # A newer image ships other weights: registered, but the serving champion stays.
    second = registry.register_shipped(db, _shipped(tmp_path, "shipped-2", b"weights-two"))
    assert second.status == "candidate"
    assert _statuses(db) == {"shipped-1": "champion", "shipped-2": "candidate"}
    assert registry.load_weights(db, "shipped-1") == b"weights-one"


def test_concurrent_starts_register_one_champion(db: Database, tmp_path: Path) -> None:
    paths = [_shipped(tmp_path, f"image-{i}", f"w{i}".encode()) for i in range(4)]
    errors: list[BaseException] = []

    def start(path: Path) -> None:
        try:
            registry.register_shipped(db, path)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list(_statuses(db).values()).count("champion") == 1


def test_promote_retires_the_old_champion_and_notifies(db: Database, tmp_path: Path) -> None:
    registry.register_shipped(db, _shipped(tmp_path, "v1", b"one"))
    listener = registry.ChampionListener(db.dsn)
    try:
        assert listener.wait(0.05) == []  # connects and listens
        challenger = _add(db, "v2", parent_version="v1", card={"gate": {"passed": True}})
        assert challenger.status == "candidate" and challenger.parent_version == "v1"
        promoted = registry.promote(db, "v2", reason="gate passed")
        assert promoted.status == "champion" and promoted.reason == "gate passed"
        assert _statuses(db) == {"v1": "retired", "v2": "champion"}
        assert listener.wait(2.0) == ["v2"]
    finally:
        listener.close()
    with pytest.raises(registry.RegistryError, match="already the champion"):
        registry.promote(db, "v2", reason="again")
    with pytest.raises(registry.RegistryError, match="no model version"):
        registry.promote(db, "nope", reason="typo")


def test_rollback_brings_back_the_previous_champion(db: Database, tmp_path: Path) -> None:
    registry.register_shipped(db, _shipped(tmp_path, "v1", b"one"))
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback(db, reason="only one")
    _add(db, "v2")
    _add(db, "v3")
    registry.promote(db, "v2", reason="better")
    registry.promote(db, "v3", reason="better still")
    listener = registry.ChampionListener(db.dsn)
    try:
        listener.wait(0.05)
        back = registry.rollback(db, reason="users complain")
        assert back.version == "v2" and back.status == "champion"
        assert listener.wait(2.0) == ["v2"]
    finally:
        listener.close()
    assert registry.rollback(db, reason="again").version == "v1"  # never back to v3
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback(db, reason="once more")
    assert _statuses(db) == {"v1": "champion", "v2": "retired", "v3": "retired"}
    assert "users complain" in (registry.get_model(db, "v3").reason or "")


def test_a_rejected_challenger_keeps_its_reason(db: Database, tmp_path: Path) -> None:
    registry.register_shipped(db, _shipped(tmp_path, "v1", b"one"))
    _add(db, "v2")
    rejected = registry.reject(db, "v2", reason="MNIST dropped 0.4 points")
    assert rejected.status == "rejected" and rejected.reason == "MNIST dropped 0.4 points"
    with pytest.raises(registry.RegistryError, match="roll back instead"):
        registry.reject(db, "v1", reason="no")


def test_the_database_allows_one_champion_only(db: Database, tmp_path: Path) -> None:
    registry.register_shipped(db, _shipped(tmp_path, "v1", b"one"))
    _add(db, "v2")
    with (
        pytest.raises(RowRejected, match="models_one_champion"),
        db.connection() as conn,
        conn.cursor() as cur,
    ):
        cur.execute("UPDATE models SET status = 'champion', promoted_at = now() WHERE version='v2'")


def test_same_version_with_other_weights_is_refused(db: Database) -> None:
    _add(db, "v1", b"one")
    assert _add(db, "v1", b"one").sha256 == hashlib.sha256(b"one").hexdigest()  # idempotent
    with pytest.raises(registry.RegistryError, match="other weights"):
        _add(db, "v1", b"two")


def test_tampered_weights_are_not_loaded(db: Database) -> None:
    _add(db, "v1", b"one")
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("UPDATE models SET weights = 'evil' WHERE version = 'v1'")
    with pytest.raises(registry.RegistryError, match="sha256"):
        registry.load_weights(db, "v1")


def test_concurrent_promotions_leave_one_champion(db: Database, tmp_path: Path) -> None:
    registry.register_shipped(db, _shipped(tmp_path, "v0", b"zero"))
    versions = [f"c{i}" for i in range(6)]
    for version in versions:
        _add(db, version)
    barrier = threading.Barrier(len(versions))

    errors: list[BaseException] = []

    def promote(version: str) -> None:
        barrier.wait()
        try:
            registry.promote(db, version, reason="race")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []  # serialised: every promotion succeeds, the last one wins
    statuses = _statuses(db)
    assert list(statuses.values()).count("champion") == 1
    assert statuses["v0"] == "retired"


def test_the_onnx_graph_travels_with_its_version(db: Database, tmp_path: Path) -> None:
    # Retraining registers the graph with the weights; the shipped model brings its file.
    _add(db, "with-graph", onnx=b"graph-one")
    assert registry.load_graph(db, "with-graph") == b"graph-one"
    folder = _shipped(tmp_path, "shipped-g", b"weights-g").parent
    card = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
    card["onnx_sha256"] = hashlib.sha256(b"shipped graph").hexdigest()
    (folder / "model_card.json").write_text(json.dumps(card), encoding="utf-8")
    (folder / "model.onnx").write_bytes(b"shipped graph")
    registry.register_shipped(db, folder / "model.pt")
    assert registry.load_graph(db, "shipped-g") == b"shipped graph"
    # A graph file that is not the card's is left out: the api exports a fresh one.
    stale = _shipped(tmp_path, "shipped-stale", b"weights-s")
    (stale.parent / "model.onnx").write_bytes(b"some other graph")
    registry.register_shipped(db, stale)
    assert registry.load_graph(db, "shipped-stale") is None
    # A version without one gets the graph its first exporter stores; later ones change nothing.
    _add(db, "without-graph")
    assert registry.load_graph(db, "without-graph") is None
    registry.store_graph(db, "without-graph", b"exported first")
    registry.store_graph(db, "without-graph", b"exported second")
    assert registry.load_graph(db, "without-graph") == b"exported first"
    # Bytes that no longer match their sha256 are refused, like weights.
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("UPDATE models SET onnx = 'tampered' WHERE version = 'with-graph'")
    with pytest.raises(registry.RegistryError, match=r"ONNX graph .* does not match"):
        registry.load_graph(db, "with-graph")
