"""`python -m digit_predictor.ml.retrain` as a person or the trainer service runs it, against a
real PostgreSQL: the exit-status contract, what it writes (and does not), determinism, the
promote and rollback subcommands."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from digit_predictor.config import DEFAULT_MODEL_PATH, PROJECT_ROOT
from digit_predictor.db import Database, registry
from digit_predictor.ml.inference import Classifier
from digit_predictor.ml.preprocess import preprocess_bytes
from digit_predictor.ml.retrain import HookContext, options_from_args, parse_args, retrain
from digit_predictor.ml.serving import ServingClassifier

from .feedback_rows import add_corrections, usps_drawings

pytestmark = pytest.mark.slow

# Seconds, not minutes: a small replay, small benchmarks, a few steps on one thread.
QUICK = [
    "--replay-mnist=3000",
    "--no-replay-extra",
    "--replay-redrawn=0",
    "--max-lr=1e-3",
    "--gate-limit=300",
    "--canvas-n=300",
    "--batch-size=64",
    "--min-steps=40",
    "--max-steps=40",
    "--threads=1",
    "--no-progress",
    "--no-refit-trust",  # minutes; tests/test_learning_loop.py runs it, on a small set
]


def retrain_cli(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digit_predictor.ml.retrain", *args],
        env={**os.environ, "DATABASE_URL": database_url, **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def own_db(own_database_url: str) -> Iterator[Database]:
    database = Database(own_database_url, max_size=2)
    yield database
    database.close()


def register_weakened_champion(db: Database) -> str:
    """The shipped model with noise on its last layer (about 87% on MNIST): retraining must win."""
    state = torch.load(DEFAULT_MODEL_PATH, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    weight = state["classifier.2.weight"]
    state["classifier.2.weight"] = weight + 2.5 * weight.std() * torch.randn(
        weight.shape, generator=generator
    )
    buffer = io.BytesIO()
    torch.save(state, buffer)
    card = {"version": "weakened-1", "architecture": "bn_cnn_wide", "note": "test champion"}
    registry.register(
        db,
        version="weakened-1",
        parent_version=None,
        arch="bn_cnn_wide",
        weights=buffer.getvalue(),
        card=card,
    )
    registry.promote(db, "weakened-1", reason="test")
    return "weakened-1"


def statuses(db: Database) -> dict[str, str]:
    return {m.version: m.status for m in registry.list_models(db)}


def test_the_cli_contract_from_too_few_corrections_to_rollback(
    own_database_url: str, own_db: Database
) -> None:
    champion = register_weakened_champion(own_db)
    drawings = usps_drawings(200)
    add_corrections(own_db, drawings[:40])

    few = retrain_cli(own_database_url, "--promote", *QUICK)
    assert few.returncode == 3, few.stdout + few.stderr
    assert last_line(few).startswith("refused: only 40 corrections in the database, at least 50")
    assert statuses(own_db) == {champion: "champion"}

    add_corrections(own_db, drawings[40:])
    dry = retrain_cli(own_database_url, "--dry-run", *QUICK)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "feedback holdout" in dry.stdout and "MNIST test" in dry.stdout
    assert "conflicts dropped as ties: 0" in dry.stdout
    assert last_line(dry).startswith("dry run, nothing written: bn_cnn_wide-")
    assert last_line(dry).endswith("would be promoted")
    assert statuses(own_db) == {champion: "champion"}
    dry_version = last_line(dry).split()[4]

    done = retrain_cli(own_database_url, "--promote", *QUICK)
    assert done.returncode == 0, done.stdout + done.stderr
    new = registry.champion(own_db)
    assert new is not None and new.parent_version == champion
    # Same seed, same thread count, same data: the same weights as the dry run.
    assert new.version == dry_version
    assert last_line(done).startswith(f"promoted {new.version}: the gate passed")
    assert new.card["gate"]["passed"] is True
    assert [r["benchmark"] for r in new.card["gate"]["rows"]] == [
        "feedback holdout",
        "MNIST test",
        "canvas benchmark",
        "USPS test",
        "optdigits windep",
    ]
    counts = new.card["retraining"]["corrections"]
    assert counts["rows"] == 200 and counts["train"] + counts["holdout"] == 200
    # Registered with the ONNX graph the api serves, exported from these very weights.
    graph = registry.load_graph(own_db, new.version)
    assert graph is not None
    assert new.card["onnx_sha256"] == hashlib.sha256(graph).hexdigest()
    served = ServingClassifier(graph, new.card, arch=new.arch, weights=b"")
    weights = registry.load_weights(own_db, new.version)
    network = Classifier.from_weights(new.arch, weights, {"version": new.version})
    x = np.stack([preprocess_bytes(png).array for png, _ in drawings[:16]])
    assert np.allclose(
        served.predict_proba(x), network.predict_proba(torch.from_numpy(x)), atol=1e-5
    )
    assert statuses(own_db) == {champion: "retired", new.version: "champion"}

    again = retrain_cli(own_database_url, "--promote", *QUICK)
    assert again.returncode == 3
    assert last_line(again).startswith("refused: no new corrections since the champion")
    assert len(statuses(own_db)) == 2

    back = retrain_cli(own_database_url, "rollback", "--reason", "test")
    assert back.returncode == 0, back.stderr
    assert statuses(own_db) == {champion: "champion", new.version: "retired"}
    forth = retrain_cli(own_database_url, "promote", new.version)
    assert forth.returncode == 0, forth.stderr
    assert statuses(own_db) == {champion: "retired", new.version: "champion"}


def test_a_challenger_the_gate_refuses_is_kept_as_rejected(
    own_database_url: str, own_db: Database
) -> None:
    shipped = registry.register_shipped(own_db, DEFAULT_MODEL_PATH)
    add_corrections(own_db, usps_drawings(80))
    # A learning rate this high wrecks the network: MNIST and the rest must fall.
    run = retrain_cli(own_database_url, "--promote", *QUICK, "--max-lr=0.5")  # the last wins
    assert run.returncode == 3, run.stdout + run.stderr
    assert "rejected: the gate refused:" in last_line(run)
    assert "MNIST test" in last_line(run)
    (rejected,) = [m for m in registry.list_models(own_db) if m.status == "rejected"]
    assert rejected.reason is not None and rejected.reason.startswith("the gate refused")
    assert rejected.card["gate"]["passed"] is False
    assert registry.champion(own_db) == registry.get_model(own_db, shipped.version)


def test_failures_exit_1_with_a_message(
    own_database_url: str, own_db: Database, tmp_path: Path
) -> None:
    registry.register_shipped(own_db, DEFAULT_MODEL_PATH)
    no_mnist = retrain_cli(own_database_url, "--promote", *QUICK, MNIST_DIR=str(tmp_path))
    assert no_mnist.returncode == 1
    assert "MNIST file missing" in no_mnist.stderr
    down = retrain_cli("postgresql://nobody@127.0.0.1:9/none", "--promote", *QUICK)
    assert down.returncode == 1
    assert down.stderr.strip().splitlines()[-1].startswith("error:")
    unknown = retrain_cli(own_database_url, "promote", "no-such-version")
    assert unknown.returncode == 1
    assert "no model version 'no-such-version'" in unknown.stderr
    assert len(statuses(own_db)) == 1


class RecordingHook:
    """A post-fine-tune step that remembers what it was given."""

    name = "recorder"

    def __init__(self) -> None:
        self.models: list[torch.nn.Module] = []
        self.train_sizes: list[int] = []

    def __call__(self, model: torch.nn.Module, context: HookContext) -> dict[str, Any]:
        self.models.append(model)
        self.train_sizes.append(len(context.feedback_train))
        return {"fitted_on": len(context.feedback_train) + len(context.feedback_holdout)}


def test_post_fine_tune_hooks_see_the_challenger_and_fill_the_card(
    own_db: Database,
) -> None:
    shipped = registry.register_shipped(own_db, DEFAULT_MODEL_PATH)
    add_corrections(own_db, usps_drawings(60))
    hook = RecordingHook()
    args = parse_args(["--dry-run", *QUICK])
    outcome = retrain(own_db, options_from_args(args, "pytest"), hooks=[hook], say=lambda _: None)
    (model,) = hook.models
    champion_weights = torch.load(
        io.BytesIO(registry.load_weights(own_db, shipped.version)), weights_only=True
    )
    # The hook got the fine-tuned challenger, not the champion.
    assert not torch.equal(
        model.state_dict()["classifier.2.weight"], champion_weights["classifier.2.weight"]
    )
    assert hook.train_sizes[0] == outcome.card["retraining"]["corrections"]["train"]
    assert outcome.card["post_finetune"] == {"recorder": {"fitted_on": 60}}
    assert not outcome.registered
    assert [m.version for m in registry.list_models(own_db)] == [shipped.version]
