"""Drawing bytes -> digit: decode, preprocess MNIST-style, run the CNN. Plain blocking code:
callers run it in a worker thread, never on the event loop.

The classifier can be swapped while requests run (a new champion from the model registry): each
request takes one reference at its start, so it is answered entirely by one model, and the
version it reports is the one that answered.
"""

from __future__ import annotations

import base64
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from digit_predictor.ml.preprocess import PNG_MAGIC, Preprocessed, preprocess_bytes
from digit_predictor.ml.serving import ServingClassifier


@dataclass(frozen=True)
class Outcome:
    digit: int
    confidence: float
    probabilities: list[float]  # calibrated
    is_digit: bool  # false: does not look like a single digit; `digit` is only a guess
    ood_score: float  # 0..1, higher = less like a digit
    latency_ms: float
    model_version: str  # the model that answered
    model_input: np.ndarray  # uint8 (28, 28): exactly what the model saw
    # model_input as base64 PNG, made with the answer in the compute thread: PNG encoding is
    # CPU work, which stays off the event loop.
    model_input_png_base64: str


def preview_png(image: np.ndarray) -> bytes:
    """The model input (uint8, H x W) as an 8-bit greyscale PNG.

    Written here rather than by PIL: it runs once per answer, and PIL's general save path
    (plugin, encoder set-up, chunk writers) took 107-153 µs per preview, these few lines 30-48
    (docs/profile.md). The format is fixed: one IHDR, one IDAT with filter 0 on every row, IEND.
    Tested against PIL's decoder.
    """
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = pixels.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # a leading 0 per row: no filter
    rows[:, 1:] = pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    # 28x28 grey: the fastest zlib level, the size hardly differs at this scale.
    return b"".join(
        (
            PNG_MAGIC,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@dataclass(frozen=True)
class Prepared:
    """A drawing ready for the model, and the model that is to answer it."""

    classifier: ServingClassifier
    pre: Preprocessed
    started: float  # perf_counter when its request's CPU work began


class Predictor:
    def __init__(self, classifier: ServingClassifier, *, max_side: int) -> None:
        self._classifier = classifier
        self.max_side = max_side

    @property
    def classifier(self) -> ServingClassifier:
        return self._classifier

    @property
    def version(self) -> str:
        return self._classifier.version

    def swap(self, classifier: ServingClassifier) -> ServingClassifier:
        """Serve `classifier` from the next request on; return the one it replaces.

        One reference assignment: requests already running keep the model they started with.
        """
        previous, self._classifier = self._classifier, classifier
        return previous

    def prepare(self, data: bytes) -> Prepared:
        """Decode and preprocess. Raises InvalidImageError or EmptyDrawingError (both
        ValueError) for bad drawings."""
        started = time.perf_counter()
        classifier = self._classifier  # one model for the whole request, whatever swaps meanwhile
        return Prepared(classifier, preprocess_bytes(data, max_side=self.max_side), started)

    def answer(self, batch: Sequence[Prepared]) -> list[Outcome]:
        """Run the model once for a batch of prepared drawings (once per model, should a swap
        have split the batch); outcomes in the batch's order."""
        outcomes: list[Outcome | None] = [None] * len(batch)
        by_model: dict[int, list[int]] = {}
        for i, item in enumerate(batch):
            by_model.setdefault(id(item.classifier), []).append(i)
        for indices in by_model.values():
            classifier = batch[indices[0]].classifier
            verdict = classifier.assess(np.stack([batch[i].pre.array for i in indices]))
            finished = time.perf_counter()
            for row, i in enumerate(indices):
                probs = verdict.probabilities[row]
                digit = int(probs.argmax())
                # Softmax in float64 sums to 1 within rounding; clip guards the [0, 1] check.
                probabilities = [min(max(float(p), 0.0), 1.0) for p in probs]
                outcomes[i] = Outcome(
                    digit=digit,
                    confidence=probabilities[digit],
                    probabilities=probabilities,
                    is_digit=bool(verdict.is_digit[row]),
                    ood_score=min(max(float(verdict.ood_score[row]), 0.0), 1.0),
                    latency_ms=(finished - batch[i].started) * 1000.0,
                    model_version=classifier.version,
                    model_input=batch[i].pre.image,
                    model_input_png_base64=base64.b64encode(preview_png(batch[i].pre.image)).decode(
                        "ascii"
                    ),
                )
        return [o for o in outcomes if o is not None]

    def predict_batch(self, drawings: Sequence[bytes]) -> list[Outcome | ValueError]:
        """Decode and preprocess each drawing, then one model call for all that could be read.
        A drawing that cannot be read has its InvalidImageError / EmptyDrawingError in its
        place; the others are answered all the same."""
        prepared: list[Prepared | ValueError] = []
        for data in drawings:
            try:
                prepared.append(self.prepare(data))
            except ValueError as exc:
                prepared.append(exc)
        readable = [item for item in prepared if isinstance(item, Prepared)]
        outcomes = iter(self.answer(readable) if readable else [])
        return [item if isinstance(item, ValueError) else next(outcomes) for item in prepared]

    def predict(self, data: bytes) -> Outcome:
        """One drawing, start to end (blocking). Raises what `prepare` raises."""
        return self.answer([self.prepare(data)])[0]
