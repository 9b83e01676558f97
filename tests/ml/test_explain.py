"""Integrated gradients (digit_predictor.ml.explain) on models whose attributions are known."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from digit_predictor.ml import explain
from digit_predictor.ml.models import build_model
from digit_predictor.ml.preprocess import preprocess_bytes, to_model_tensor
from tests.web.drawings import SEVEN, canvas_png


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
