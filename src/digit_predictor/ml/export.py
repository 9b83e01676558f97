"""A trained network -> the ONNX graph the api serves (ml/serving.py runs it without torch).

The graph is the whole answer for a batch of normalised (N, 1, 28, 28) inputs: the CNN with its
batch norms folded, and the trust head (calibrated logits, ood_score, is_digit), so the api
needs nothing else. It is made wherever weights are made (training, the trust fit, retraining:
they have torch anyway) and travels beside them: `model.onnx` next to the shipped weights, a
column of the model registry. Weights that come without a graph (a registry row from before
graphs were stored) are exported by `python -m digit_predictor.ml.export`, run as a child
process by the api so that the api's own workers never import torch.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from digit_predictor.ml.card import GRAPH_NAME
from digit_predictor.ml.inference import Classifier
from digit_predictor.ml.models import inference_copy
from digit_predictor.ml.serving import GRAPH_INPUT, GRAPH_OUTPUTS
from digit_predictor.ml.trust_head import assess

OPSET = 18


class _Served(nn.Module):
    """The network as served: inputs -> calibrated logits, ood_score, is_digit."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = inference_copy(model)  # folded batch norms, a copy: `model` is not touched

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = assess(self.net, x)
        return out.logits, out.ood_score, out.is_digit


def onnx_graph(model: nn.Module) -> bytes:
    """The serialised ONNX graph of a trained network (with its trust head); any batch size.

    The TorchScript-based exporter: the network is traced, so the trust head's "fitted or not"
    branch is decided once, by the weights being exported, as it is for every request. (The
    torch.export-based exporter cannot take that branch: it reads a buffer's value.)"""
    served = _Served(model).eval()
    example = torch.zeros(2, 1, 28, 28)
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(
            served,
            (example,),
            out,  # type: ignore[arg-type]  # the legacy exporter takes a file object too
            dynamo=False,
            opset_version=OPSET,
            input_names=[GRAPH_INPUT],
            output_names=list(GRAPH_OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in (GRAPH_INPUT, *GRAPH_OUTPUTS)},
        )
    return out.getvalue()


def write_graph(model: nn.Module, out_dir: Path) -> str:
    """Write the graph beside the weights (`model.onnx`); its sha256, for the model card."""
    graph = onnx_graph(model)
    (out_dir / GRAPH_NAME).write_bytes(graph)
    return hashlib.sha256(graph).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Export state-dict bytes (stdin) as the ONNX graph the api serves (stdout)."
    )
    parser.add_argument("--arch", required=True, help="the architecture the weights are for")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    weights = sys.stdin.buffer.read()
    classifier = Classifier.from_weights(args.arch, weights, {"version": "export"})
    sys.stdout.buffer.write(onnx_graph(classifier.model))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
