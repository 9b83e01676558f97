"""Play people who draw and correct: real handwriting drawn on the canvas, sent through the api.

    python scripts/simulate_feedback.py --api http://127.0.0.1:8000 --dataset usps [--limit N]
    python scripts/simulate_feedback.py --api http://127.0.0.1:8000 --dataset usps --evaluate

Default: the dataset's TRAINING digits (USPS train, optdigits tra) are each drawn onto a 280x280
canvas (random size and place, as the benchmarks do), sent as an RGBA PNG to
`POST /v1/predictions`, and answered with the true digit on `POST /v1/predictions/{id}/feedback`,
as a person would. `--evaluate` sends the HELD-OUT digits (USPS test, optdigits windep) without
answering them and prints the api's accuracy on them, with the versions that answered: the
before/after measurement of retraining, through the api.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import requests
from tqdm import tqdm

from digit_predictor.ml.extra_digits import load_part, render_on_canvas
from digit_predictor.ml.synthetic_digits import to_png

PARTS = {
    "usps": ("USPS train", "USPS test"),
    "optdigits": ("optdigits tra", "optdigits windep"),
}


@dataclass(frozen=True)
class Answer:
    label: int
    digit: int | None  # None: the api refused the drawing
    version: str | None
    answered: bool  # feedback stored


def drawings(part: str, limit: int | None, seed: int) -> Iterator[tuple[bytes, int]]:
    inks, labels = load_part(part)
    rng = np.random.default_rng(seed)
    count = len(labels) if limit is None else min(limit, len(labels))
    for i in range(count):
        yield to_png(render_on_canvas(inks[i], rng)), int(labels[i])


class Client:
    def __init__(self, api: str, api_key: str | None, source: str) -> None:
        self.api = api.rstrip("/")
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.source = source
        self.session = requests.Session()

    def send(self, png: bytes, label: int, answer: bool) -> Answer:
        created = self.session.post(
            f"{self.api}/v1/predictions",
            files={"image": ("drawing.png", png, "image/png")},
            data={"source": self.source},
            headers=self.headers,
            timeout=30,
        )
        if created.status_code == 422:  # an empty drawing: a person would draw again
            return Answer(label, None, None, False)
        created.raise_for_status()
        body = created.json()
        answered = False
        if answer and body.get("id") is not None:
            feedback = self.session.post(
                f"{self.api}/v1/predictions/{body['id']}/feedback",
                json={"true_digit": label},
                headers=self.headers,
                timeout=30,
            )
            feedback.raise_for_status()
            answered = True
        return Answer(label, int(body["digit"]), str(body["model_version"]), answered)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--api", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--dataset", choices=sorted(PARTS), required=True)
    parser.add_argument("--limit", type=int, default=None, help="the first N digits only")
    parser.add_argument("--evaluate", action="store_true", help="held-out digits, no answers")
    parser.add_argument("--api-key", default=None, help="X-API-Key, when the api has one")
    parser.add_argument("--source", default=None, help="default: simulate or simulate-eval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4, help="requests in flight")
    args = parser.parse_args(argv)

    train_part, heldout_part = PARTS[args.dataset]
    part = heldout_part if args.evaluate else train_part
    source = args.source or ("simulate-eval" if args.evaluate else "simulate")
    client = Client(args.api, args.api_key, source)
    items = list(drawings(part, args.limit, args.seed))
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        answers = list(
            tqdm(
                pool.map(lambda item: client.send(item[0], item[1], not args.evaluate), items),
                total=len(items),
                desc=f"{part} -> {args.api}",
                file=sys.stderr,
            )
        )
    right = sum(a.digit == a.label for a in answers)
    accuracy = right / max(len(answers), 1)
    versions = dict(Counter(a.version for a in answers if a.version))
    summary = {
        "part": part,
        "n": len(answers),
        "accuracy": round(accuracy, 6),
        "refused_as_empty": sum(a.digit is None for a in answers),
        "answered_with_feedback": sum(a.answered for a in answers),
        "versions": versions,
    }
    print(
        f"{part}: {right} of {len(answers)} read right ({100 * accuracy:.2f}%) by "
        + ", ".join(f"{v} ({n})" for v, n in versions.items()),
        file=sys.stderr,
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
