"""The whole learning loop, as people and the trainer service drive it: drawings posted to a real
api and corrected through it, `retrain --promote` against the same PostgreSQL, and the running
api answering with the promoted version, without a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.db import Database, registry
from tests.ml.feedback_rows import usps_drawings
from tests.ml.test_retrain import QUICK, last_line, register_weakened_champion, retrain_cli
from tests.servers import api_env, api_server, wait_for

pytestmark = pytest.mark.slow

SWAP_DEADLINE_S = 10.0


@pytest.fixture
def own_db(own_database_url: str) -> Iterator[Database]:
    database = Database(own_database_url, max_size=2)
    yield database
    database.close()


def _post(client: httpx.Client, png: bytes) -> httpx.Response:
    return client.post(
        "/v1/predictions", files={"image": ("d.png", png, "image/png")}, data={"source": "web"}
    )


def test_corrections_through_the_api_retrain_and_reach_the_running_api(
    own_database_url: str, own_db: Database
) -> None:
    env = api_env(own_database_url, DEFAULT_MODEL_PATH, model_check_interval_s=60)
    with api_server(env, ready_path="/readyz") as api, api.client() as client:
        # A weak champion (noise on the last layer), promoted while the api runs.
        weak = register_weakened_champion(own_db)
        wait_for(lambda: _post(client, usps_drawings(1)[0][0]).json()["model_version"] == weak)

        held_out = usps_drawings(100, split="test", seed=2)

        def mistakes() -> int:
            return sum(_post(client, png).json()["digit"] != label for png, label in held_out)

        wrong_before = mistakes()

        # People draw and correct (or confirm) through the api.
        for png, label in usps_drawings(120, seed=1):
            answer = _post(client, png)
            assert answer.status_code == 201, answer.text
            body = answer.json()
            assert body["model_version"] == weak
            feedback = client.post(
                f"/v1/predictions/{body['id']}/feedback", json={"true_digit": label}
            )
            assert feedback.status_code == 200, feedback.text

        # The trainer service's command: the gate must pass against the weak champion.
        result = retrain_cli(own_database_url, "--promote", *QUICK)
        assert result.returncode == 0, result.stdout + result.stderr
        champion = registry.champion(own_db)
        assert champion is not None and champion.parent_version == weak
        assert last_line(result).startswith(f"promoted {champion.version}")
        gate = champion.card["gate"]
        assert gate["rows"], gate

        # The running api follows, with no restart.
        promoted_at = time.monotonic()
        wait_for(
            lambda: (
                _post(client, usps_drawings(1)[0][0]).json()["model_version"] == champion.version
            ),
            timeout_s=SWAP_DEADLINE_S,
        )
        assert time.monotonic() - promoted_at < SWAP_DEADLINE_S
        assert api.is_running()
        listed = {m["version"]: m["status"] for m in client.get("/v1/models").json()}
        assert listed[champion.version] == "champion" and listed[weak] == "retired"

        # The new model reads held-out USPS drawings better than the weak one did.
        wrong_after = mistakes()
        assert wrong_after < wrong_before, (wrong_before, wrong_after)
