"""Fit the trust parameters onto the shipped weights and measure them on held-out data.

python -m digit_predictor.ml.trust_eval [--weights model/saved_model/model.pt] [--write]

Real digits (in-distribution): MNIST test as published, the canvas benchmark (the same 2000
redrawn MNIST test digits as ml/evaluate.py), USPS test and optdigits windep on a canvas.
Non-digits: every generator of ml/nondigits.py on its held-out split (other fonts, MNIST test
digits as material, other seeds), plus the letters that look like digits (reported, no target).
Leave-one-generator-out refits the detector without a generator and scores that generator: how
the detector does on a kind of drawing it has never seen, the closest stand-in here for drawings
by people. With --write the weights (CNN unchanged, trust buffers filled), the model card and
the reliability diagram are written beside the weights.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.ml.card import GRAPH_NAME
from digit_predictor.ml.data import default_data_dir, load_split
from digit_predictor.ml.export import write_graph
from digit_predictor.ml.extra_digits import heldout_digits
from digit_predictor.ml.inference import Classifier
from digit_predictor.ml.nondigits import (
    HELDOUT,
    DigitSource,
    generators,
    lookalike_letter,
    nondigit_set,
)
from digit_predictor.ml.preprocess import EmptyDrawingError, preprocess_bytes
from digit_predictor.ml.synthetic_digits import redraw_digit, to_png
from digit_predictor.ml.trust import (
    ECE_BINS,
    PER_GENERATOR,
    TrustData,
    TrustReport,
    auroc,
    draw_trust_data,
    ece,
    fit_on,
    memoised_forward,
    normalised,
    reliability,
)
from digit_predictor.ml.trust_head import assess, head_of

RELIABILITY_PNG = "reliability.png"
LOOKALIKE_SET = "letters that look like digits (O, l, Z, S, b, q, ...; no target)"
AUROC_TARGET = 0.98
FLAGGED_TARGET = 0.90
FALSE_ALARM_TARGET = 0.01
ECE_TARGET = 0.015
REAL_HANDWRITING = ("USPS test", "optdigits windep")

Sets = dict[str, tuple[np.ndarray, np.ndarray]]


def canvas_benchmark(test_images: np.ndarray, n: int, progress: bool) -> np.ndarray:
    """The first n drawings of ml/evaluate.py's canvas benchmark (same seed, same order)."""
    rng = np.random.default_rng(0)
    styles = ("alpha", "alpha", "white_on_black", "black_on_white")
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in tqdm(range(n), desc="canvas benchmark", disable=not progress, leave=False):
        png = to_png(redraw_digit(test_images[i], rng), styles[i % len(styles)])
        # A drawing the preprocessing rejects stays all black: counted, never dropped.
        with contextlib.suppress(EmptyDrawingError):
            out[i] = preprocess_bytes(png).image
    return out


def heldout_real(
    data_dir: Path | None = None,
    canvas_n: int = 2000,
    extra_limit: int | None = None,
    progress: bool = False,
) -> Sets:
    test = load_split(data_dir or default_data_dir(), "t10k")
    sets: Sets = {
        "MNIST test": (test.images, test.labels),
        "canvas benchmark": (
            canvas_benchmark(test.images, canvas_n, progress),
            test.labels[:canvas_n],
        ),
    }
    sets.update(heldout_digits(limit=extra_limit))
    return sets


def heldout_nondigits(
    n: int, seed: int = 5000, data_dir: Path | None = None, progress: bool = False
) -> dict[str, np.ndarray]:
    test = load_split(data_dir or default_data_dir(), "t10k")
    source = DigitSource(test.images, test.labels)
    gens = {**generators(source), LOOKALIKE_SET: lookalike_letter}
    return {
        name: nondigit_set(gen, n, seed + 100 * i, HELDOUT, progress=name if progress else None)
        for i, (name, gen) in enumerate(gens.items())
    }


