"""Fine-tune a trained model on corrections, with MNIST and the extra training data replayed.

Every batch is half corrections, half replay (by default), both through the canvas augmentation,
so the model learns the new styles without forgetting MNIST. Deterministic for a given seed and
thread count (`seed_everything`, a private generator for every random draw).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from digit_predictor.ml.augment import AugmentConfig, augment_batch
from digit_predictor.ml.batch import normalise, to_unit
from digit_predictor.ml.data import load_split
from digit_predictor.ml.train import seed_everything


@dataclass
class FinetuneConfig:
    seed: int = 0
    threads: int | None = 2
    batch_size: int = 256
    feedback_share: float = 0.5  # of each batch; the rest is replay
    passes: float = 4.0  # how often each training correction is seen, on average
    min_steps: int = 60
    max_steps: int = 800
    max_lr: float = 3e-4  # under a tenth of training's: adjust, do not relearn
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05  # as in training, so confidences stay comparable
    replay_mnist: int | None = None  # None: all 60,000 MNIST training digits
    replay_extra: bool = True  # USPS train + optdigits tra, as in training
    # MNIST training digits redrawn with a uniform round brush, as training had (30,000 there):
    # without them the canvas benchmark drifts down while the model adapts to the corrections.
    replay_redrawn: int = 10_000
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def steps_for(self, n_feedback: int) -> int:
        per_batch = max(1, round(self.batch_size * self.feedback_share))
        wanted = math.ceil(self.passes * n_feedback / per_batch)
        return max(self.min_steps, min(self.max_steps, wanted))


@dataclass
class ReplayData:
    images01: torch.Tensor  # float (N, 1, 28, 28) in 0..1
    labels: torch.Tensor  # int64 (N,)
    counts: dict[str, int]


def replay_data(config: FinetuneConfig, data_dir: Path) -> ReplayData:
    """MNIST train (a seeded pick when `replay_mnist` is set) and the extra training digits."""
    train = load_split(data_dir, "train")
    pick = np.arange(len(train.labels))
    if config.replay_mnist is not None:
        pick = np.random.default_rng(config.seed).permutation(pick)[: config.replay_mnist]
        pick.sort()
    images = [train.images[pick]]
    labels = [train.labels[pick]]
    counts = {"mnist_train": len(pick)}
    if config.replay_redrawn > 0:
        from digit_predictor.ml.synthetic_digits import redrawn_training_digits

        rng = np.random.default_rng(3000 + config.seed)
        chosen = np.sort(rng.permutation(pick)[: config.replay_redrawn])
        images.append(redrawn_training_digits(train.images[chosen], seed=3000 + config.seed))
        labels.append(train.labels[chosen])
        counts["mnist_redrawn"] = len(chosen)
    if config.replay_extra:
        from digit_predictor.ml.extra_digits import training_digits

        for name, (x_extra, y_extra) in training_digits().items():
            images.append(x_extra)
            labels.append(y_extra)
            counts[name.replace(" ", "_").lower()] = len(y_extra)
    return ReplayData(
        images01=to_unit(np.concatenate(images)),
        labels=torch.from_numpy(np.concatenate(labels)),
        counts=counts,
    )


@dataclass
class FinetuneResult:
    model: torch.nn.Module
    steps: int
    seconds: float
    history: list[dict[str, float]]


def finetune(
    base: torch.nn.Module,
    feedback_images: np.ndarray,
    feedback_labels: np.ndarray,
    replay: ReplayData,
    config: FinetuneConfig,
    progress: bool = True,
) -> FinetuneResult:
    """A fine-tuned copy of `base`; `base` itself is left as it was."""
    if config.threads:
        torch.set_num_threads(config.threads)
    generator = seed_everything(config.seed)
    model = copy.deepcopy(base)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing in stubs
    x_fb, y_fb = to_unit(feedback_images), torch.from_numpy(feedback_labels)
    n_fb = len(y_fb)
    fb_per_batch = min(n_fb, max(1, round(config.batch_size * config.feedback_share)))
    replay_per_batch = config.batch_size - fb_per_batch
    steps = config.steps_for(n_fb)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, total_steps=steps, pct_start=0.15
    )
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    order = torch.randperm(n_fb, generator=generator)
    cursor = 0
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(range(steps), desc="fine-tuning", disable=not progress, file=sys.stderr)
    for step in bar:
        if cursor + fb_per_batch > n_fb:  # a new pass over the corrections, newly shuffled
            order, cursor = torch.randperm(n_fb, generator=generator), 0
        fb_idx = order[cursor : cursor + fb_per_batch]
        cursor += fb_per_batch
        replay_idx = torch.randint(0, len(replay.labels), (replay_per_batch,), generator=generator)
        x = torch.cat([x_fb[fb_idx], replay.images01[replay_idx]])
        y = torch.cat([y_fb[fb_idx], replay.labels[replay_idx]])
        x = augment_batch(x, config.augment, generator).contiguous(
            memory_format=torch.channels_last
        )
        logits = model(normalise(x))
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(dim=1) == y).sum())
        seen += len(y)
        if step % 20 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
            history.append(
                {
                    "step": float(step + 1),
                    "train_loss": total_loss / seen,
                    "train_acc": correct / seen,
                    "seconds": time.perf_counter() - started,
                }
            )
            total_loss, correct, seen = 0.0, 0, 0
    model.eval()
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return FinetuneResult(
        model=model, steps=steps, seconds=time.perf_counter() - started, history=history
    )
