"""Latency and throughput of the api over HTTP, with the in-process floor for the same drawings.

    python scripts/bench_api.py                      # starts PostgreSQL (throwaway) and the api
    python scripts/bench_api.py --database-url URL   # uses that database (rows are added to it)
    python scripts/bench_api.py --url http://host:8000 [--api-key KEY]   # an api already running

One run prints, for concurrency 1, 8 and 32: p50/p95/p99 latency and throughput of
`POST /v1/predictions` (a real `python -m digit_predictor.api` with `--workers` processes,
request logging on, every row written to PostgreSQL, loopback), the api process's CPU time
per request when it runs here, and the in-process decode+preprocess+model time for the same
drawings as the floor.

The load generator is a minimal keep-alive HTTP/1.1 client on asyncio with the request bytes
prepared up front, so that on a small machine the client takes as little CPU from the api as
possible. Drawings are 64 synthetic canvas drawings (digit_predictor.ml.synthetic_digits), RGBA
PNGs as the web app sends them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import onnxruntime

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.ml.preprocess import preprocess_bytes
from digit_predictor.ml.serving import ServingClassifier
from digit_predictor.ml.synthetic_digits import pen_digit, to_png
from digit_predictor.testing.api_server import ApiServer, api_env, start_api
from digit_predictor.testing.postgres import start_cluster, with_database

BOUNDARY = "benchboundary7f3a"


@dataclass
class Level:
    concurrency: int
    requests: int
    wall_s: float
    latencies_ms: list[float]
    errors: dict[int, int]
    server_cpu_ms: float | None

    @property
    def throughput(self) -> float:
        return self.requests / self.wall_s


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def drawings(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [to_png(pen_digit(i % 10, rng), "alpha") for i in range(count)]


def request_bytes(host: str, png: bytes, api_key: str | None) -> bytes:
    body = (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="image"; filename="drawing.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + (
            f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="source"\r\n\r\n'
            f"bench\r\n--{BOUNDARY}--\r\n"
        ).encode()
    )
    head = (
        f"POST /v1/predictions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n"
        + (f"X-API-Key: {api_key}\r\n" if api_key else "")
        + "\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def load(
    host: str, port: int, payloads: list[bytes], total: int, concurrency: int
) -> tuple[float, list[float], dict[int, int]]:
    latencies: list[float] = []
    errors: dict[int, int] = {}
    counter = iter(range(total))

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in counter:
                payload = payloads[(i + offset) % len(payloads)]
                started = time.perf_counter()
                writer.write(payload)
                status = await read_response(reader)
                latencies.append((time.perf_counter() - started) * 1000.0)
                if status != 201:
                    errors[status] = errors.get(status, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(w * 7) for w in range(concurrency)))
    return time.perf_counter() - started, latencies, errors


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def run_level(
    url: str, payloads: list[bytes], requests: int, concurrency: int, pid: int | None
) -> Level:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    asyncio.run(load(host, port, payloads, max(2 * concurrency, 20), concurrency))  # warm-up
    cpu_before = cpu_seconds(pid)
    wall, latencies, errors = asyncio.run(load(host, port, payloads, requests, concurrency))
    cpu_after = cpu_seconds(pid)
    server_cpu = (
        (cpu_after - cpu_before) / requests * 1000.0
        if cpu_before is not None and cpu_after is not None
        else None
    )
    return Level(concurrency, requests, wall, latencies, errors, server_cpu)


def in_process_level(
    classifier: ServingClassifier, images: list[bytes], requests: int, concurrency: int
) -> Level:
    """The same work without HTTP or PostgreSQL: decode + preprocess + model per drawing.

    `concurrency` threads take drawings from one counter, as the HTTP clients do; the model is
    the api's (the ONNX graph, one intra-op thread).
    """
    latencies: list[float] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker(offset: int) -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            data = images[(i + offset) % len(images)]
            t = time.perf_counter()
            classifier.predict_proba(preprocess_bytes(data).array[None])
            elapsed = (time.perf_counter() - t) * 1000.0
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w * 7,)) for w in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Level(concurrency, requests, time.perf_counter() - started, latencies, {}, None)


def load_classifier(model_path: Path) -> ServingClassifier:
    classifier = ServingClassifier.load(model_path)
    classifier.warm_up()
    return classifier


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
        f"{cpu}, {os.cpu_count()} CPUs visible, Linux {platform.release()}, "
        f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}"
    )


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    cluster = start_cluster()
    try:
        yield with_database(cluster.admin_url, "digits")
    finally:
        cluster.destroy()


@contextmanager
def local_api(args: argparse.Namespace) -> Iterator[ApiServer]:
    database_url = args.database_url or os.environ.get("DATABASE_URL")
    with throwaway_postgres() if not database_url else _given(database_url) as url:
        env = api_env(url, args.model_path)
        if args.api_key:
            env["API_KEY"] = args.api_key
        server = start_api(env, ready_path="/readyz", log_dir=args.log_dir, workers=args.workers)
        try:
            yield server
        finally:
            server.cleanup()


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def row(what: str, lv: Level) -> str:
    cpu = f"{lv.server_cpu_ms:.1f}" if lv.server_cpu_ms is not None else ""
    return (
        f"| {what} | {lv.concurrency} | {lv.requests} | {percentile(lv.latencies_ms, 50):.1f} | "
        f"{percentile(lv.latencies_ms, 95):.1f} | {percentile(lv.latencies_ms, 99):.1f} | "
        f"{lv.throughput:.0f} | {cpu} |"
    )


def report(levels: list[Level], floor: Level, peers: list[Level], label: str) -> None:
    print(f"\nmachine: {machine()}")
    print(f"load average during the run: {label}\n")
    print("| what | concurrency | requests | p50 ms | p95 ms | p99 ms | req/s | api CPU ms/req |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for lv in levels:
        print(row("HTTP POST /v1/predictions", lv))
    print(row("in-process floor (decode+preprocess+model)", floor))
    if peers:
        print("\nside by side, same drawings, same run (ratio = api / in-process):\n")
        print(
            "| concurrency | api p50 ms | in-process p50 ms | p50 ratio | api req/s | "
            "in-process req/s | throughput ratio |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for api_lv, peer in zip(levels, peers, strict=True):
            api_p50, peer_p50 = (
                percentile(api_lv.latencies_ms, 50),
                percentile(peer.latencies_ms, 50),
            )
            print(
                f"| {api_lv.concurrency} | {api_p50:.1f} | {peer_p50:.1f} | "
                f"{api_p50 / peer_p50:.2f}x | {api_lv.throughput:.0f} | {peer.throughput:.0f} | "
                f"{api_lv.throughput / peer.throughput:.2f}x |"
            )
    failed = {lv.concurrency: lv.errors for lv in levels if lv.errors}
    if failed:
        print(f"\nnon-201 answers by concurrency: {failed}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an api already running (else one is started here)")
    parser.add_argument("--database-url", help="PostgreSQL for the started api")
    parser.add_argument("--model-path", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--api-key", default=os.environ.get("API_KEY"))
    parser.add_argument("--requests", type=int, default=600, help="per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--floor-rounds", type=int, default=5)
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="after each HTTP level, run the in-process model at the same concurrency on the "
        "same drawings, and print api / in-process ratios",
    )
    parser.add_argument("--log-dir", help="keep the started api's log here")
    parser.add_argument(
        "--workers", type=int, default=1, help="api worker processes (the floor is one thread)"
    )
    args = parser.parse_args()

    images = drawings(64)
    levels_wanted = [int(c) for c in args.concurrency.split(",")]
    host = urlsplit(args.url).netloc if args.url else "127.0.0.1"
    payloads = [request_bytes(host, png, args.api_key) for png in images]
    load_before = os.getloadavg()[0]
    classifier = load_classifier(args.model_path)
    levels: list[Level] = []
    peers: list[Level] = []

    def measure(url: str, payloads: list[bytes], pid: int | None) -> None:
        for conc in levels_wanted:
            print(f"concurrency {conc}: {args.requests} requests over HTTP...", flush=True)
            levels.append(run_level(url, payloads, args.requests, conc, pid))
            if args.side_by_side:
                print(f"concurrency {conc}: the same in-process...", flush=True)
                peers.append(in_process_level(classifier, images, args.requests, conc))

    if args.url:
        measure(args.url, payloads, None)
    else:
        with local_api(args) as api:
            payloads = [request_bytes(f"127.0.0.1:{api.port}", png, args.api_key) for png in images]
            measure(api.url, payloads, api.process.pid)
    floor = in_process_level(classifier, images, len(images) * args.floor_rounds, 1)
    load_after = os.getloadavg()[0]
    report(levels, floor, peers, f"{load_before:.1f} at start, {load_after:.1f} at end")
    return 1 if any(lv.errors for lv in levels) else 0


if __name__ == "__main__":
    sys.exit(main())
