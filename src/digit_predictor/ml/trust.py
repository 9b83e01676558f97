"""Fit the trust parameters on top of trained weights: the temperature and the non-digit detector.

`fit_trust(model, seed=...)` is what training and retraining call after the CNN is trained: it
draws its own data (bounded: about three minutes on two cores), leaves the network's weights alone
and writes only the buffers of `model.trust` (ml/trust_head.py), so they travel in the state
dict with the weights.

- Temperature: one number minimising the negative log-likelihood on held-out canvas drawings
  (the MNIST validation digits the CNN never trained on, redrawn on the 280x280 canvas, PNG,
  serving preprocessing). Argmax, hence accuracy, is unchanged.
- Detector: class means and a shared covariance of the penultimate features (Mahalanobis), then
  a small MLP trained with outlier exposure: real digits from the training side (MNIST train
  as published and redrawn, USPS train, optdigits tra, pen-stroke digits) against non-digits
  from every generator of ml/nondigits.py on its training split (training fonts, MNIST train
  digits as material). Evaluation (ml/trust_eval.py) uses held-out fonts, MNIST test material,
  other seeds, and leaves each generator out in turn.
- Threshold: the 99.5th percentile of the detector's score on held-out real digits (the
  calibration drawings and a fifth of the training-side digits the MLP did not see), so about
  0.5% of real digits are flagged, leaving room under the 1% target.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from digit_predictor.cpus import usable_cpus
from digit_predictor.ml.data import default_data_dir, load_split
from digit_predictor.ml.nondigits import (
    GENERATOR_NAMES,
    TRAIN,
    DigitSource,
    generators,
    nondigit_set,
)
from digit_predictor.ml.preprocess import (
    MNIST_MEAN,
    MNIST_STD,
    EmptyDrawingError,
    preprocess_bytes,
    preprocess_ink,
)
from digit_predictor.ml.synthetic_digits import pen_training_digits, redraw_digit, to_png
from digit_predictor.ml.trust_head import TrustHead, features_and_logits, head_of

# The CNN's training holds out the first `VAL_SIZE` of a seeded permutation of MNIST train
# (ml/train.py, seed 0): those digits are the held-out canvas drawings for calibration.
VAL_SIZE = 2000
TRAIN_SEED = 0
FALSE_ALARM_QUANTILE = 0.995
PER_GENERATOR = 1000
# Pen letters get half a share: with a full one the letters (two generators) tilted the MLP
# away from scribbles, slashed digits and doodles by about a point each (docs/trust.md).
GENERATOR_SHARE = {"pen letters": 0.5}
# Real digits for the detector. Many more than non-digits: the threshold sits at the far tail of
# real digits (a 4 drawn like an L, an 8 with a loop filled in), and the MLP only learns that
# tail is a digit from enough examples of it (13,000 redrawn instead of 3,000: 3-4 points more
# of letters, scribbles and slashed digits flagged at the same false-alarm rule; docs/trust.md).
N_MNIST = 3000  # MNIST training digits as published,
N_REDRAWN = 13_000  # ... others redrawn on the canvas (REDRAWN_JOBS jobs),
N_EXTRA = 7291  # ... all of USPS train (7,291) and optdigits tra (1,934),
PEN_PER_CLASS = 300  # ... and pen-stroke digits of each class
REDRAWN_JOBS = 4  # the longest drawing job, split so that the processes finish together
ECE_BINS = 15

PNG_STYLES = ("alpha", "alpha", "white_on_black", "black_on_white")


@dataclass(frozen=True)
class TrustReport:
    temperature: float
    threshold: float
    calibration_nll_before: float
    calibration_nll_after: float
    calibration_ece_before: float
    calibration_ece_after: float
    threshold_false_alarm_rate: float  # on the held-out real digits that set the threshold
    train_auroc: float  # detector on its own training data (a sanity check, not evidence)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- metrics -----------------------------------------------------------------------------


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def reliability(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (empty bins left out)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes into the first.
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        mask = index == i
        if mask.any():
            out.append(
                {
                    "lo": float(edges[i]),
                    "hi": float(edges[i + 1]),
                    "count": int(mask.sum()),
                    "confidence": float(conf[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                }
            )
    return out


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: count-weighted |accuracy - confidence| over confidence bins."""
    total = len(labels)
    if total == 0:
        raise ValueError("ECE of an empty set")
    return float(
        sum(
            b["count"] * abs(b["accuracy"] - b["confidence"])
            for b in reliability(probs, labels, bins)
        )
        / total
    )


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature minimising the NLL of softmax(logits / T): a 1-D convex problem in log T."""
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    z, y = logits.double(), labels.long()
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return float(log_t.exp().item())


# --- data -----------------------------------------------------------------------------


def normalised(images_u8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).float().div(255.0)[:, None]
    return (x - MNIST_MEAN) / MNIST_STD


def on_canvas(images: np.ndarray, seed: int, *, progress: str | None = None) -> np.ndarray:
    """MNIST digits redrawn on the 280x280 canvas, PNG round trip, serving preprocessing."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(images), 28, 28), dtype=np.uint8)
    for i, image in enumerate(tqdm(images, desc=progress, disable=progress is None, leave=False)):
        try:
            out[i] = preprocess_bytes(to_png(redraw_digit(image, rng), PNG_STYLES[i % 4])).image
        except EmptyDrawingError:
            out[i] = image
    return out


