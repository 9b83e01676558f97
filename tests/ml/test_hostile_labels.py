"""Wrong and hostile answers never lead to a promoted model that is worse on MNIST or on
held-out real handwriting: the label guard drops most of them and the gate refuses the rest.

Quality is judged on images neither the training nor the gate saw (MNIST test 5000-6999, USPS
test after the gate's first 300), so the check is independent of the gate it backs up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.db import Database, registry
from digit_predictor.ml.batch import predict
from digit_predictor.ml.data import default_data_dir, load_split
from digit_predictor.ml.extra_digits import heldout_digits
from digit_predictor.ml.gate import MAX_DROP, MNIST, USPS
from digit_predictor.ml.inference import Classifier

from .feedback_rows import add_corrections, usps_drawings
from .test_retrain import QUICK, last_line, retrain_cli

pytestmark = pytest.mark.slow

GATE_LIMIT = 300  # as in QUICK


@pytest.fixture
def own_db(own_database_url: str) -> Iterator[Database]:
    database = Database(own_database_url, max_size=2)
    yield database
    database.close()


def unseen() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    test = load_split(default_data_dir(), "t10k")
    usps_images, usps_labels = heldout_digits(limit=1300)["USPS test"]
    return {
        MNIST: (test.images[5000:7000], test.labels[5000:7000]),
        USPS: (usps_images[GATE_LIMIT:], usps_labels[GATE_LIMIT:]),
    }


def serving(db: Database) -> Classifier:
    record = registry.champion(db)
    assert record is not None
    return Classifier.from_weights(
        record.arch, registry.load_weights(db, record.version), record.card
    )


def assert_no_worse_where_it_matters(db: Database, shipped: Classifier) -> None:
    live = serving(db)
    for name, (images, labels) in unseen().items():
        before = float((predict(shipped.model, images) == labels).mean())
        after = float((predict(live.model, images) == labels).mean())
        assert 100 * (before - after) <= MAX_DROP[name], (name, before, after, live.version)


def newest_card(db: Database) -> dict[str, Any]:
    card: dict[str, Any] = registry.list_models(db)[0].card
    return card


def test_thirty_percent_random_answers(own_database_url: str, own_db: Database) -> None:
    registry.register_shipped(own_db, DEFAULT_MODEL_PATH)
    shipped = Classifier.load(DEFAULT_MODEL_PATH)
    drawings = usps_drawings(300, seed=3)
    rng = np.random.default_rng(30)
    wrong = rng.random(len(drawings)) < 0.3
    answers = [
        (label + int(rng.integers(1, 10))) % 10 if bad else label
        for (_, label), bad in zip(drawings, wrong, strict=True)
    ]
    add_corrections(own_db, drawings, answers=answers)

    run = retrain_cli(own_database_url, "--promote", *QUICK)
    assert run.returncode in (0, 3), run.stdout + run.stderr
    assert "rejected" in last_line(run) or "promoted" in last_line(run)
    guard = newest_card(own_db)["retraining"]["label_guard"]
    dropped = guard["train"]["dropped_as_implausible"] + guard["holdout"]["dropped_as_implausible"]
    # Most random answers are not among the champion's top 3; honest ones almost always are.
    assert 0.6 * wrong.sum() <= dropped <= wrong.sum() + 0.02 * (~wrong).sum()
    assert_no_worse_where_it_matters(own_db, shipped)


def test_one_source_answering_1_for_every_7(own_database_url: str, own_db: Database) -> None:
    registry.register_shipped(own_db, DEFAULT_MODEL_PATH)
    shipped = Classifier.load(DEFAULT_MODEL_PATH)
    add_corrections(own_db, usps_drawings(250, seed=4), source="web")
    sevens = usps_drawings(150, seed=5, digit=7, start=2000)
    add_corrections(own_db, sevens, answers=[1] * len(sevens), source="mallory")

    run = retrain_cli(own_database_url, "--promote", *QUICK)
    assert run.returncode in (0, 3), run.stdout + run.stderr
    guard = newest_card(own_db)["retraining"]["label_guard"]
    dropped = guard["train"]["dropped_as_implausible"] + guard["holdout"]["dropped_as_implausible"]
    assert dropped >= 0.6 * len(sevens)
    assert_no_worse_where_it_matters(own_db, shipped)
    # Nor does whatever serves now read 7s as 1 more often than the shipped model does.
    images, labels = unseen()[USPS]
    sevens_unseen = images[labels == 7]
    live = serving(own_db)
    as_one_before = int((predict(shipped.model, sevens_unseen) == 1).sum())
    as_one_after = int((predict(live.model, sevens_unseen) == 1).sum())
    assert as_one_after <= as_one_before, (as_one_before, as_one_after, live.version)
