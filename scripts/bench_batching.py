"""Does micro-batching concurrent requests raise throughput? In-process, same work as the api.

Direct: each request thread decodes, preprocesses and runs the model on its own drawing (what
the api does). Batched: each request thread decodes and preprocesses, then hands its tensor to
one model thread that collects up to --max-batch tensors, waiting at most --max-wait-ms, and
runs them as one batch. Both at the same concurrency, on the same drawings, one intra-op thread.

    python scripts/bench_batching.py [--requests 600] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.ml.inference import Classifier
from digit_predictor.ml.preprocess import preprocess_bytes
from digit_predictor.ml.synthetic_digits import pen_digit, to_png


class MicroBatcher:
    """One model thread; requests wait for the batch their tensor lands in."""

    def __init__(self, classifier: Classifier, max_batch: int, max_wait_s: float) -> None:
        self.classifier = classifier
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.inbox: queue.SimpleQueue[tuple[torch.Tensor, Future[np.ndarray]] | None] = (
            queue.SimpleQueue()
        )
        self.batch_sizes: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def predict(self, tensor: torch.Tensor) -> np.ndarray:
        future: Future[np.ndarray] = Future()
        self.inbox.put((tensor, future))
        return future.result()

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join()

    def _run(self) -> None:
        while True:
            first = self.inbox.get()
            if first is None:
                return
            items = [first]
            deadline = time.perf_counter() + self.max_wait_s
            while len(items) < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    item = (
                        self.inbox.get(timeout=max(remaining, 0.0))
                        if remaining > 0
                        else (self.inbox.get_nowait())
                    )
                except queue.Empty:
                    break
                if item is None:
                    self.inbox.put(None)
                    break
                items.append(item)
            self.batch_sizes.append(len(items))
            probs = self.classifier.predict_proba(torch.stack([t for t, _ in items]))
            for (_, future), row in zip(items, probs, strict=True):
                future.set_result(row)


def run(
    work: Callable[[bytes], object], images: list[bytes], n: int, conc: int
) -> dict[str, float]:
    latencies: list[float] = []

    def one(i: int) -> None:
        started = time.perf_counter()
        work(images[i % len(images)])
        latencies.append(time.perf_counter() - started)

    with ThreadPoolExecutor(conc) as pool:
        list(pool.map(one, range(min(n, 2 * conc))))  # warm-up
        latencies.clear()
        started = time.perf_counter()
        list(pool.map(one, range(n)))
        wall = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    return {
        "rps": n / wall,
        "p50": statistics.median(ms),
        "p95": ms[int(0.95 * (len(ms) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="0: take what is queued")
    parser.add_argument("--rounds", type=int, default=2, help="alternate modes this many times")
    args = parser.parse_args()

    torch.set_num_threads(1)
    classifier = Classifier.load(args.model_path)
    classifier.warm_up()
    rng = np.random.default_rng(0)
    images = [to_png(pen_digit(i % 10, rng), "alpha") for i in range(64)]

    def direct(data: bytes) -> object:
        return classifier.predict_proba(preprocess_bytes(data).tensor.unsqueeze(0))

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}, torch {torch.__version__}, 1 intra-op thread"
    )
    # Model alone: what batching can save at best.
    pre = [preprocess_bytes(b).tensor for b in images[:32]]
    t = time.perf_counter()
    for _ in range(5):
        for x in pre:
            classifier.predict_proba(x.unsqueeze(0))
    single = (time.perf_counter() - t) / (5 * 32) * 1000
    t = time.perf_counter()
    for _ in range(5):
        classifier.predict_proba(torch.stack(pre))
    batched = (time.perf_counter() - t) / (5 * 32) * 1000
    full = min(run(direct, images, 200, 1)["p50"], 1e9)
    print(
        f"model per drawing: {single:.2f} ms alone, {batched:.2f} ms in a batch of 32; "
        f"whole request work (decode+preprocess+model): {full:.2f} ms"
    )

    print("| concurrency | mode | req/s | p50 ms | p95 ms | mean batch |")
    print("|---:|---|---:|---:|---:|---:|")
    for conc in [int(c) for c in args.concurrency.split(",")]:
        results: dict[str, list[dict[str, float]]] = {"direct": [], "batched": []}
        sizes: list[int] = []
        for _ in range(args.rounds):
            results["direct"].append(run(direct, images, args.requests, conc))
            batcher = MicroBatcher(classifier, args.max_batch, args.max_wait_ms / 1000)

            def batched_work(data: bytes, b: MicroBatcher = batcher) -> object:
                return b.predict(preprocess_bytes(data).tensor)

            results["batched"].append(run(batched_work, images, args.requests, conc))
            batcher.close()
            sizes += batcher.batch_sizes
        for mode, runs in results.items():
            best = max(runs, key=lambda r: r["rps"])
            mean_batch = f"{statistics.mean(sizes):.1f}" if mode == "batched" else "1"
            print(
                f"| {conc} | {mode} | {best['rps']:.0f} | {best['p50']:.1f} | "
                f"{best['p95']:.1f} | {mean_batch} |"
            )


if __name__ == "__main__":
    main()
