"""The trust parameters: metrics, the temperature fit, the head in the state dict, the fit itself,
and the shipped model against held-out non-digits and real digits."""

from __future__ import annotations

import copy
import io
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.ml.card import ModelCard
from digit_predictor.ml.data import default_data_dir, load_split
from digit_predictor.ml.inference import Classifier
from digit_predictor.ml.models import build_model
from digit_predictor.ml.nondigits import HELDOUT, TRAIN, DigitSource, generators, nondigit_set
from digit_predictor.ml.trust import (
    TrustData,
    auroc,
    draw_parts,
    ece,
    fit_on,
    fit_temperature,
    normalised,
    on_canvas,
    reliability,
    training_nondigits,
)
from digit_predictor.ml.trust_head import TrustHead, assess, head_of, load_state

# --- metrics -----------------------------------------------------------------------------------


def test_auroc_matches_counting_every_pair() -> None:
    rng = np.random.default_rng(0)
    pos = np.round(rng.normal(1.0, 1.0, 60), 1)  # rounded: plenty of ties
    neg = np.round(rng.normal(0.0, 1.0, 80), 1)
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auroc(pos, neg) == pytest.approx(pairs / (60 * 80))


def test_auroc_extremes() -> None:
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    assert auroc(np.ones(5), np.ones(7)) == 0.5
    with pytest.raises(ValueError):
        auroc(np.array([]), np.ones(3))


def test_ece_of_a_known_miscalibration() -> None:
    # Every answer at confidence 0.9, right half of the time: ECE is |0.5 - 0.9| = 0.4.
    probs = np.full((100, 10), 0.1 / 9)
    probs[:, 0] = 0.9
    labels = np.where(np.arange(100) % 2 == 0, 0, 1)
    assert ece(probs, labels) == pytest.approx(0.4)
    bins = reliability(probs, labels)
    assert len(bins) == 1 and bins[0]["count"] == 100
    assert bins[0]["lo"] < 0.9 <= bins[0]["hi"]


def test_ece_is_small_when_confidence_is_the_hit_rate() -> None:
    rng = np.random.default_rng(1)
    n = 20000
    conf = rng.uniform(0.3, 1.0, n)
    right = rng.random(n) < conf
    probs = np.full((n, 10), 0.0)
    probs[:, 0] = conf
    probs[:, 1:] = ((1 - conf) / 9)[:, None]
    labels = np.where(right, 0, 1)
    assert ece(probs, labels) < 0.015
    assert sum(b["count"] for b in reliability(probs, labels)) == n


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=gen) * 4.0
    labels = torch.multinomial(torch.softmax(logits / 2.0, dim=1), 1, generator=gen)[:, 0]
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.05)
    # Over-sharp labels (drawn at T = 0.5) give a temperature below 1.
    sharp = torch.multinomial(torch.softmax(logits / 0.5, dim=1), 1, generator=gen)[:, 0]
    assert fit_temperature(logits, sharp) == pytest.approx(0.5, rel=0.05)


# --- the head in the state dict ----------------------------------------------------------------


def test_a_fresh_head_is_unfitted_and_never_calls_a_drawing_a_non_digit() -> None:
    model = build_model("bn_cnn").eval()
    x = torch.randn(5, 1, 28, 28)
    out = assess(model, x)
    probs = torch.softmax(model(x), dim=1)
    assert out.is_digit.all()
    assert torch.allclose(out.ood_score, 1 - probs.max(dim=1).values, atol=1e-6)
    assert torch.allclose(torch.softmax(out.logits, dim=1), probs, atol=1e-6)


