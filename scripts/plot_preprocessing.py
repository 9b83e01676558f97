"""Chart: canvas drawings, the plain 28x28 resize, and the MNIST-faithful preprocessing, with the
shipped model's answer for each. Writes model/saved_model/preprocessing_examples.png.

    python scripts/plot_preprocessing.py [--weights model/saved_model/model.pt] [--seed 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.ml.evaluate import plain_resize
from digit_predictor.ml.inference import Classifier
from digit_predictor.ml.preprocess import preprocess_bytes, to_model_tensor
from digit_predictor.ml.synthetic_digits import pen_digit, to_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    classifier = Classifier.load(args.weights)
    rng = np.random.default_rng(args.seed)
    digits = list(range(10))
    fig, axes = plt.subplots(3, len(digits), figsize=(1.3 * len(digits), 4.4))
    for col, digit in enumerate(digits):
        canvas = pen_digit(digit, rng)
        png = to_png(canvas)
        plain = plain_resize(png)
        faithful = preprocess_bytes(png).image
        batch = torch.stack([to_model_tensor(plain), to_model_tensor(faithful)])
        plain_pred, faithful_pred = classifier.predict_proba(batch).argmax(axis=1)
        for row, (image, title) in enumerate(
            [
                (canvas, f"drawn {digit}"),
                (plain, f"resize: {plain_pred}"),
                (faithful, f"faithful: {faithful_pred}"),
            ]
        ):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1 if image.dtype != np.uint8 else 255)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"What the model sees ({classifier.version})", fontsize=10)
    fig.tight_layout()
    out = Path(args.weights).parent / "preprocessing_examples.png"
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
