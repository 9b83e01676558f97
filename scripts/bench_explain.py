"""How long "Why this answer" and "predict as you draw" take, beside the predict call.

    python scripts/bench_explain.py                     # starts PostgreSQL (throwaway) and the api
    python scripts/bench_explain.py --reference-src ../main/src   # also the api of another
                                                        # checkout (e.g. main), measured alongside
    python scripts/bench_explain.py --load 4            # idle, then under 4 predicting clients
    python scripts/bench_explain.py --url http://host:8000 [--api-key KEY]  # an api already up

Over HTTP, one timed request at a time, interleaved round by round so all calls see the same
machine: `POST /v1/predictions` (the reference), `POST /v1/previews`,
`GET /v1/predictions/{id}/explanation` (numbers), `.../explanation?digit=N` (another digit) and
`.../explanation/overlay` (PNG); with `--reference-src`, the same explanation calls to an api run
from that source tree (same database, same model) right beside each of ours. With `--load N`,
everything is measured twice: idle, then while N clients post predictions as fast as the api(s)
answer (to both apis in turn, so both see the same load). Each table gives the load average.

In process, for the same drawings: the rule served before (32 Gauss-Legendre points on [0, 1],
plain model) and now (16 points in two panels, batch norm folded), with neighbours of each, their
CPU time, how far each map is from a 2 x 512-point midpoint integral (L1 and correlation) and the
completeness gap (|convergence delta| / sum |attributions|). `--gallery PNG` also writes a
picture of a few drawings with their maps.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
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
CALLS = ("predict", "preview", "explain", "explain ?digit", "overlay png")
REFERENCE_CALLS = ("explain", "overlay png")
REFERENCE_POINTS = 512  # per panel of the in-process reference integral


def drawings(count: int, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [to_png(pen_digit(i % 10, rng), "alpha") for i in range(count)]


def load_average() -> str:
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs visible, load average {load_average()} at start, "
        f"Linux {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
    )


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@dataclass
class Apis:
    ours: str
    reference: str | None  # the api of --reference-src, on the same database


@contextmanager
def apis(args: argparse.Namespace) -> Iterator[Apis]:
    if args.url:
        yield Apis(args.url.rstrip("/"), None)
        return
    with ExitStack() as stack:
        database_url = args.database_url or os.environ.get("DATABASE_URL")
        if not database_url:
            cluster = start_cluster()
            stack.callback(cluster.destroy)
            database_url = with_database(cluster.admin_url, "digits")

        def start(pythonpath: str | None) -> str:
            env = api_env(database_url, args.model_path)
            if args.api_key:
                env["API_KEY"] = args.api_key
            if pythonpath:
                env["PYTHONPATH"] = pythonpath
            server = start_api(env, ready_path="/readyz")
            stack.callback(server.cleanup)
            return server.url

        ours = start(os.environ.get("PYTHONPATH"))
        reference = start(str(args.reference_src.resolve())) if args.reference_src else None
        yield Apis(ours, reference)


def table(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


class Load:
    """`clients` threads posting predictions, to each api in turn, until stopped."""

    def __init__(self, urls: list[str], headers: dict[str, str], pngs: list[bytes], clients: int):
        self.stop = threading.Event()
        self.sent = 0
        self.threads = [
            threading.Thread(target=self._run, args=(urls, headers, pngs, i), daemon=True)
            for i in range(clients)
        ]

    def _run(self, urls: list[str], headers: dict[str, str], pngs: list[bytes], i: int) -> None:
        clients = [httpx.Client(base_url=u, headers=headers, timeout=30.0) for u in urls]
        n = i
        while not self.stop.is_set():
            png = pngs[n % len(pngs)]
            clients[n % len(clients)].post(
                "/v1/predictions", files={"image": ("d.png", png, "image/png")}
            )
            self.sent += 1
            n += 1
        for client in clients:
            client.close()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        time.sleep(1.0)  # let the load settle before timing anything
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def over_http(
    urls: Apis, api_key: str | None, pngs: list[bytes], rounds: int, label: str
) -> dict[str, list[float]]:
    headers = {"X-API-Key": api_key} if api_key else {}
    times: dict[str, list[float]] = {call: [] for call in CALLS}
    ref_times: dict[str, list[float]] = {call: [] for call in REFERENCE_CALLS}
    with ExitStack() as stack:
        client = stack.enter_context(httpx.Client(base_url=urls.ours, headers=headers, timeout=30))
        other = (
            stack.enter_context(httpx.Client(base_url=urls.reference, headers=headers, timeout=30))
            if urls.reference
            else None
        )

        def send(
            into: dict[str, list[float]], call: str, c: httpx.Client, req: httpx.Request, code: int
        ) -> httpx.Response:
            started = time.perf_counter()
            response = c.send(req)
            into[call].append((time.perf_counter() - started) * 1000.0)
            if response.status_code != code:
                raise SystemExit(f"{call}: {response.status_code} {response.text[:300]}")
            return response

        def upload(path: str, png: bytes) -> httpx.Request:
            return client.build_request("POST", path, files={"image": ("d.png", png, "image/png")})

        # Warm-up (not timed): the first explanation pays autograd's one-off set-up.
        first = client.send(upload("/v1/predictions", pngs[0])).json()
        for c in (client, other):
            if c is not None:
                c.get(f"/v1/predictions/{first['id']}/explanation")
        for _ in tqdm(range(rounds), desc=f"rounds over HTTP, {label}", unit="round"):
            for png in pngs:
                stored = send(times, "predict", client, upload("/v1/predictions", png), 201).json()
                send(times, "preview", client, upload("/v1/previews", png), 200)
                base = f"/v1/predictions/{stored['id']}/explanation"
                digit = {"digit": (int(stored["digit"]) + 1) % 10}
                # Ours and the reference's right after each other: the same machine state.
                for call, path in (("explain", base), ("overlay png", base + "/overlay")):
                    send(times, call, client, client.build_request("GET", path), 200)
                    if other is not None:
                        send(ref_times, call, other, other.build_request("GET", path), 200)
                get = client.build_request("GET", base, params=digit)
                send(times, "explain ?digit", client, get, 200)
    out = {call: times[call] for call in CALLS}
    if urls.reference:
        out.update({f"{call} (reference)": ref_times[call] for call in REFERENCE_CALLS})
    return out


def report_http(times: dict[str, list[float]], label: str) -> float:
    ref50, ref95 = pct(times["predict"], 50), pct(times["predict"], 95)
    print(f"\nOver HTTP, {label}; load average {load_average()} at the end")
    print(
        table(
            "call (HTTP, one timed at a time)",
            "n",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "p50 / predict",
            "p95 / predict",
        )
    )
    print(table("---", "---:", "---:", "---:", "---:", "---:", "---:"))
    for call, values in times.items():
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
    ours = [c for c in CALLS if c.startswith(("explain", "overlay"))]
    worst = max(pct(times[c], 95) for c in ours)
    print(f"explanation p95, worst of ours: {worst:.1f} ms (target < {TARGET_MS:.0f} ms: ", end="")
    print("met)" if worst < TARGET_MS else "NOT met)")
    for call in REFERENCE_CALLS:
        if f"{call} (reference)" in times:
            before, now = times[f"{call} (reference)"], times[call]
            print(
                f"{call}: reference / ours p50 {pct(before, 50) / pct(now, 50):.2f}x, "
                f"p95 {pct(before, 95) / pct(now, 95):.2f}x"
            )
    return worst


@dataclass(frozen=True)
class Rule:
    name: str
    nodes: np.ndarray
    weights: np.ndarray
    folded: bool


def rules() -> list[Rule]:
    def plain(n: int) -> tuple[np.ndarray, np.ndarray]:
        return explain.gauss_legendre(n, 0.0, 1.0)

    return [
        Rule("32 Gauss-Legendre on [0, 1], plain model (before)", *plain(32), folded=False),
        Rule("16 Gauss-Legendre on [0, 1], folded", *plain(16), folded=True),
        Rule("8 two-panel, folded", *explain.quadrature(8), folded=True),
        Rule(
            f"{explain.DEFAULT_STEPS} two-panel, folded (served)",
            *explain.quadrature(explain.DEFAULT_STEPS),
            folded=True,
        ),
        Rule("32 two-panel, folded", *explain.quadrature(32), folded=True),
    ]


def attributions(
    net: torch.nn.Module, x: torch.Tensor, digit: int, nodes: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Integrated gradients with a given rule, as ml/explain.py computes it (one batch)."""
    base = explain.black_baseline()
    total = torch.zeros(28, 28, dtype=torch.float64)
    alphas = torch.tensor(nodes, dtype=torch.float32)
    w = torch.tensor(weights, dtype=torch.float64)
    for a, wa in zip(torch.split(alphas, 256), torch.split(w, 256), strict=True):
        with torch.enable_grad():
            path = (base + a.view(-1, 1, 1, 1) * (x - base)).requires_grad_(True)
            (grads,) = torch.autograd.grad(net(path)[:, digit].sum(), path)
        total += (grads[:, 0].double() * wa.view(-1, 1, 1)).sum(dim=0)
    values: np.ndarray = ((x - base)[0, 0].double() * total).numpy()
    return values


