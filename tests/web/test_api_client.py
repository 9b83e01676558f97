from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from PIL import Image

from digit_predictor.web.api_client import (
    ApiBadResponse,
    ApiClient,
    ApiError,
    ApiTimeout,
    ApiUnavailable,
    parse_prediction,
)
from digit_predictor.web.images import to_png
from tests.servers import free_port
from tests.web.stub_api import Reply, StubApi, prediction_body, running_stub

PNG = b"\x89PNG\r\n\x1a\n" + b"fake-but-opaque-to-the-client"


@pytest.fixture
def stub() -> Iterator[StubApi]:
    with running_stub() as s:
        yield s


def _client(url: str, **kwargs: object) -> ApiClient:
    kwargs.setdefault("backoff_s", 0.01)
    return ApiClient(url, **kwargs)  # type: ignore[arg-type]


def test_sends_the_drawing_as_multipart_and_parses_the_prediction(stub: StubApi) -> None:
    stub.queue(Reply(201, prediction_body(digit=3, confidence=0.875, id=42)))
    result = _client(stub.url).predict(PNG)

    assert (result.id, result.digit, result.confidence) == (42, 3, 0.875)
    assert len(result.probabilities) == 10 and result.probabilities[3] == 0.875
    assert result.model_version == "cnn-test" and result.latency_ms == 4.2
    assert result.created_at is not None and result.created_at.tzinfo is not None
    assert result.model_input_png is not None and result.model_input_png.startswith(b"\x89PNG")
    assert not result.queued

    [request] = stub.received
    assert request.path == "/v1/predictions"
    assert request.fields == {"image": PNG, "source": b"web"}
    assert "X-API-Key" not in request.headers


def test_sends_the_api_key_when_one_is_set(stub: StubApi) -> None:
    _client(stub.url, api_key="k3y-for-tests").predict(PNG)
    assert stub.received[0].headers["X-API-Key"] == "k3y-for-tests"


def test_a_queued_prediction_has_no_id(stub: StubApi) -> None:
    stub.queue(Reply(202, prediction_body(id=None)))
    result = _client(stub.url).predict(PNG)
    assert result.queued and result.id is None and result.digit == 7


def test_the_model_input_is_optional(stub: StubApi) -> None:
    stub.queue(Reply(201, prediction_body(with_input=False)))
    assert _client(stub.url).predict(PNG).model_input_png is None


def test_an_empty_drawing_error_shows_the_api_detail(stub: StubApi) -> None:
    stub.queue(Reply(422, {"detail": "nothing was drawn: draw a digit first"}))
    with pytest.raises(ApiError) as info:
        _client(stub.url).predict(PNG)
    assert info.value.status == 422
    assert info.value.message == "nothing was drawn: draw a digit first"
    assert len(stub.received) == 1  # a 4xx is never retried


def test_validation_error_lists_are_readable(stub: StubApi) -> None:
    stub.queue(Reply(422, {"detail": [{"loc": ["body", "image"], "msg": "Field required"}]}))
    with pytest.raises(ApiError, match="Field required"):
        _client(stub.url).predict(PNG)


def test_a_server_error_is_a_clear_message_and_not_retried(stub: StubApi) -> None:
    stub.queue(Reply(500, {"detail": "boom"}), Reply(201, prediction_body()))
    with pytest.raises(ApiError) as info:
        _client(stub.url).predict(PNG)
    assert info.value.status == 500
    assert "HTTP 500" in info.value.message and "try again" in info.value.message
    assert len(stub.received) == 1  # the api may have stored the row: do not send it twice


def test_a_wrong_api_key_says_so(stub: StubApi) -> None:
    stub.queue(Reply(401, {"detail": "missing or wrong X-API-Key"}))
    with pytest.raises(ApiError, match="API_KEY"):
        _client(stub.url).predict(PNG)


def test_503_is_retried_and_then_succeeds(stub: StubApi) -> None:
    stub.queue(Reply(503, {"detail": "model loading"}), Reply(201, prediction_body(digit=5)))
    assert _client(stub.url).predict(PNG).digit == 5
    assert len(stub.received) == 2
    assert stub.received[1].fields["image"] == PNG  # the retry carries the whole body again


def test_503_that_persists_gives_up_after_the_retries(stub: StubApi) -> None:
    stub.default = Reply(503, {"detail": "not ready"})
    with pytest.raises(ApiError) as info:
        _client(stub.url, retries=2).predict(PNG)
    assert info.value.status == 503
    assert len(stub.received) == 3


