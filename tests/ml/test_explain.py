"""Integrated gradients (digit_predictor.ml.explain) on models whose attributions are known."""

from __future__ import annotations

import gc
import io
import weakref

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.ml import explain
from digit_predictor.ml.inference import Classifier
from digit_predictor.ml.models import build_model
from digit_predictor.ml.preprocess import preprocess_bytes, to_model_tensor
from digit_predictor.ml.synthetic_digits import pen_digit, to_png
from tests.web.drawings import ONE, SEVEN, canvas_png


class Linear(nn.Module):
    """logit_d = <w_d, x> + b_d: integrated gradients is exactly w_d * (x - baseline)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x.flatten(1))
        return out


class Smooth(nn.Module):
    """A smooth non-linear model: the quadrature converges fast, so completeness is tight."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Tanh(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def seven() -> torch.Tensor:
    tensor: torch.Tensor = preprocess_bytes(canvas_png(SEVEN)).tensor.unsqueeze(0)
    return tensor


@pytest.mark.parametrize("steps", [1, 4, 32])
def test_linear_model_attributions_are_exact_at_any_step_count(steps: int) -> None:
    model = Linear().eval()
    x = seven()
    result = explain.integrated_gradients(model, x, 7, steps=steps)
    expected = (model.fc.weight[7].view(28, 28) * (x - explain.black_baseline())[0, 0]).detach()
    np.testing.assert_allclose(result.values, expected.double().numpy(), rtol=1e-5, atol=1e-6)
    assert abs(result.convergence_delta) < 1e-4
    assert result.logit == pytest.approx(float(model(x).detach()[0, 7]), abs=1e-5)


def test_smooth_model_is_complete_and_converges() -> None:
    model = Smooth().eval()
    x = seven()
    coarse = explain.integrated_gradients(model, x, 3, steps=8)
    fine = explain.integrated_gradients(model, x, 3, steps=64)
    reference = explain.integrated_gradients(model, x, 3, steps=explain.MAX_STEPS)
    scale = abs(reference.logit - reference.baseline_logit)
    assert abs(fine.convergence_delta) < 1e-3 * scale
    error_fine = np.abs(fine.values - reference.values).sum()
    error_coarse = np.abs(coarse.values - reference.values).sum()
    assert error_fine < error_coarse


def test_the_shipped_architecture_black_pixels_get_nothing_and_parameters_are_untouched() -> None:
    torch.manual_seed(0)
    model = build_model("bn_cnn_wide").eval()
    pre = preprocess_bytes(canvas_png(SEVEN))
    result = explain.explain(model, pre, 7)
    values = result.attribution.values
    assert values.shape == (28, 28)
    assert (values[pre.image == 0] == 0).all()
    assert np.abs(values[pre.image > 0]).sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert result.attribution.steps == explain.DEFAULT_STEPS
    probabilities = torch.softmax(model(pre.tensor.unsqueeze(0)).detach().double(), dim=1)[0]
    assert result.attribution.probability == pytest.approx(float(probabilities[7]), abs=1e-6)


def test_works_inside_no_grad_and_refuses_bad_arguments() -> None:
    model = Smooth().eval()
    with torch.no_grad():  # a caller's no-grad context must not zero the gradients
        inside = explain.integrated_gradients(model, seven(), 1, steps=8)
    outside = explain.integrated_gradients(model, seven(), 1, steps=8)
    np.testing.assert_array_equal(inside.values, outside.values)
    with pytest.raises(ValueError, match="digit"):
        explain.integrated_gradients(model, seven(), 10)
    with pytest.raises(ValueError, match="steps"):
        explain.integrated_gradients(model, seven(), 1, steps=0)
    with pytest.raises(ValueError, match="shape"):
        explain.integrated_gradients(model, torch.zeros(2, 1, 28, 28), 1)
    with pytest.raises(ValueError, match="eval"):
        explain.integrated_gradients(Smooth().train(), seven(), 1)


def test_black_baseline_is_an_empty_field() -> None:
    expected = to_model_tensor(np.zeros((28, 28), dtype=np.uint8))
    assert torch.equal(explain.black_baseline()[0], expected)


def test_overlay_colours_for_red_against_blue_and_keeps_black_black() -> None:
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:24, 8:12] = 255  # a stroke on the left ...
    image[4:24, 18:22] = 255  # ... and one on the right
    values = np.zeros((28, 28))
    values[4:24, 8:12] = 1.0  # left: for the digit
    values[4:24, 18:22] = -1.0  # right: against it
    png = explain.overlay_png(image, values, scale=3)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert pixels.shape == (84, 84, 3)
    left, right = pixels[14 * 3, 10 * 3], pixels[14 * 3, 20 * 3]
    assert left[0] > 200 and left[2] < 100  # red
    assert right[2] > 200 and right[0] < 100  # blue
    assert (pixels[0:6, 0:6] == 0).all()  # far from any ink: untouched black
    blank = explain.overlay_png(image, np.zeros((28, 28)), scale=1)
    grey = np.asarray(Image.open(io.BytesIO(blank)).convert("RGB")).astype(int)
    assert grey[10, 10, 0] == grey[10, 10, 2] == round(255 * explain.INPUT_BRIGHTNESS)
    with pytest.raises(ValueError, match="scale"):
        explain.overlay_png(image, values, scale=0)


