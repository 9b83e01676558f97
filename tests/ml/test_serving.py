"""The api serves the model as an ONNX graph under ONNX Runtime (ml/serving.py, ml/export.py):
the graph answers what the trained network answers, travels with its weights, is exported when
it is missing or stale, and the serving side never imports torch."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.ml.card import GRAPH_NAME, ModelCard
from digit_predictor.ml.export import onnx_graph
from digit_predictor.ml.inference import Classifier
from digit_predictor.ml.models import DEFAULT_ARCHITECTURE, build_model
from digit_predictor.ml.nondigits import HELDOUT, doodle, letter, nondigit_set, scribble, shape
from digit_predictor.ml.preprocess import preprocess_bytes, to_model_array
from digit_predictor.ml.serving import ModelLoadError, ModelNotFoundError, ServingClassifier
from digit_predictor.ml.synthetic_digits import pen_digit, to_png
from digit_predictor.ml.trust_head import head_of


@pytest.fixture(scope="module")
def torch_model() -> Classifier:
    return Classifier.load(DEFAULT_MODEL_PATH)


@pytest.fixture(scope="module")
def served() -> ServingClassifier:
    classifier = ServingClassifier.load(DEFAULT_MODEL_PATH)
    classifier.warm_up()
    return classifier


def _drawings() -> np.ndarray:
    """Digits and non-digits as the api sees them: (N, 1, 28, 28) normalised float32."""
    rng = np.random.default_rng(7)
    pngs = [to_png(pen_digit(d, rng)) for d in range(10) for _ in range(4)]
    images = [preprocess_bytes(png).array for png in pngs]
    for generator in (letter, scribble, shape, doodle):
        images += [to_model_array(image) for image in nondigit_set(generator, 10, 11, HELDOUT)]
    return np.stack(images)


def _same_answers(served: ServingClassifier, reference: Classifier, x: np.ndarray) -> None:
    got = served.assess(x)
    want = reference.assess(torch.from_numpy(x))
    assert np.allclose(got.probabilities, want.probabilities, atol=1e-5)
    assert np.allclose(got.ood_score, want.ood_score, atol=1e-4)
    threshold = float(head_of(reference.model).threshold)
    clear = np.abs(want.ood_score - threshold) > 1e-4  # a hair from the threshold may go either way
    assert np.array_equal(got.is_digit[clear], want.is_digit[clear])


def test_the_shipped_graph_answers_what_the_shipped_network_answers(
    served: ServingClassifier, torch_model: Classifier
) -> None:
    card = ModelCard.read(DEFAULT_MODEL_PATH.parent)
    graph = DEFAULT_MODEL_PATH.with_name(GRAPH_NAME).read_bytes()
    assert card.onnx_sha256 == hashlib.sha256(graph).hexdigest()
    assert served.version == torch_model.version
    x = _drawings()
    _same_answers(served, torch_model, x)
    verdict = served.assess(x)
    assert np.allclose(verdict.probabilities.sum(axis=1), 1.0, atol=1e-9)
    assert verdict.is_digit[:40].mean() > 0.9 and verdict.is_digit[40:].mean() < 0.5
    # Batch or one by one: the same answers.
    alone = np.concatenate([served.assess(x[i : i + 1]).probabilities for i in range(5)])
    assert np.allclose(alone, verdict.probabilities[:5], atol=1e-6)


def test_an_unfitted_trust_head_exports_its_fallback(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(DEFAULT_ARCHITECTURE).eval()
    reference = Classifier(model, {"version": "untrained"})
    served = ServingClassifier(
        onnx_graph(model), {"version": "untrained"}, arch=DEFAULT_ARCHITECTURE, weights=b""
    )
    x = _drawings()
    _same_answers(served, reference, x)
    verdict = served.assess(x)
    assert verdict.is_digit.all()  # no fitted detector: every drawing is taken as a digit
    assert np.allclose(verdict.ood_score, 1.0 - verdict.probabilities.max(axis=1), atol=1e-5)


def _copy_shipped(folder: Path, *, graph: bytes | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / DEFAULT_MODEL_PATH.name
    shutil.copy(DEFAULT_MODEL_PATH, weights)
    shutil.copy(ModelCard.path_in(DEFAULT_MODEL_PATH.parent), ModelCard.path_in(folder))
    if graph is not None:
        (folder / GRAPH_NAME).write_bytes(graph)
    return weights


@pytest.mark.parametrize("graph", [None, b"not an onnx graph"], ids=["missing", "stale"])
def test_a_missing_or_stale_graph_is_exported_again_from_the_weights(
    tmp_path: Path, graph: bytes | None, torch_model: Classifier
) -> None:
    served = ServingClassifier.load(_copy_shipped(tmp_path, graph=graph))
    # Exported by a child process, to the very bytes shipped (the export is deterministic).
    assert hashlib.sha256(served.graph).hexdigest() == torch_model.card["onnx_sha256"]
    _same_answers(served, torch_model, _drawings()[:8])


def test_missing_or_mismatched_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"weights not found.*digit_predictor\.ml\.train"):
        ServingClassifier.load(tmp_path / "model.pt")
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    with pytest.raises(ModelNotFoundError, match="model card not found"):
        ServingClassifier.load(weights)
    card = {"version": "v", "architecture": DEFAULT_ARCHITECTURE, "weights_sha256": "0" * 64}
    ModelCard.path_in(tmp_path).write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="sha256"):
        ServingClassifier.load(weights)


def test_weights_that_cannot_be_exported_are_a_model_that_cannot_be_loaded() -> None:
    # The champion watcher keeps serving its current model on ModelLoadError.
    with pytest.raises(ModelLoadError, match="cannot export"):
        ServingClassifier.from_weights(DEFAULT_ARCHITECTURE, b"not a state dict", {"version": "x"})
    with pytest.raises(ModelLoadError, match="cannot load the ONNX graph"):
        ServingClassifier(b"garbage", {"version": "x"}, arch=DEFAULT_ARCHITECTURE, weights=b"")


def test_wrong_input_shape_is_refused(served: ServingClassifier) -> None:
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        served.assess(np.zeros((1, 28, 28), dtype=np.float32))


def test_serving_a_drawing_never_imports_torch() -> None:
    png = to_png(pen_digit(3, np.random.default_rng(0)))  # made here: the generator uses torch
    code = (
        "import sys\n"
        "from digit_predictor.api.main import create_app\n"
        "from digit_predictor.config import DEFAULT_MODEL_PATH\n"
        "from digit_predictor.ml.preprocess import preprocess_bytes\n"
        "from digit_predictor.ml.serving import ServingClassifier\n"
        "create_app()\n"
        "x = preprocess_bytes(sys.stdin.buffer.read()).array[None]\n"
        "print(ServingClassifier.load(DEFAULT_MODEL_PATH).assess(x).probabilities.argmax())\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=png, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    digit, modules = done.stdout.decode().split("\n")[:2]
    assert digit == "3"
    assert modules == "[]"
