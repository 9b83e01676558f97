"""The model card: what was trained, how, on what, and how well it does; JSON and Markdown.

`ModelCard` is the one owner of the card's fields, its file name, and reading and writing it.
Training writes one beside the weights, evaluation updates its metrics, inference checks the
weights against it, retraining stores one (with the gate table) in the model registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
CURVE_PNG = "training_curve.png"
EXAMPLES_PNG = "preprocessing_examples.png"
GRAPH_NAME = "model.onnx"  # the ONNX graph the api serves, beside the weights (ml/export.py)


class CardError(ValueError):
    """A model card is missing, unreadable, or lacks what every card must say."""


@dataclass
class ModelCard:
    """Every field a card may hold. Keys this version does not know are kept in `extra`, so an
    older or newer card survives a read and a write unchanged."""

    FILE_NAME: ClassVar[str] = CARD_JSON

    version: str
    architecture: str
    weights_sha256: str | None = None
    weights_file: str | None = None
    weights_bytes: int | None = None
    # The ONNX graph the api serves (ml/export.py), exported from these weights.
    onnx_file: str | None = None
    onnx_sha256: str | None = None
    parameter_count: int | None = None
    input: str | None = None
    normalisation: dict[str, float] | None = None
    command: str | None = None
    config: dict[str, Any] | None = None
    data_md5: dict[str, str] | None = None
    # What was trained on, by short key (mnist_train, usps_train, ...): numbers, not sentences.
    data_counts: dict[str, int] | None = None
    data_notes: list[str] | None = None
    training_seconds: float | None = None
    history: list[dict[str, float]] | None = None
    torch_version: str | None = None
    torch_threads: int | None = None
    device: str | None = None
    metrics: dict[str, Any] | None = None
    evaluation_command: str | None = None
    training_curve: str | None = None
    # Set by retraining: the version fine-tuned, what it learned from, and the gate it met.
    parent_version: str | None = None
    retraining: dict[str, Any] | None = None
    post_finetune: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    # Set by fitting the trust head (ml/trust_eval.py): the CNN's own version, and the
    # non-digit detector's and calibration's fit and held-out figures.
    cnn_version: str | None = None
    trust: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict):
            raise CardError("a model card is a JSON object")
        for key in ("version", "architecture"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise CardError(f"the model card has no {key!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra" and getattr(self, f.name) is not None
        }
        return {**self.extra, **out}

    @classmethod
    def path_in(cls, directory: Path) -> Path:
        return directory / cls.FILE_NAME

    @classmethod
    def read(cls, directory: Path) -> ModelCard:
        path = cls.path_in(directory)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CardError(f"model card not found at {path}") from exc
        except (OSError, ValueError) as exc:
            raise CardError(f"model card {path} is unreadable: {exc}") from exc
        try:
            return cls.from_dict(data)
        except (CardError, TypeError) as exc:
            raise CardError(f"model card {path} is unreadable: {exc}") from exc

    def write(self, directory: Path) -> None:
        """The JSON card and its Markdown rendering, side by side."""
        write_card(directory, self.to_dict())


BENCHMARKS_EXPLAINED = """\
- *MNIST test (as published)*: the 10,000 official test digits as they are.
- *canvas benchmark*: MNIST test digits redrawn the way a person draws on the 280x280 canvas:
  centre line traced with a round brush 8-36 px wide (at most a fifth of the digit's height, as
  bold as the boldest MNIST strokes; a loop the writer filled solid stays solid rather than
  shrinking to a dash), 30-90% of the canvas height, anywhere on the canvas, sent
  as PNG (RGBA alpha ink, white-on-black or black-on-white). Scored after the
  MNIST-faithful preprocessing, and after a plain resize of the whole canvas to 28x28 (what
  earlier projects did) for contrast.
- *pen-stroke digits*: digits built from pen-stroke templates with random jitter, slant, size,
  place and brush (10-40 px), including 1 with a long upstroke and a base, 7 with a crossbar,
  open and closed 4: a proxy for people who are not in MNIST. Training may use other digits
  from the same templates (another seed), which makes this the weakest evidence of all.
- *USPS test*, *optdigits windep*: real handwriting from other people and scanners, blown up
  onto a canvas at a random size and place, PNG round trip, then the same preprocessing.
  Only their held-out parts are scored (the training parts may be used for training).
- A drawing the preprocessing rejects as empty counts as a mistake."""


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    """Write a card given as a plain dict (`ModelCard.write` is the typed way in)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    text = card_markdown(card)
    if card.get("trust"):
        from digit_predictor.ml.trust_card import trust_markdown

        text += "\n" + trust_markdown(card["trust"]) + "\n"
    if (out_dir / EXAMPLES_PNG).is_file():
        text += (
            "## What the model sees\n\nPen-drawn canvas digits, the plain resize, and the "
            "MNIST-faithful preprocessing, with the model's answers "
            f"(`python scripts/plot_preprocessing.py`):\n\n![examples]({EXAMPLES_PNG})\n"
        )
    (out_dir / CARD_MD).write_text(text, encoding="utf-8")