@pytest.mark.parametrize("steps", [1, 2, 7, 16, 33])
def test_quadrature_weights_sum_to_one_and_integrate_each_panel_exactly(steps: int) -> None:
    nodes, weights = explain.quadrature(steps)
    assert nodes.shape == weights.shape == (steps,)
    assert ((nodes > 0) & (nodes < 1)).all() and (weights > 0).all()
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    if steps >= 2:
        assert (nodes < explain.SPLIT).sum() == steps // 2
    # Two or more Gauss-Legendre points on each panel integrate a cubic exactly.
    if steps >= 4:
        assert (weights * (nodes**3 - nodes)).sum() == pytest.approx(0.25 - 0.5, abs=1e-12)


def test_prepared_model_computes_the_same_function_and_leaves_the_served_one_alone() -> None:
    torch.manual_seed(0)
    model = build_model("bn_cnn_wide")
    # Non-trivial batch-norm statistics, as after training (fresh ones are the identity).
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ready = explain.PreparedModel(model)
    assert ready.folded
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ready.net.modules())
    x = torch.cat([seven(), preprocess_bytes(canvas_png(ONE)).tensor.unsqueeze(0)])
    with torch.inference_mode():
        torch.testing.assert_close(ready.net(x), model(x), atol=1e-4, rtol=1e-4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())  # the served model is untouched
    folded = explain.integrated_gradients(ready, seven(), 7)
    plain = explain.integrated_gradients(model, seven(), 7)
    np.testing.assert_allclose(folded.values, plain.values, atol=1e-3)
    assert folded.baseline_logit == pytest.approx(plain.baseline_logit, abs=1e-6)
    assert explain.prepared(model) is explain.prepared(model)  # made once per served model


def test_a_prepared_copy_does_not_keep_a_swapped_out_model_alive() -> None:
    model = Smooth().eval()
    explain.prepared(model)
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None


def _reference(model: nn.Module, x: torch.Tensor, digit: int, points: int = 160) -> np.ndarray:
    """Integrated gradients by the midpoint rule on 2 x `points` points, denser near the
    baseline: independent of the served rule (other points, the unfolded model)."""
    near = (torch.arange(points) + 0.5) / points * explain.SPLIT
    far = explain.SPLIT + (torch.arange(points) + 0.5) / points * (1 - explain.SPLIT)
    widths = torch.cat(
        [
            torch.full((points,), explain.SPLIT / points),
            torch.full((points,), (1 - explain.SPLIT) / points),
        ]
    ).double()
    base = explain.black_baseline()
    total = torch.zeros(28, 28, dtype=torch.float64)
    for alphas, w in zip(
        torch.split(torch.cat([near, far]), 128), torch.split(widths, 128), strict=True
    ):
        path = (base + alphas.view(-1, 1, 1, 1) * (x - base)).requires_grad_(True)
        (grads,) = torch.autograd.grad(model(path)[:, digit].sum(), path)
        total += (grads[:, 0].double() * w.view(-1, 1, 1)).sum(dim=0)
    values: np.ndarray = ((x - base)[0, 0].double() * total).numpy()
    return values


def _faithful(values: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(correlation, relative L1 distance) of a map to the reference map."""
    correlation = float(np.corrcoef(values.ravel(), reference.ravel())[0, 1])
    return correlation, float(np.abs(values - reference).sum() / np.abs(reference).sum())


def test_served_attributions_agree_with_a_fine_reference_and_are_nearly_complete() -> None:
    """The shipped model on canvas and pen drawings: the fast default (16 points, folded model)
    against 320 points on the plain model. A 2-point rule fails the same checks: they bite."""
    model = Classifier.load(DEFAULT_MODEL_PATH).model
    ready = explain.prepared(model)
    rng = np.random.default_rng(5)
    pngs = [canvas_png(SEVEN), canvas_png(ONE), to_png(pen_digit(4, rng), "alpha")]
    for png in pngs:
        x = preprocess_bytes(png).tensor.unsqueeze(0)
        served = explain.integrated_gradients(ready, x, 0)
        digit = int(np.argmax(served.input_logits))
        served = explain.integrated_gradients(ready, x, digit)
        reference = _reference(model, x, digit)
        correlation, distance = _faithful(served.values, reference)
        assert correlation > 0.95 and distance < 0.3, (digit, correlation, distance)
        # Completeness: the map accounts for the logit's change up to a small part of its mass.
        mass = np.abs(served.values).sum()
        assert abs(served.convergence_delta) < 0.1 * mass, (served.convergence_delta, mass)
        assert abs(reference.sum() - (served.logit - served.baseline_logit)) < 0.02 * mass

        crude = explain.integrated_gradients(ready, x, digit, steps=2)
        crude_correlation, crude_distance = _faithful(crude.values, reference)
        assert crude_correlation < 0.95 or crude_distance > 0.3
