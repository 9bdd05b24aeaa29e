import math

import pytest
import torch

from medtl.adapt.grl import GradientReversalLayer, reverse_gradient, warm_start_coefficient


@pytest.mark.parametrize("coeff", [0.0, 0.3, 1.0, 2.5])
def test_gradient_is_minus_coeff_times_incoming(coeff):
    torch.manual_seed(0)
    x = torch.randn(4, 3, requires_grad=True)
    g = torch.randn(4, 3)
    y = reverse_gradient(x, coeff)
    assert torch.equal(y, x)
    y.backward(g)
    torch.testing.assert_close(x.grad, -coeff * g)


def test_layer_follows_warm_start_schedule():
    grl = GradientReversalLayer(max_coeff=0.5, gamma=10.0)
    assert grl.coeff == 0.0
    for p in (0.0, 0.1, 0.5, 1.0):
        expected = 0.5 * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)
        assert grl.set_progress(p) == pytest.approx(expected)
        x = torch.ones(2, 2, requires_grad=True)
        grl(x).sum().backward()
        torch.testing.assert_close(x.grad, torch.full((2, 2), -expected))


def test_schedule_values_and_fixed_mode():
    assert warm_start_coefficient(0.0) == 0.0
    assert warm_start_coefficient(1.0) == pytest.approx(1.0, abs=1e-4)
    assert warm_start_coefficient(2.0) == warm_start_coefficient(1.0)  # clamped progress
    values = [warm_start_coefficient(p / 10) for p in range(11)]
    assert values == sorted(values)
    fixed = GradientReversalLayer(max_coeff=0.7, schedule=False)
    assert fixed.set_progress(0.0) == 0.7