def mnist_validation_split(
    data_dir: Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(validation indices, training indices, ...) of MNIST train as ml/train.py splits it."""
    order = torch.randperm(60000, generator=torch.Generator().manual_seed(TRAIN_SEED)).numpy()
    return order[:VAL_SIZE], order[VAL_SIZE:], order


def calibration_digits(
    data_dir: Path | None = None, n: int = VAL_SIZE, seed: int = 7, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out canvas drawings: MNIST validation digits (never trained on) redrawn, as served."""
    train = load_split(data_dir or default_data_dir(), "train")
    val_idx, _, _ = mnist_validation_split()
    pick = val_idx[:n]
    images = on_canvas(
        train.images[pick], seed, progress="calibration digits" if progress else None
    )
    return images, train.labels[pick]


def _extra_training_digits(rng: np.random.Generator, per_set: int) -> list[np.ndarray]:
    """A seeded pick of USPS train and optdigits tra, rendered on a canvas and preprocessed."""
    from digit_predictor.ml.extra_digits import (
        TRAIN_FILES,
        _load,
        default_extra_dir,
        render_on_canvas,
    )

    out = []
    for rel in TRAIN_FILES.values():
        inks, _ = _load(default_extra_dir(), rel)
        for i in rng.choice(len(inks), size=min(per_set, len(inks)), replace=False):
            try:
                out.append(preprocess_ink(render_on_canvas(inks[i], rng)).image)
            except EmptyDrawingError:
                continue
    return out


def training_nondigits(name: str, n: int, seed: int, data_dir: Path | None) -> np.ndarray:
    """n training-split drawings of one generator (MNIST training digits as material)."""
    train = load_split(data_dir or default_data_dir(), "train")
    _, train_idx, _ = mnist_validation_split()
    source = DigitSource(train.images[train_idx], train.labels[train_idx])
    return nondigit_set(generators(source)[name], n, seed, TRAIN)


def draw_parts(parts: Mapping[str, Callable[[], Any]], progress: bool = False) -> dict[str, Any]:
    """Run independent drawing jobs, one process per usable CPU. Each job is seeded by its own
    arguments, so the results are the same for any number of processes. Drawing (strokes, PNG,
    preprocessing: Python holding the GIL) is most of a fit's time. The processes are spawned:
    a script calling this needs the `if __name__ == "__main__":` guard."""
    workers = min(usable_cpus(), len(parts))
    results: dict[str, Any] = {}
    with tqdm(total=len(parts), desc="drawing", disable=not progress, leave=False) as bar:
        if workers <= 1:
            for name, job in parts.items():
                results[name] = job()
                bar.update(1)
            return results
        # spawn, not fork: the parent may already be running torch's thread pool.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(job): name for name, job in parts.items()}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
    return results


# --- fitting -----------------------------------------------------------------------------


@torch.inference_mode()
def forward_all(
    model: torch.nn.Module, images_u8: np.ndarray, batch: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and raw logits for uint8 (N, 28, 28) images."""
    model.eval()
    feats, logits = [], []
    for start in range(0, len(images_u8), batch):
        f, z = features_and_logits(model, normalised(images_u8[start : start + batch]))
        feats.append(f)
        logits.append(z)
    return torch.cat(feats), torch.cat(logits)


def memoised_forward(model: torch.nn.Module) -> Forward:
    """`forward_all` that remembers each array it has seen (for refits on the same data)."""
    seen: list[tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]]] = []

    def forward(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        for known, result in seen:
            if known is images:
                return result
        result = forward_all(model, images)
        seen.append((images, result))
        return result

    return forward


def fit_mahalanobis(
    head: TrustHead, features: torch.Tensor, labels: torch.Tensor, shrink: float = 0.05
) -> None:
    """Class means and a shared, slightly shrunk covariance (its inverse) of digit features."""
    means = torch.stack([features[labels == c].mean(dim=0) for c in range(10)])
    centred = features - means[labels]
    cov = centred.T @ centred / max(len(features) - 10, 1)
    cov = (1 - shrink) * cov + shrink * torch.eye(cov.shape[0]) * cov.diagonal().mean()
    head.class_means.copy_(means)
    head.precision.copy_(torch.linalg.inv(cov.double()).float())


def train_detector(
    head: TrustHead, inputs: torch.Tensor, is_outlier: torch.Tensor, seed: int, steps: int = 600
) -> None:
    """A small MLP on frozen inputs, balanced binary cross-entropy, weight decay; full batch."""
    gen = torch.Generator().manual_seed(seed)
    mean = inputs.mean(dim=0)
    scale = inputs.std(dim=0).clamp(min=1e-4)
    z = (inputs - mean) / scale
    hidden = head.b1.shape[0]
    w1 = (torch.randn(z.shape[1], hidden, generator=gen) / z.shape[1] ** 0.5).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(hidden, generator=gen) / hidden**0.5).requires_grad_()
    b2 = torch.zeros((), requires_grad=True)
    y = is_outlier.float()
    pos_weight = (y == 0).sum() / (y == 1).sum().clamp(min=1)
    opt = torch.optim.AdamW([w1, b1, w2, b2], lr=0.01, weight_decay=0.01)
    for _ in range(steps):
        opt.zero_grad()
        drop = (torch.rand(z.shape, generator=gen) > 0.1).float() / 0.9  # input dropout
        out = torch.relu((z * drop) @ w1 + b1) @ w2 + b2
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, y, pos_weight=pos_weight)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    with torch.no_grad():
        head.in_mean.copy_(mean)
        head.in_scale.copy_(scale)
        head.w1.copy_(w1)
        head.b1.copy_(b1)
        head.w2.copy_(w2)
        head.b2.copy_(b2)


Forward = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrustData:
    """Everything the fit needs, drawn once (so evaluation can refit parts cheaply)."""

    calibration: tuple[np.ndarray, np.ndarray]
    real: tuple[np.ndarray, np.ndarray]
    nondigits: dict[str, np.ndarray]
    real_groups: np.ndarray  # which kind of real digit each is (see draw_trust_data)


def _groups(groups: np.ndarray) -> list[np.ndarray]:
    return [groups == g for g in np.unique(groups)]


def draw_trust_data(
    seed: int,
    per_generator: int = PER_GENERATOR,
    data_dir: Path | None = None,
    progress: bool = False,
) -> TrustData:
    """The calibration digits, in-distribution examples from the training side only, and
    `per_generator` non-digits from each generator, drawn in parallel (`draw_parts`).

    Real digits by group: 0 MNIST as published, 1 MNIST redrawn on the canvas, 2 USPS and
    optdigits training digits (label -1: not needed), 3 pen-stroke digits."""
    train = load_split(data_dir or default_data_dir(), "train")
    _, train_idx, _ = mnist_validation_split()
    rng = np.random.default_rng(seed)
    as_is = rng.choice(train_idx, size=N_MNIST, replace=False)
    redrawn = rng.choice(train_idx, size=N_REDRAWN, replace=False)
    parts: dict[str, Callable[[], Any]] = {
        name: partial(
            training_nondigits,
            name,
            round(per_generator * GENERATOR_SHARE.get(name, 1.0)),
            seed + 100 * i,
            data_dir,
        )
        for i, name in enumerate(GENERATOR_NAMES)
    }
    parts["calibration"] = partial(calibration_digits, data_dir, VAL_SIZE, seed + 7)
    redrawn_chunks = np.array_split(redrawn, REDRAWN_JOBS)
    for k, chunk in enumerate(redrawn_chunks):
        parts[f"redrawn {k}"] = partial(on_canvas, train.images[chunk], seed + 1 + 1000 * k)
    # The generator goes on from the two picks above, as when everything was drawn in turn.
    parts["extra"] = partial(_extra_training_digits, rng, N_EXTRA)
    parts["pen"] = partial(pen_training_digits, PEN_PER_CLASS, seed + 2)
    drawn = draw_parts(parts, progress)

    extra = np.stack(drawn["extra"])
    pen, pen_labels = drawn["pen"]
    groups = [
        (train.images[as_is], train.labels[as_is]),
        (
            np.concatenate([drawn[f"redrawn {k}"] for k in range(len(redrawn_chunks))]),
            train.labels[redrawn],
        ),
        (extra, np.full(len(extra), -1)),
        (pen, pen_labels),
    ]
    return TrustData(
        calibration=drawn["calibration"],
        real=(
            np.concatenate([images for images, _ in groups]),
            np.concatenate([labels for _, labels in groups]),
        ),
        nondigits={name: drawn[name] for name in GENERATOR_NAMES},
        real_groups=np.concatenate([np.full(len(y), g) for g, (_, y) in enumerate(groups)]),
    )


def fit_on(
    model: torch.nn.Module,
    data: TrustData,
    *,
    seed: int,
    leave_out: Callable[[str], bool] = lambda name: False,
    forward: Forward | None = None,
) -> TrustReport:
    """Fit into `model.trust` from drawn data; `forward` may serve cached features (the CNN's
    weights are the same for every refit of one evaluation)."""
    started = time.perf_counter()
    forward = forward or (lambda images: forward_all(model, images))
    head = head_of(model)
    head.fitted.fill_(0.0)
    cal_images, cal_labels = data.calibration
    cal_feats, cal_logits = forward(cal_images)
    y_cal = torch.from_numpy(cal_labels).long()
    before = torch.softmax(cal_logits.double(), dim=1).numpy()
    temperature = fit_temperature(cal_logits, y_cal)
    head.temperature.fill_(temperature)
    after = torch.softmax(cal_logits.double() / temperature, dim=1).numpy()

    real_images, real_labels = data.real
    real_feats, real_logits = forward(real_images)
    labelled = torch.from_numpy(real_labels >= 0)
    # Mahalanobis statistics from labelled digits plus the calibration digits.
    fit_mahalanobis(
        head,
        torch.cat([real_feats[labelled], cal_feats]),
        torch.cat([torch.from_numpy(real_labels)[labelled].long(), y_cal]),
    )
    # A fifth of the training-side digits is kept out of the MLP to set the threshold.
    rng = np.random.default_rng(seed)
    held = rng.random(len(real_images)) < 0.2
    kept = [name for name in data.nondigits if not leave_out(name)]
    odd_images = np.concatenate([data.nondigits[name] for name in kept])
    odd_parts = [forward(data.nondigits[name]) for name in kept]
    odd_feats = torch.cat([f for f, _ in odd_parts])
    odd_logits = torch.cat([z for _, z in odd_parts])

    with torch.inference_mode():
        x_real = normalised(real_images)
        x_odd = normalised(odd_images)
        in_real = head.inputs(real_feats, real_logits, x_real)
        in_odd = head.inputs(odd_feats, odd_logits, x_odd)
        in_cal = head.inputs(cal_feats, cal_logits, normalised(cal_images))
    train_inputs = torch.cat([in_real[torch.from_numpy(~held)], in_odd])
    train_y = torch.cat([torch.zeros(int((~held).sum())), torch.ones(len(in_odd))])
    train_detector(head, train_inputs.clone(), train_y, seed)
    with torch.inference_mode():
        score_real = torch.sigmoid(head.detector_logit(in_real)).numpy()
        score_odd = torch.sigmoid(head.detector_logit(in_odd)).numpy()
        score_cal = torch.sigmoid(head.detector_logit(in_cal)).numpy()
    # Each kind of held-out real digit (canvas drawings, MNIST as published, USPS/optdigits
    # scans, pen strokes) must stay under the false-alarm rate, not just their mixture.
    groups = [score_cal] + [
        score_real[held & group]
        for group in _groups(data.real_groups)
        if (held & group).sum() >= 50
    ]
    reference = np.concatenate(groups)
    threshold = float(max(np.quantile(g, FALSE_ALARM_QUANTILE) for g in groups))
    head.threshold.fill_(threshold)
    head.fitted.fill_(1.0)
    return TrustReport(
        temperature=temperature,
        threshold=threshold,
        calibration_nll_before=float(torch.nn.functional.cross_entropy(cal_logits.double(), y_cal)),
        calibration_nll_after=float(
            torch.nn.functional.cross_entropy(cal_logits.double() / temperature, y_cal)
        ),
        calibration_ece_before=ece(before, cal_labels),
        calibration_ece_after=ece(after, cal_labels),
        threshold_false_alarm_rate=float((reference >= threshold).mean()),
        train_auroc=auroc(score_odd, score_real[~held]),
        counts={
            "calibration digits": len(cal_labels),
            "real digits (training side)": len(real_labels),
            **{f"non-digits: {name}": len(data.nondigits[name]) for name in kept},
        },
        seconds=time.perf_counter() - started,
    )


def fit_trust(
    model: torch.nn.Module,
    *,
    seed: int = 0,
    per_generator: int = PER_GENERATOR,
    data_dir: Path | None = None,
    progress: bool = False,
) -> TrustReport:
    """Fit temperature, detector and threshold into `model.trust` (weights untouched).

    Draws its own data: the MNIST validation digits on a canvas (calibration), training-side real
    digits, `per_generator` non-digits from each generator. About three minutes on two cores."""
    started = time.perf_counter()
    data = draw_trust_data(seed, per_generator, data_dir, progress)
    report = fit_on(model, data, seed=seed)
    return TrustReport(**{**report.as_dict(), "seconds": time.perf_counter() - started})
