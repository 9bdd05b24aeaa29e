"""ECE / MCE / Brier / temperature scaling on simulated data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss

from medtl.evaluation.calibration import (
    apply_temperature,
    brier_score,
    calibration_errors,
    expected_calibration_error,
    fit_temperature,
    reliability,
)


def test_ece_of_perfectly_calibrated_probabilities_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, 20000) < p).astype(int)  # y ~ Bernoulli(p): calibrated by construction
    assert expected_calibration_error(np.c_[1 - p, p], y) < 0.02
    # Multiclass: labels drawn from the predicted distribution.
    P = rng.dirichlet([1, 1, 1], 20000)
    y3 = (rng.uniform(size=(20000, 1)) > P.cumsum(axis=1)).sum(axis=1)
    assert expected_calibration_error(P, y3) < 0.02
    # An over-confident model is visibly off.
    assert expected_calibration_error(np.c_[1 - p, p] ** 3 / (p**3 + (1 - p) ** 3)[:, None], y) > 0.05


def test_ece_and_mce_by_hand():
    # Two bins used (n_bins=2): [0, .5) holds p=.2,.4 (mean .3, 1 positive of 2 -> gap .2);
    # [.5, 1] holds p=.6,.8,1.0 (mean .8, 3 of 3 -> gap .2)... make the second gap differ:
    p = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    y = np.array([1, 0, 1, 1, 0])
    e = calibration_errors(np.c_[1 - p, p], y, n_bins=2)
    gap1, gap2 = abs(0.5 - 0.3), abs(2 / 3 - 0.8)
    assert e["ece"] == pytest.approx((2 * gap1 + 3 * gap2) / 5)
    assert e["mce"] == pytest.approx(max(gap1, gap2))
    r = reliability(np.c_[1 - p, p], y, n_bins=2)
    assert r["count"] == [2, 3] and r["observed"][0] == pytest.approx(0.5)


def test_brier_equals_sklearn():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=100)
    y = rng.integers(0, 2, 100)
    assert brier_score(np.c_[1 - p, p], y) == pytest.approx(brier_score_loss(y, p))
    P = rng.dirichlet([1, 1, 1], 100)
    y3 = rng.integers(0, 3, 100)
    assert brier_score(P, y3) == pytest.approx(brier_score_loss(y3, P))


def test_temperature_scaling_recovers_known_temperature():
    rng = np.random.default_rng(2)
    n, K = 5000, 3
    logits = rng.normal(0, 1.5, size=(n, K))
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = (rng.uniform(size=(n, 1)) > true.cumsum(axis=1)).sum(axis=1)
    over = apply_temperature(true, 1 / 2.5)  # logits x 2.5: over-confident
    T = fit_temperature(over[:2500], y[:2500])  # fit on "validation"
    assert T == pytest.approx(2.5, rel=0.1)
    fixed = apply_temperature(over[2500:], T)  # apply to "test"
    assert expected_calibration_error(fixed, y[2500:]) < expected_calibration_error(over[2500:], y[2500:]) / 2
    np.testing.assert_allclose(apply_temperature(true, 1.0), true, atol=1e-9)