def test_trust_buffers_travel_in_the_state_dict_and_train_nothing() -> None:
    model = build_model("bn_cnn_wide")
    keys = set(model.state_dict())
    assert {"trust.temperature", "trust.threshold", "trust.w1", "trust.fitted"} <= keys
    assert not any(name.startswith("trust.") for name, _ in model.named_parameters())
    head = model.trust
    assert isinstance(head, TrustHead)
    head.temperature.fill_(1.7)
    head.fitted.fill_(1.0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    again = build_model("bn_cnn_wide")
    assert load_state(again, torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert float(head_of(again).temperature) == pytest.approx(1.7) and head_of(again).is_fitted


def test_weights_from_before_the_trust_head_still_load_unfitted(tmp_path: Path) -> None:
    model = build_model("seed")
    old_state = {k: v for k, v in model.state_dict().items() if not k.startswith("trust.")}
    fresh = build_model("seed")
    assert load_state(fresh, old_state) is False
    assert not head_of(fresh).is_fitted
    broken = dict(old_state)
    broken.pop("features.0.weight")
    with pytest.raises(RuntimeError, match=r"features\.0\.weight"):
        load_state(build_model("seed"), broken)


def test_registry_weights_from_before_the_trust_head_load_as_a_classifier() -> None:
    # The registry hands weights over as bytes (Classifier.from_weights), not as a file.
    model = build_model("seed")
    old_state = {k: v for k, v in model.state_dict().items() if not k.startswith("trust.")}
    buffer = io.BytesIO()
    torch.save(old_state, buffer)
    card = {"version": "before-trust", "architecture": "seed"}
    old = Classifier.from_weights("seed", buffer.getvalue(), card, origin="registry")
    assert not old.trust_fitted
    verdict = old.assess(torch.zeros(2, 1, 28, 28))
    assert verdict.is_digit.all() and np.allclose(verdict.probabilities.sum(axis=1), 1.0)


# --- fitting on the shipped weights --------------------------------------------------------------

shipped_only = pytest.mark.skipif(
    not DEFAULT_MODEL_PATH.exists(), reason="no shipped model in model/saved_model"
)


@pytest.fixture(scope="module")
def shipped() -> Classifier:
    return Classifier.load(DEFAULT_MODEL_PATH)


@pytest.fixture(scope="module")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    test = load_split(default_data_dir(), "t10k")
    return test.images, test.labels


@shipped_only
def test_fit_on_small_data_sets_the_buffers_and_leaves_the_weights_alone(
    shipped: Classifier,
) -> None:
    train = load_split(default_data_dir(), "train")
    source = DigitSource(train.images[:2000], train.labels[:2000])
    gens = generators(source)
    data = TrustData(
        calibration=(train.images[-600:], train.labels[-600:]),
        real=(train.images[2000:2600], train.labels[2000:2600]),
        nondigits={
            name: nondigit_set(g, 25, seed=i, split=TRAIN)
            for i, (name, g) in enumerate(gens.items())
        },
        real_groups=np.arange(600) % 2,  # two kinds, each held to the false-alarm rate
    )
    model = copy.deepcopy(shipped.model)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("trust.")}
    report = fit_on(model, data, seed=0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert head_of(model).is_fitted
    assert 0.2 < report.temperature < 5.0
    assert float(head_of(model).temperature) == pytest.approx(report.temperature)
    assert 0.0 < report.threshold < 1.0
    assert report.threshold_false_alarm_rate <= 0.01
    assert report.calibration_nll_after <= report.calibration_nll_before + 1e-9
    assert report.train_auroc > 0.95
    assert report.counts["calibration digits"] == 600


@shipped_only
def test_the_shipped_model_carries_fitted_trust_parameters(shipped: Classifier) -> None:
    assert shipped.trust_fitted
    assert "trust" in shipped.card
    assert 0.2 < float(head_of(shipped.model).temperature) < 5.0


@shipped_only
def test_the_trust_section_survives_a_typed_card_read_and_write(tmp_path: Path) -> None:
    card = ModelCard.read(DEFAULT_MODEL_PATH.parent)
    assert card.trust is not None and card.cnn_version
    card.write(tmp_path)
    again = json.loads(ModelCard.path_in(tmp_path).read_text(encoding="utf-8"))
    shipped = json.loads(ModelCard.path_in(DEFAULT_MODEL_PATH.parent).read_text(encoding="utf-8"))
    assert again == shipped
    assert "## Knowing a non-digit" in (tmp_path / "model_card.md").read_text(encoding="utf-8")


@shipped_only
def test_shipped_detector_flags_held_out_non_digits_not_real_digits(
    shipped: Classifier, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_test
    source = DigitSource(images, labels)
    digits = shipped.assess(normalised(images[:2000]))
    assert float((~digits.is_digit).mean()) <= 0.01
    for i, (name, generate) in enumerate(generators(source).items()):
        odd = nondigit_set(generate, 40, seed=900 + i, split=HELDOUT)
        verdict = shipped.assess(normalised(odd))
        flagged = float((~verdict.is_digit).mean())
        assert flagged >= 0.8, f"{name}: only {flagged:.0%} flagged"
        assert auroc(verdict.ood_score, digits.ood_score) >= 0.95, name


@shipped_only
def test_shipped_probabilities_are_calibrated_on_mnist_test(
    shipped: Classifier, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_test
    probs = shipped.predict_proba(normalised(images[:5000]))
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert ece(probs, labels[:5000]) < 0.015


def test_drawing_in_several_processes_gives_the_same_drawings_as_in_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import digit_predictor.ml.trust as trust

    train = load_split(default_data_dir(), "train")
    parts = {
        "scribbles": partial(training_nondigits, "scribbles", 6, 11, None),
        "slashed": partial(training_nondigits, "digits with a slash through", 6, 12, None),
        "redrawn": partial(on_canvas, train.images[:6], 13),
    }
    monkeypatch.setattr(trust, "usable_cpus", lambda: 1)
    inline = draw_parts(parts)
    monkeypatch.setattr(trust, "usable_cpus", lambda: 2)
    pooled = draw_parts(parts)
    assert set(pooled) == set(parts)
    for name in parts:
        assert pooled[name].shape == (6, 28, 28)
        assert np.array_equal(pooled[name], inline[name]), name
    # Different seeds, different drawings: the comparison above is not vacuous.
    assert not np.array_equal(
        pooled["scribbles"],
        draw_parts({"s": partial(training_nondigits, "scribbles", 6, 99, None)})["s"],
    )
