"""The model runs once for the drawings that are waiting (api/compute.py): concurrent requests
share model calls, and each still gets its own answer, the one it would get alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from digit_predictor.api.compute import Compute
from digit_predictor.api.predictor import Outcome, Predictor, Prepared
from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.ml.preprocess import EmptyDrawingError
from digit_predictor.ml.serving import ServingClassifier
from tests.api import drawings

MAX_SIDE = 2048


class CountingPredictor(Predictor):
    """The real predictor, counting its model calls; can be told to fail one of them."""

    def __init__(self, classifier: ServingClassifier) -> None:
        super().__init__(classifier, max_side=MAX_SIDE)
        self.batch_sizes: list[int] = []
        self.fail_call: int | None = None  # index into batch_sizes

    def answer(self, batch: Sequence[Prepared]) -> list[Outcome]:
        self.batch_sizes.append(len(batch))
        if len(self.batch_sizes) - 1 == self.fail_call:
            raise RuntimeError("the model broke")
        return super().answer(batch)


@pytest.fixture(scope="module")
def classifier() -> ServingClassifier:
    return ServingClassifier.load(DEFAULT_MODEL_PATH)


def canvases() -> list[bytes]:
    """Twelve different drawings (four digits, three places on the canvas)."""
    return [
        drawings.drawing_png(digit, shift=(dx, 0)) for digit in (0, 1, 4, 7) for dx in (-40, 0, 40)
    ]


def same_answer(got: Outcome, alone: Outcome) -> None:
    assert got.digit == alone.digit
    assert np.allclose(got.probabilities, alone.probabilities, atol=1e-6)
    assert got.ood_score == pytest.approx(alone.ood_score, abs=1e-6)
    assert np.array_equal(got.model_input, alone.model_input)  # its own drawing, not a neighbour's


@pytest.mark.parametrize("threads", [1, 2])
def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answer(
    classifier: ServingClassifier, threads: int
) -> None:
    predictor = CountingPredictor(classifier)
    pngs = canvases() * 4
    alone = [Predictor(classifier, max_side=MAX_SIDE).predict(png) for png in pngs]

    async def all_at_once() -> list[Outcome]:
        compute = Compute(threads=threads)
        return await asyncio.gather(*(compute.predict(predictor, png) for png in pngs))

    outcomes = asyncio.run(all_at_once())
    for got, expected in zip(outcomes, alone, strict=True):
        same_answer(got, expected)
    assert sum(predictor.batch_sizes) == len(pngs)
    assert max(predictor.batch_sizes) > 1
    assert len(predictor.batch_sizes) <= len(pngs) // 2, predictor.batch_sizes


def test_a_request_alone_runs_at_once_in_one_call(classifier: ServingClassifier) -> None:
    predictor = CountingPredictor(classifier)

    async def one_by_one() -> list[Outcome]:
        compute = Compute(threads=1)
        return [await compute.predict(predictor, png) for png in canvases()[:3]]

    outcomes = asyncio.run(one_by_one())
    assert predictor.batch_sizes == [1, 1, 1]
    assert [o.digit for o in outcomes] == [
        Predictor(classifier, max_side=MAX_SIDE).predict(png).digit for png in canvases()[:3]
    ]


def test_a_bad_drawing_fails_alone_and_a_broken_model_fails_only_its_batch(
    classifier: ServingClassifier,
) -> None:
    predictor = CountingPredictor(classifier)
    pngs = canvases()
    pngs[3] = drawings.blank_canvas_png()

    Results = list[Outcome | BaseException]

    async def run() -> tuple[Results, Results, Results]:
        compute = Compute(threads=1)

        async def burst(pngs: list[bytes]) -> Results:
            return await asyncio.gather(
                *(compute.predict(predictor, png) for png in pngs), return_exceptions=True
            )

        first = await burst(pngs)
        predictor.fail_call = len(predictor.batch_sizes)  # the next model call breaks
        second = await burst(canvases())
        third = await burst(canvases())
        return first, second, third

    first, second, third = asyncio.run(run())
    assert isinstance(first[3], EmptyDrawingError)
    assert all(isinstance(r, Outcome) for i, r in enumerate(first) if i != 3)
    assert predictor.fail_call is not None
    failed = [r for r in second if isinstance(r, RuntimeError)]
    assert len(failed) == predictor.batch_sizes[predictor.fail_call]  # that batch, no more
    assert all(isinstance(r, Outcome) for r in second if r not in failed)
    assert all(isinstance(r, Outcome) for r in third)  # the model's next call answers again


def test_a_batch_split_by_a_model_swap_is_answered_by_each_requests_model(
    classifier: ServingClassifier,
) -> None:
    other = ServingClassifier(
        classifier.graph,
        {**classifier.card, "version": "other"},
        arch=classifier.arch,
        weights=classifier.weights,
    )
    predictor = Predictor(classifier, max_side=MAX_SIDE)
    png = drawings.drawing_png(7)
    before = predictor.prepare(png)
    predictor.swap(other)
    after = predictor.prepare(png)
    outcomes = predictor.answer([before, after, before])
    assert [o.model_version for o in outcomes] == [classifier.version, "other", classifier.version]
    assert outcomes[0].probabilities == outcomes[2].probabilities