def outputs(model: torch.nn.Module, images: np.ndarray, batch: int = 1000) -> dict[str, np.ndarray]:
    """Raw and calibrated probabilities, ood_score, is_digit for uint8 (N, 28, 28)."""
    model.eval()
    raw, cal, score, digit = [], [], [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = normalised(images[start : start + batch])
            out = assess(model, x)
            temperature = float(head_of(model).temperature)
            raw.append(torch.softmax(out.logits.double() * temperature, dim=1).numpy())
            cal.append(torch.softmax(out.logits.double(), dim=1).numpy())
            score.append(out.ood_score.double().numpy())
            digit.append(out.is_digit.numpy())
    return {
        "raw": np.concatenate(raw),
        "calibrated": np.concatenate(cal),
        "ood_score": np.concatenate(score),
        "is_digit": np.concatenate(digit),
    }


def evaluate(model: torch.nn.Module, real: Sets, odd: dict[str, np.ndarray]) -> dict[str, Any]:
    real_rows, odd_rows = [], []
    real_scores, real_msp = [], []
    for name, (images, labels) in real.items():
        out = outputs(model, images)
        real_scores.append(out["ood_score"])
        real_msp.append(out["calibrated"].max(axis=1))
        real_rows.append(
            {
                "name": name,
                "n": len(labels),
                "accuracy": float((out["calibrated"].argmax(axis=1) == labels).mean()),
                "mean_confidence": float(out["calibrated"].max(axis=1).mean()),
                "ece_before": ece(out["raw"], labels),
                "ece_after": ece(out["calibrated"], labels),
                "false_alarm_rate": float((~out["is_digit"]).mean()),
                "reliability_before": reliability(out["raw"], labels),
                "reliability_after": reliability(out["calibrated"], labels),
            }
        )
    all_real = np.concatenate(real_scores)
    all_msp = np.concatenate(real_msp)
    for name, images in odd.items():
        out = outputs(model, images)
        row: dict[str, Any] = {
            "name": name,
            "n": len(images),
            "auroc": auroc(out["ood_score"], all_real),
            "auroc_worst_real_set": min(auroc(out["ood_score"], s) for s in real_scores),
            "flagged_rate": float((~out["is_digit"]).mean()),
            # The baseline the issue measured: 1 - max softmax as the score.
            "auroc_max_softmax": auroc(-out["calibrated"].max(axis=1), -all_msp),
            "confident_90_rate": float((out["calibrated"].max(axis=1) >= 0.9).mean()),
        }
        if name != LOOKALIKE_SET:
            row["target"] = {"auroc": AUROC_TARGET, "flagged_rate": FLAGGED_TARGET}
        odd_rows.append(row)
    return {"real_digits": real_rows, "non_digits": odd_rows}


def leave_one_generator_out(
    model: torch.nn.Module, data: TrustData, odd: dict[str, np.ndarray], real: Sets, seed: int
) -> list[dict[str, Any]]:
    """Refit without one generator's drawings; score that generator's held-out drawings."""
    rows = []
    forward = memoised_forward(model)  # the CNN is the same in every refit
    for name in tqdm(list(data.nondigits), desc="leave one generator out", leave=False):
        trial = copy.deepcopy(model)
        fit_on(trial, data, seed=seed, leave_out=name.__eq__, forward=forward)
        real_out = [outputs(trial, images) for images, _ in real.values()]
        all_real = np.concatenate([o["ood_score"] for o in real_out])
        out = outputs(trial, odd[name])
        rows.append(
            {
                "left_out": name,
                "auroc": auroc(out["ood_score"], all_real),
                "flagged_rate": float((~out["is_digit"]).mean()),
                "false_alarm_rate": float(
                    (~np.concatenate([o["is_digit"] for o in real_out])).mean()
                ),
            }
        )
    return rows


def plot_reliability(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.4 * len(rows), 3.6), sharey=True)
    for ax, row in zip(np.atleast_1d(axes), rows, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        for key, label, style in (
            ("reliability_before", f"before (ECE {100 * row['ece_before']:.1f}%)", "o--"),
            ("reliability_after", f"calibrated (ECE {100 * row['ece_after']:.1f}%)", "s-"),
        ):
            bins = [b for b in row[key] if b["count"] >= 10]
            ax.plot(
                [b["confidence"] for b in bins],
                [b["accuracy"] for b in bins],
                style,
                label=label,
                markersize=4,
            )
        ax.set(
            title=f"{row['name']} (n={row['n']})",
            xlabel="confidence",
            xlim=(0.3, 1.0),
            ylim=(0.3, 1.02),
        )
        ax.legend(fontsize=7, loc="upper left")
    np.atleast_1d(axes)[0].set_ylabel("accuracy")
    fig.suptitle(f"Reliability ({ECE_BINS} confidence bins; bins with >= 10 drawings)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_tables(result: dict[str, Any]) -> None:
    print(
        f"{'real digits':<28} {'n':>6} {'acc':>7} {'ECE before':>10} {'ECE after':>9} "
        f"{'false alarms':>12}"
    )
    for r in result["real_digits"]:
        print(
            f"{r['name']:<28} {r['n']:>6} {100 * r['accuracy']:6.2f}% "
            f"{100 * r['ece_before']:9.2f}% {100 * r['ece_after']:8.2f}% "
            f"{100 * r['false_alarm_rate']:11.2f}%"
        )
    print(
        f"\n{'non-digits':<40} {'n':>5} {'AUROC':>7} {'worst':>7} {'flagged':>8} {'MSP AUROC':>9}"
    )
    for r in result["non_digits"]:
        print(
            f"{r['name'][:40]:<40} {r['n']:>5} {r['auroc']:7.4f} {r['auroc_worst_real_set']:7.4f} "
            f"{100 * r['flagged_rate']:7.1f}% {r['auroc_max_softmax']:9.4f}"
        )
    for r in result.get("leave_one_generator_out", []):
        print(
            f"left out {r['left_out']:<32} AUROC {r['auroc']:.4f} flagged "
            f"{100 * r['flagged_rate']:.1f}% false alarms {100 * r['false_alarm_rate']:.2f}%"
        )


def fit_and_measure(
    model: torch.nn.Module,
    data: TrustData,
    real: Sets,
    odd: dict[str, np.ndarray],
    *,
    seed: int,
    logo: bool = True,
) -> tuple[TrustReport, dict[str, Any]]:
    report = fit_on(model, data, seed=seed)
    print(
        f"fitted: T={report.temperature:.3f} threshold={report.threshold:.4f} "
        f"train AUROC {report.train_auroc:.4f} ({report.seconds:.1f} s)",
        file=sys.stderr,
    )
    result = evaluate(model, real, odd)
    if logo:
        result["leave_one_generator_out"] = leave_one_generator_out(model, data, odd, real, seed)
    return report, result


def write_outputs(
    classifier: Classifier,
    weights: Path,
    report: TrustReport,
    result: dict[str, Any],
    command: str,
) -> dict[str, Any]:
    """Weights with the fitted trust buffers (the CNN unchanged), card and diagram beside them."""
    from digit_predictor.ml.card import ModelCard

    out_dir = weights.parent
    buffer = io.BytesIO()
    torch.save(classifier.model.state_dict(), buffer)
    blob = buffer.getvalue()
    weights.write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    plot_reliability(result["real_digits"], out_dir / RELIABILITY_PNG)
    card = ModelCard.from_dict(dict(classifier.card))
    card.cnn_version = card.cnn_version or card.version
    card.version = f"{card.architecture}-{sha[:12]}"
    card.weights_sha256 = sha
    card.weights_bytes = len(blob)
    card.onnx_file = GRAPH_NAME
    card.onnx_sha256 = write_graph(classifier.model, out_dir)
    card.trust = {
        "command": command,
        "fit": report.as_dict(),
        **result,
        "reliability_diagram": RELIABILITY_PNG,
    }
    card.write(out_dir)
    return card.to_dict()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--per-generator", type=int, default=PER_GENERATOR, help="training non-digits each"
    )
    parser.add_argument("--eval-n", type=int, default=300, help="held-out non-digits each")
    parser.add_argument("--canvas-n", type=int, default=1000)
    parser.add_argument("--no-logo", action="store_true", help="skip leave-one-generator-out")
    parser.add_argument("--write", action="store_true", help="write weights, card, diagram")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    classifier = Classifier.load(args.weights)
    data = draw_trust_data(args.seed, args.per_generator, progress=True)
    real = heldout_real(canvas_n=args.canvas_n, progress=True)
    odd = heldout_nondigits(args.eval_n, progress=True)
    report, result = fit_and_measure(
        classifier.model, data, real, odd, seed=args.seed, logo=not args.no_logo
    )
    print_tables(result)
    if args.write:
        argv_list = list(sys.argv[1:] if argv is None else argv)
        command = shlex.join(["python", "-m", "digit_predictor.ml.trust_eval", *argv_list])
        card = write_outputs(classifier, Path(args.weights), report, result, command)
        print(f"wrote {args.weights} ({card['version']}) and its card", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
