"""The shipped weights load safely, stay small, answer probabilities, and read real drawings."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.ml.inference import Classifier, serving_copy
from digit_predictor.ml.preprocess import preprocess_bytes
from digit_predictor.ml.serving import ModelLoadError, ModelNotFoundError
from digit_predictor.ml.synthetic_digits import pen_digit, to_png
from digit_predictor.ml.trust_head import assess


@pytest.fixture(scope="module")
def shipped() -> Classifier:
    classifier = Classifier.load(DEFAULT_MODEL_PATH)
    classifier.warm_up()
    return classifier


def test_shipped_weights_are_small_and_described_by_the_card(shipped: Classifier) -> None:
    assert DEFAULT_MODEL_PATH.stat().st_size <= 10 * 1024 * 1024
    card = shipped.card
    for key in ("version", "architecture", "parameter_count", "weights_sha256", "command"):
        assert key in card, key
    assert shipped.version == card["version"]
    assert shipped.is_warm


def test_predict_proba_rows_are_probabilities(shipped: Classifier) -> None:
    probs = shipped.predict_proba(torch.randn(7, 1, 28, 28))
    assert probs.shape == (7, 10)
    assert (probs >= 0).all()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-9)


def test_wrong_input_shape_is_refused(shipped: Classifier) -> None:
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        shipped.predict_proba(torch.zeros(1, 28, 28))


def test_reads_pen_drawn_digits(shipped: Classifier) -> None:
    rng = np.random.default_rng(123)
    labels = [d for d in range(10) for _ in range(3)]
    batch = torch.stack([preprocess_bytes(to_png(pen_digit(d, rng))).tensor for d in labels])
    preds = shipped.predict_proba(batch).argmax(axis=1)
    assert (preds == np.array(labels)).mean() >= 0.8


def test_concurrent_calls_agree_with_serial_ones(shipped: Classifier) -> None:
    batches = [
        torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(i)) for i in range(8)
    ]
    serial = [shipped.predict_proba(b) for b in batches]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = shipped.predict_proba(batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, expected in enumerate(serial):
        assert np.allclose(results[i], expected, atol=1e-6)


def test_answers_are_the_trained_networks_answers(shipped: Classifier) -> None:
    """`assess` serves a rearranged copy (batch norms folded, channels-last): same answers."""
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    served = shipped.assess(x)
    with torch.inference_mode():
        out = assess(shipped.model.eval(), x)
    expected = torch.softmax(out.logits.double(), dim=1).numpy()
    assert np.allclose(served.probabilities, expected, atol=1e-5)
    assert np.allclose(served.ood_score, out.ood_score.numpy(), atol=1e-5)
    folded = serving_copy(shipped.model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in shipped.model.modules())  # untouched


def copy_model(tmp_path: Path) -> Path:
    for name in ("model.pt", "model_card.json"):
        shutil.copy(DEFAULT_MODEL_PATH.with_name(name), tmp_path / name)
    return tmp_path / "model.pt"


def test_missing_weights_or_card_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"weights not found.*digit_predictor\.ml\.train"):
        Classifier.load(tmp_path / "model.pt")
    weights = copy_model(tmp_path)
    (tmp_path / "model_card.json").unlink()
    with pytest.raises(ModelNotFoundError, match="model card not found"):
        Classifier.load(weights)


def test_weights_that_do_not_match_the_card_are_refused(tmp_path: Path) -> None:
    weights = copy_model(tmp_path)
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ModelLoadError, match="sha256"):
        Classifier.load(weights)


def test_pickled_code_is_not_executed(tmp_path: Path) -> None:
    weights = copy_model(tmp_path)
    card_path = tmp_path / "model_card.json"
    card = json.loads(card_path.read_text())
    card.pop("weights_sha256")
    card_path.write_text(json.dumps(card))

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    torch.save({"payload": Evil()}, weights)
    with pytest.raises(ModelLoadError):
        Classifier.load(weights)


def test_an_unknown_architecture_is_a_model_that_cannot_be_loaded(tmp_path: Path) -> None:
    # A registry row from a newer release: the api's champion watcher keeps its current model
    # on ModelLoadError, so anything else would kill the watcher thread.
    weights = copy_model(tmp_path)
    with pytest.raises(ModelLoadError, match="unknown architecture 'a'"):
        Classifier.from_weights("a", weights.read_bytes(), {}, origin="registry version x")