def reference_rule(points: int) -> tuple[np.ndarray, np.ndarray]:
    """The midpoint rule on `points` points per panel: independent of Gauss-Legendre."""
    near = (np.arange(points) + 0.5) / points * explain.SPLIT
    far = explain.SPLIT + (np.arange(points) + 0.5) / points * (1 - explain.SPLIT)
    widths = np.r_[np.full(points, explain.SPLIT / points), np.full(points, 0.9 / points)]
    return np.r_[near, far], widths


def in_process(classifier: Classifier, pngs: list[bytes], points: int) -> None:
    model = classifier.model
    ready = explain.prepared(model)
    xs = [preprocess_bytes(png).tensor.unsqueeze(0) for png in pngs]
    digits = [int(classifier.predict_proba(x)[0].argmax()) for x in xs]
    with torch.inference_mode():
        gaps_to = [
            float(model(x)[0, d] - ready.baseline_logits[d])
            for x, d in zip(xs, digits, strict=True)
        ]
    ref_rule = reference_rule(points)
    references = [
        attributions(model, x, d, *ref_rule)
        for x, d in tqdm(list(zip(xs, digits, strict=True)), desc="reference maps", unit="map")
    ]
    predict_ms = []
    for x in xs:
        started = time.thread_time()
        classifier.predict_proba(x)
        predict_ms.append((time.thread_time() - started) * 1000.0)
    fwd = pct(predict_ms, 50)
    print(f"\nIn process, one thread, CPU time; load average {load_average()}")
    print(
        table(
            "rule",
            "p50 CPU ms",
            "p95 CPU ms",
            "p50 / predict",
            f"map L1 vs 2x{points} midpoint (median / max)",
            "correlation (median / min)",
            "completeness gap / sum|attr| (median / max)",
        )
    )
    print(table("---", "---:", "---:", "---:", "---:", "---:", "---:"))
    print(
        table("predict (one drawing)", f"{fwd:.2f}", f"{pct(predict_ms, 95):.2f}", "1x", "", "", "")
    )
    for rule in tqdm(rules(), desc="rules", unit="rule", leave=False):
        net = ready.net if rule.folded else model
        ms, errors, corrs, gaps = [], [], [], []
        for x, d, ref, target in zip(xs, digits, references, gaps_to, strict=True):
            for _ in range(3):
                started = time.thread_time()
                values = attributions(net, x, d, rule.nodes, rule.weights)
                ms.append((time.thread_time() - started) * 1000.0)
            mass = max(float(np.abs(values).sum()), 1e-12)
            errors.append(float(np.abs(values - ref).sum() / max(np.abs(ref).sum(), 1e-12)))
            corrs.append(float(np.corrcoef(values.ravel(), ref.ravel())[0, 1]))
            gaps.append(abs(float(values.sum()) - target) / mass)
        print(
            table(
                rule.name,
                f"{pct(ms, 50):.1f}",
                f"{pct(ms, 95):.1f}",
                f"{pct(ms, 50) / fwd:.0f}x",
                f"{np.median(errors):.1%} / {max(errors):.1%}",
                f"{np.median(corrs):.4f} / {min(corrs):.4f}",
                f"{np.median(gaps):.1%} / {max(gaps):.1%}",
            )
        )
    ref_gaps = [
        abs(float(r.sum()) - t) / float(np.abs(r).sum())
        for r, t in zip(references, gaps_to, strict=True)
    ]
    print(
        f"(the reference's own completeness gap: median {np.median(ref_gaps):.2%}, "
        f"max {max(ref_gaps):.2%})"
    )


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
            e = explain.explain(explain.prepared(classifier.model), pre, digit)
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
    parser.add_argument(
        "--reference-src",
        type=Path,
        help="the src/ of another checkout: its api is started too and measured alongside",
    )
    parser.add_argument("--load", type=int, default=0, help="then again under N predicting clients")
    parser.add_argument("--drawings", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="each drawing this many times")
    parser.add_argument("--in-process-drawings", type=int, default=12)
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--gallery", type=Path, help="write example maps to this PNG")
    args = parser.parse_args()

    torch.set_num_threads(1)  # as the api runs it
    print(f"Machine: {machine()}")
    pngs = drawings(args.drawings)
    worst = []
    with apis(args) as urls:
        worst.append(report_http(over_http(urls, args.api_key, pngs, args.rounds, "idle"), "idle"))
        if args.load:
            label = f"under load ({args.load} clients posting predictions)"
            targets = [urls.ours] + ([urls.reference] if urls.reference else [])
            headers = {"X-API-Key": args.api_key} if args.api_key else {}
            with Load(targets, headers, pngs, args.load) as load:
                times = over_http(urls, args.api_key, pngs, args.rounds, label)
            print(f"\n({load.sent} load predictions sent meanwhile)")
            worst.append(report_http(times, label))
    classifier = Classifier.load(args.model_path)
    classifier.warm_up()
    if not args.skip_in_process:
        in_process(classifier, pngs[: args.in_process_drawings], REFERENCE_POINTS)
    if args.gallery:
        gallery(classifier, pngs, args.gallery)
    return 0 if max(worst) < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