def test_a_slow_api_times_out_without_a_retry(stub: StubApi) -> None:
    stub.queue(Reply(201, prediction_body(), delay_s=1.5))
    started = time.monotonic()
    with pytest.raises(ApiTimeout, match=r"did not answer within 0\.3 s"):
        _client(stub.url, timeout_s=0.3).predict(PNG)
    assert time.monotonic() - started < 1.2
    assert len(stub.received) == 1


def test_nothing_listening_is_unavailable_quickly() -> None:
    client = _client(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(ApiUnavailable, match="not reachable"):
        client.predict(PNG)
    assert time.monotonic() - started < 2.0


def test_the_same_client_works_again_when_the_api_comes_back() -> None:
    with running_stub() as first:
        client = _client(first.url)
        assert client.predict(PNG).digit == 7
        port = first.url.rsplit(":", 1)[1]
    with pytest.raises(ApiUnavailable):
        client.predict(PNG)
    # A new server on another port stands in for a restarted api: point the client at it.
    with running_stub() as second:
        client.base_url = second.url
        assert port != second.url.rsplit(":", 1)[1]
        assert client.predict(PNG).digit == 7


@pytest.mark.parametrize(
    "body",
    [
        b"<html>proxy error</html>",
        {"digit": 11, "confidence": 0.5, "probabilities": [0.1] * 10},
        {"digit": 1, "confidence": 0.5, "probabilities": [0.1] * 9},
        {"digit": 1, "confidence": 1.5, "probabilities": [0.1] * 10},
        {"confidence": 0.5, "probabilities": [0.1] * 10},
        {"id": "seven", "digit": 1, "confidence": 0.5, "probabilities": [0.1] * 10},
        ["not", "an", "object"],
    ],
)
def test_a_malformed_answer_is_a_bad_response(stub: StubApi, body: object) -> None:
    stub.queue(Reply(201, body))
    with pytest.raises(ApiBadResponse):
        _client(stub.url).predict(PNG)


def test_model_input_accepts_a_data_uri_and_ignores_garbage() -> None:
    body = prediction_body()
    body["model_input_png"] = "data:image/png;base64," + body["model_input_png"]
    assert parse_prediction(body).model_input_png is not None
    body["model_input_png"] = "%%% not base64"
    assert parse_prediction(body).model_input_png is None
    body["model_input_png"] = "aGVsbG8="  # base64, but not a PNG
    assert parse_prediction(body).model_input_png is None


def preview_body(digit: int = 5, confidence: float = 0.7) -> dict[str, object]:
    body = prediction_body(digit=digit, confidence=confidence)
    for stored_only in ("id", "request_id", "created_at"):
        del body[stored_only]
    body["stored"] = False
    return body


def test_preview_posts_the_drawing_to_previews_and_is_marked_as_such(stub: StubApi) -> None:
    stub.queue(Reply(200, preview_body(digit=5, confidence=0.7)))
    result = _client(stub.url).preview(PNG)

    assert (result.id, result.digit, result.confidence, result.preview) == (None, 5, 0.7, True)
    assert result.model_input_png is not None
    [request] = stub.received
    assert request.path == "/v1/previews"
    assert request.fields == {"image": PNG}
    assert _client(stub.url).predict(PNG).preview is False


def test_preview_refusal_and_outage_are_the_same_messages_as_predict(stub: StubApi) -> None:
    stub.queue(Reply(422, {"detail": "only a dot was drawn: draw a digit first"}))
    with pytest.raises(ApiError, match="only a dot") as refused:
        _client(stub.url).preview(PNG)
    assert refused.value.status == 422
    with pytest.raises(ApiUnavailable):
        _client(f"http://127.0.0.1:{free_port()}", retries=0).preview(PNG)


def test_explanation_overlay_asks_for_the_digit_and_returns_the_png(stub: StubApi) -> None:
    overlay = to_png(Image.new("RGB", (196, 196), (200, 40, 20)))
    stub.queue(Reply(200, overlay, content_type="image/png"))
    assert _client(stub.url).explanation_overlay(42, 1, scale=7) == overlay
    [request] = stub.received
    assert request.path == "/v1/predictions/42/explanation/overlay?digit=1&scale=7"
    assert request.headers["Accept"] == "image/png"


def test_explanation_overlay_failures_are_api_problems(stub: StubApi) -> None:
    stub.queue(
        Reply(404, {"detail": "no prediction with id 42; check the id"}),
        Reply(200, {"not": "a png"}),
        Reply(200, b"\x89PNG\r\n\x1a\n" + b"a PNG signature and nothing else"),
    )
    with pytest.raises(ApiError) as missing:
        _client(stub.url).explanation_overlay(42, 7)
    assert missing.value.status == 404 and "no prediction with id 42" in missing.value.message
    for _unreadable in range(2):
        with pytest.raises(ApiBadResponse):
            _client(stub.url).explanation_overlay(42, 7)
