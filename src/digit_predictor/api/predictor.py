"""Drawing bytes -> digit: decode, preprocess MNIST-style, run the CNN. Plain blocking code:
callers run it in a worker thread, never on the event loop.

The classifier can be swapped while requests run (a new champion from the model registry): each
request takes one reference at its start, so it is answered entirely by one model, and the
version it reports is the one that answered.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from digit_predictor.ml.inference import Classifier
from digit_predictor.ml.preprocess import preprocess_bytes


@dataclass(frozen=True)
class Outcome:
    digit: int
    confidence: float
    probabilities: list[float]
    latency_ms: float
    model_version: str  # the model that answered
    model_input: np.ndarray  # uint8 (28, 28): exactly what the model saw

    def model_input_png(self) -> bytes:
        out = io.BytesIO()
        # 28x28 grey: fastest zlib level, the size hardly differs at this scale.
        Image.fromarray(np.ascontiguousarray(self.model_input, dtype=np.uint8)).save(
            out, format="PNG", compress_level=1
        )
        return out.getvalue()

    def model_input_png_base64(self) -> str:
        return base64.b64encode(self.model_input_png()).decode("ascii")


class Predictor:
    def __init__(self, classifier: Classifier, *, max_side: int) -> None:
        self._classifier = classifier
        self.max_side = max_side

    @property
    def classifier(self) -> Classifier:
        return self._classifier

    @property
    def version(self) -> str:
        return self._classifier.version

    def swap(self, classifier: Classifier) -> Classifier:
        """Serve `classifier` from the next request on; return the one it replaces.

        One reference assignment: requests already running keep the model they started with.
        """
        previous, self._classifier = self._classifier, classifier
        return previous

    def predict(self, data: bytes) -> Outcome:
        """Raises InvalidImageError or EmptyDrawingError (both ValueError) for bad drawings."""
        started = time.perf_counter()
        classifier = self._classifier  # one model for the whole request, whatever swaps meanwhile
        pre = preprocess_bytes(data, max_side=self.max_side)
        probs = classifier.predict_proba(pre.tensor.unsqueeze(0))[0]
        digit = int(probs.argmax())
        # Softmax in float64 sums to 1 within rounding; clip guards the [0, 1] check constraint.
        probabilities = [min(max(float(p), 0.0), 1.0) for p in probs]
        return Outcome(
            digit=digit,
            confidence=probabilities[digit],
            probabilities=probabilities,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            model_version=classifier.version,
            model_input=pre.image,
        )