def _threads(count: Any) -> str:
    return f"{count} thread" + ("" if count == 1 else "s")


def _pct(value: Any) -> str:
    return f"{100.0 * float(value):.2f}%" if isinstance(value, int | float) else "n/a"


def target_status(row: dict[str, Any], missed: str = "**missed**") -> str:
    """ ">= 99.00%: met" for a benchmark row with an acceptance target; "" without one."""
    target = row.get("target")
    if not isinstance(target, int | float):
        return ""
    return f">= {_pct(target)}: " + ("met" if row["accuracy"] >= target else missed)


def card_markdown(card: dict[str, Any]) -> str:
    metrics: dict[str, Any] = card.get("metrics", {})
    lines = [
        f"# Model card: {card['version']}",
        "",
        f"- Architecture: `{card['architecture']}` ({card['parameter_count']:,} parameters, "
        f"{card.get('weights_bytes', 0) / 1e6:.2f} MB weights)",
        f"- Trained with: `{card.get('command', '')}`",
        f"- Training time: {card.get('training_seconds', 0.0) / 60:.1f} min (the training loop; "
        f"preparing the extra data adds a minute or two) on {card.get('device', 'cpu')} with "
        f"{_threads(card.get('torch_threads'))}, torch {card.get('torch_version', '?')}",
        f"- Input: {card.get('input', '')}",
        "- Evaluated with: `"
        + card.get("evaluation_command", "python -m digit_predictor.ml.evaluate")
        + "`"
        + ("" if "evaluation_command" in card else " (also run at the end of training)"),
        "",
        "## Results",
        "",
        BENCHMARKS_EXPLAINED,
        "",
        "| benchmark | accuracy | n | target |",
        "| --- | ---: | ---: | --- |",
    ]
    for row in metrics.get("benchmarks", []):
        status = target_status(row)
        lines.append(f"| {row['name']} | {_pct(row['accuracy'])} | {row['n']} | {status} |")
    if "inference_ms_per_image" in metrics:
        lines += [
            "",
            f"Inference: {metrics['inference_ms_per_image']:.2f} ms per image on CPU "
            "(batch of 1, one thread, median, in-process).",
        ]
    per_digit = metrics.get("mnist_test_per_digit")
    if per_digit:
        lines += [
            "",
            "MNIST test accuracy per digit:",
            "",
            "| " + " | ".join(str(d) for d in range(10)) + " |",
            "|" + " ---: |" * 10,
            "| " + " | ".join(_pct(a) for a in per_digit) + " |",
        ]
    confusion = metrics.get("mnist_test_confusion")
    if confusion:
        lines += [
            "",
            "MNIST test confusion matrix (rows: true digit, columns: predicted):",
            "",
            "| true \\ pred | " + " | ".join(str(d) for d in range(10)) + " |",
            "| --- |" + " ---: |" * 10,
        ]
        for digit, row in enumerate(confusion):
            lines.append(f"| {digit} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "## Training data", ""]
    for note in card.get("data_notes", []):
        lines.append(f"- {note}")
    lines += ["", "MNIST files (md5 verified before training):", ""]
    for name, md5 in card.get("data_md5", {}).items():
        lines.append(f"- `{name}`: `{md5}`")
    lines += ["", "## Training configuration", "", "```json"]
    lines.append(json.dumps(card.get("config", {}), indent=2))
    lines += ["```", ""]
    if card.get("training_curve"):
        lines += ["## Training curve", "", f"![training curve]({card['training_curve']})", ""]
    return "\n".join(lines)


def plot_curve(history: list[dict[str, float]], path: Path) -> bool:
    """Loss and accuracy per epoch as a PNG; skipped (False) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.plot(
        epochs, [100 * h["train_acc"] for h in history], marker="o", label="train (augmented)"
    )
    ax_acc.plot(epochs, [100 * h["val_acc"] for h in history], marker="o", label="validation")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="%")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def graph_beside(weights_path: Path, onnx_sha256: str | None) -> bytes | None:
    """The ONNX graph beside a weights file when it is the one their card names; None when it
    is missing or left from other weights (whoever serves them then exports a new one)."""
    path = weights_path.with_name(GRAPH_NAME)
    if not path.is_file():
        return None
    graph = path.read_bytes()
    return graph if hashlib.sha256(graph).hexdigest() == onnx_sha256 else None
