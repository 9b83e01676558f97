"""How long "Why this answer" and "predict as you draw" take, beside the predict call.

    python scripts/bench_explain.py                     # starts PostgreSQL (throwaway) and the api
    python scripts/bench_explain.py --database-url URL  # uses that database (rows are added)
    python scripts/bench_explain.py --url http://host:8000 [--api-key KEY]  # an api already up

Over HTTP, one request at a time on one keep-alive connection, interleaved round by round so all
calls see the same machine: `POST /v1/predictions` (the reference), `POST /v1/previews`,
`GET /v1/predictions/{id}/explanation` (numbers), `.../explanation?digit=N` (another digit) and
`.../explanation/overlay` (PNG). It prints p50/p95/p99 per call and each p50/p95 as a ratio to the
predict call's, and checks the 200 ms target.

In process, for the same drawings: integrated gradients with 8 to 128 quadrature points, their
time, how far each map is from a 256-point one (L1, relative) and the completeness gap
(|convergence delta| / |logit - baseline logit|): why the api uses 32. `--gallery PNG` also writes
a picture of a few drawings with their maps.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
from tqdm import tqdm

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.ml import explain
from digit_predictor.ml.inference import Classifier
from digit_predictor.ml.preprocess import Preprocessed, preprocess_bytes
from digit_predictor.ml.synthetic_digits import pen_digit, to_png
from digit_predictor.testing.api_server import api_env, start_api
from digit_predictor.testing.postgres import start_cluster, with_database

TARGET_MS = 200.0
STEPS = (8, 16, 32, 64, 128)
REFERENCE_STEPS = explain.MAX_STEPS
CALLS = ("predict", "preview", "explain", "explain ?digit", "overlay png")


def drawings(count: int, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [to_png(pen_digit(i % 10, rng), "alpha") for i in range(count)]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} CPUs visible, load average {load:.1f} at start, "
        f"Linux {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
    )


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@contextmanager
def api_url(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        yield args.url.rstrip("/")
        return
    cluster = None
    database_url = args.database_url or os.environ.get("DATABASE_URL")
    if not database_url:
        cluster = start_cluster()
        database_url = with_database(cluster.admin_url, "digits")
    try:
        env = api_env(database_url, args.model_path)
        if args.api_key:
            env["API_KEY"] = args.api_key
        server = start_api(env, ready_path="/readyz")
        try:
            yield server.url
        finally:
            server.cleanup()
    finally:
        if cluster is not None:
            cluster.destroy()


def table(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def over_http(
    url: str, api_key: str | None, pngs: list[bytes], rounds: int
) -> dict[str, list[float]]:
    headers = {"X-API-Key": api_key} if api_key else {}
    times: dict[str, list[float]] = {call: [] for call in CALLS}
    with httpx.Client(base_url=url, headers=headers, timeout=30.0) as client:

        def send(call: str, request: httpx.Request, expected: int) -> httpx.Response:
            started = time.perf_counter()
            response = client.send(request)
            times[call].append((time.perf_counter() - started) * 1000.0)
            if response.status_code != expected:
                raise SystemExit(f"{call}: {response.status_code} {response.text[:300]}")
            return response

        def upload(path: str, png: bytes) -> httpx.Request:
            return client.build_request("POST", path, files={"image": ("d.png", png, "image/png")})

        # Warm-up (not timed): the first explanation pays autograd's one-off set-up.
        first = client.send(upload("/v1/predictions", pngs[0])).json()
        client.get(f"/v1/predictions/{first['id']}/explanation")
        for _ in tqdm(range(rounds), desc="rounds over HTTP", unit="round"):
            for png in pngs:
                stored = send("predict", upload("/v1/predictions", png), 201).json()
                send("preview", upload("/v1/previews", png), 200)
                base = f"/v1/predictions/{stored['id']}/explanation"
                other = {"digit": (int(stored["digit"]) + 1) % 10}
                send("explain", client.build_request("GET", base), 200)
                send("explain ?digit", client.build_request("GET", base, params=other), 200)
                send("overlay png", client.build_request("GET", base + "/overlay"), 200)
    for call in CALLS:
        times[call] = times[call][-len(pngs) * rounds :]
    return times


def report_http(times: dict[str, list[float]]) -> bool:
    ref50, ref95 = pct(times["predict"], 50), pct(times["predict"], 95)
    print()
    print(
        table(
            "call (HTTP, one at a time)",
            "n",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "p50 / predict",
            "p95 / predict",
        )
    )
    print(table("---", "---:", "---:", "---:", "---:", "---:", "---:"))
    for call in CALLS:
        values = times[call]
        p50, p95, p99 = pct(values, 50), pct(values, 95), pct(values, 99)
        print(
            table(
                call,
                len(values),
                f"{p50:.1f}",
                f"{p95:.1f}",
                f"{p99:.1f}",
                f"{p50 / ref50:.2f}x",
                f"{p95 / ref95:.2f}x",
            )
        )
    worst = max(pct(times[c], 95) for c in CALLS if c.startswith(("explain", "overlay")))
    ok = worst < TARGET_MS
    verdict = "met" if ok else "NOT met"
    print(f"\nexplanation p95, worst of the three: {worst:.1f} ms")
    print(f"target < {TARGET_MS:.0f} ms: {verdict}")
    return ok


def in_process(classifier: Classifier, pngs: list[bytes]) -> None:
    model = classifier.model
    pres = [preprocess_bytes(png) for png in pngs]
    digits = [int(classifier.predict_proba(p.tensor.unsqueeze(0))[0].argmax()) for p in pres]
    references = [
        explain.integrated_gradients(model, p.tensor.unsqueeze(0), d, steps=REFERENCE_STEPS).values
        for p, d in tqdm(list(zip(pres, digits, strict=True)), desc="reference maps", unit="map")
    ]
    predict_ms = []
    for p in pres:
        started = time.perf_counter()
        classifier.predict_proba(p.tensor.unsqueeze(0))
        predict_ms.append((time.perf_counter() - started) * 1000.0)
    fwd = pct(predict_ms, 50)
    rows = [
        table(
            "model forward, one drawing", f"{fwd:.2f}", f"{pct(predict_ms, 95):.2f}", "1x", "", ""
        )
    ]
    for steps in tqdm(STEPS, desc="quadrature points", unit="setting", leave=False):
        ms, errors, gaps = [], [], []
        for p, d, ref in zip(pres, digits, references, strict=True):
            started = time.perf_counter()
            a = explain.integrated_gradients(model, p.tensor.unsqueeze(0), d, steps=steps)
            ms.append((time.perf_counter() - started) * 1000.0)
            errors.append(float(np.abs(a.values - ref).sum() / max(np.abs(ref).sum(), 1e-12)))
            gaps.append(abs(a.convergence_delta) / max(abs(a.logit - a.baseline_logit), 1e-12))
        mark = " (served)" if steps == explain.DEFAULT_STEPS else ""
        rows.append(
            table(
                f"integrated gradients, {steps} points{mark}",
                f"{pct(ms, 50):.1f}",
                f"{pct(ms, 95):.1f}",
                f"{pct(ms, 50) / fwd:.0f}x",
                f"{np.median(errors):.1%}",
                f"{np.median(gaps):.1%}",
            )
        )
    print()
    print(
        table(
            "in process, one thread",
            "p50 ms",
            "p95 ms",
            "p50 / model forward",
            f"map error vs {REFERENCE_STEPS} points (L1, median)",
            "completeness gap (median)",
        )
    )
    print(table("---", "---:", "---:", "---:", "---:", "---:"))
    print("\n".join(rows))


def gallery(classifier: Classifier, pngs: list[bytes], path: Path) -> None:
    """One column per drawing: the input, the map of the answer, the map of the runner-up."""
    from PIL import Image, ImageDraw

    cell, pad, label = 112, 6, 14
    chosen = pngs[:10]
    width = len(chosen) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, 3 * (cell + pad + label) + pad), "white")
    pen = ImageDraw.Draw(sheet)
    for col, png in enumerate(chosen):
        pre: Preprocessed = preprocess_bytes(png)
        probs = classifier.predict_proba(pre.tensor.unsqueeze(0))[0]
        first, second = (int(d) for d in np.argsort(probs)[::-1][:2])
        drawn = Image.fromarray(pre.image).resize((cell, cell), Image.Resampling.NEAREST)
        tiles = [("model input", drawn.convert("RGB"))]
        for digit in (first, second):
            e = explain.explain(classifier.model, pre, digit)
            tiles.append(
                (f"{digit} ({probs[digit]:.0%})", Image.open(io.BytesIO(e.overlay_png(4))))
            )
        x = pad + col * (cell + pad)
        for row, (text, tile) in enumerate(tiles):
            y = pad + row * (cell + pad + label)
            pen.text((x, y), text, fill="black")
            sheet.paste(tile, (x, y + label))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    print(f"\ngallery (rows: input, answer, runner-up): {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", help="an api already running (else one is started here)")
    parser.add_argument("--database-url", help="PostgreSQL for the started api")
    parser.add_argument("--model-path", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--api-key", default=os.environ.get("API_KEY"))
    parser.add_argument("--drawings", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="each drawing this many times")
    parser.add_argument("--gallery", type=Path, help="write example maps to this PNG")
    args = parser.parse_args()

    torch.set_num_threads(1)  # as the api runs it
    print(f"Machine: {machine()}")
    pngs = drawings(args.drawings)
    with api_url(args) as url:
        times = over_http(url, args.api_key, pngs, args.rounds)
    ok = report_http(times)
    classifier = Classifier.load(args.model_path)
    classifier.warm_up()
    in_process(classifier, pngs)
    if args.gallery:
        gallery(classifier, pngs, args.gallery)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
