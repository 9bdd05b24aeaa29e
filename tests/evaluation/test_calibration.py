"""ECE / MCE / Brier / temperature scaling on simulated data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss

from medtl.errors import MedtlError
from medtl.evaluation.calibration import (
    apply_temperature,
    brier_score,
    calibration_errors,
    expected_calibration_error,
    fit_temperature,
    reliability,
    temperature_at_bound,
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


def _saturated(seed, K, n=10000, T=10.0):
    """A model whose logits are T times the calibrated ones: many probabilities round to 0 or 1."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 2.5, size=(n, K))
    true = np.exp(base) / np.exp(base).sum(axis=1, keepdims=True)
    y = (rng.uniform(size=(n, 1)) > true.cumsum(axis=1)).sum(axis=1)
    logits = T * base
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    return P / P.sum(axis=1, keepdims=True), logits, y


@pytest.mark.parametrize("K", [2, 3])
def test_temperature_of_a_saturated_model_is_recovered_from_logits(K):
    P, logits, y = _saturated(0, K)
    assert (P.max(axis=1) > 1 - 1e-12).mean() > 0.2  # saturated: clipping at 1e-12 bites
    assert fit_temperature(P, y, logits=logits) == pytest.approx(10.0, rel=0.03)
    assert fit_temperature(P, y) < 9.0  # from clipped probabilities: biased low (the fallback)
    # With logits, scaling by the fitted T gives back the calibrated probabilities.
    T = fit_temperature(P, y, logits=logits)
    base = logits / 10.0
    true = np.exp(base) / np.exp(base).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(apply_temperature(P, 10.0, logits=logits), true, atol=1e-9)
    assert expected_calibration_error(apply_temperature(P, T, logits=logits), y) < 0.02


def test_temperature_at_its_bound_warns():
    P, logits, y = _saturated(1, 3, n=3000, T=100.0)
    with pytest.warns(RuntimeWarning, match="bound"):
        T = fit_temperature(P, y, logits=logits)
    assert temperature_at_bound(T) and T == pytest.approx(np.exp(3.0), rel=1e-3)
    import warnings

    P, logits, y = _saturated(2, 3, n=3000, T=4.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an interior optimum must not warn
        assert not temperature_at_bound(fit_temperature(P, y, logits=logits))


def test_calibration_refuses_what_it_cannot_score():
    p = np.array([0.2, 0.4, 0.6, 0.8])
    P, y = np.c_[1 - p, p], np.array([0, 1, 0, 1])
    bad = P.copy()
    bad[1] = [np.nan, np.nan]
    for fn in (expected_calibration_error, calibration_errors, brier_score, reliability, fit_temperature):
        with pytest.raises(MedtlError, match="probs.*NaN"):
            fn(bad, y)
        with pytest.raises(MedtlError, match="y_true.*class indices"):
            fn(P, np.array(["a", "b", "a", "b"]))
        with pytest.raises(MedtlError, match="y_true.*class indices"):
            fn(P, np.array([-1, 1, -1, 1]))
    with pytest.raises(MedtlError, match="probs.*outside"):
        expected_calibration_error(np.c_[-p, 1 + p], y)  # logits passed as probabilities
    with pytest.raises(MedtlError, match="probs.*infinite"):
        brier_score(np.c_[1 - p, [0.1, np.inf, 0.2, 0.3]], y)
    with pytest.raises(MedtlError, match="logits.*NaN"):
        fit_temperature(P, y, logits=np.c_[[0.0, np.nan, 0, 0], np.zeros(4)])
    with pytest.raises(MedtlError, match="logits.*shape"):
        apply_temperature(P, 2.0, logits=np.zeros((4, 1)))
    with pytest.raises(MedtlError, match="temperature"):
        apply_temperature(P, 0.0)
    with pytest.raises(MedtlError, match="n_bins"):
        calibration_errors(P, y, n_bins=0)


def test_evaluation_fits_the_temperature_on_logit_columns_when_the_table_has_them():
    import pandas as pd

    from medtl.evaluation.evaluate import evaluate_predictions
    from medtl.evaluation.predictions import predictions_from_arrays

    P, logits, y = _saturated(3, 3, n=8000)
    val, test = slice(0, 6000), slice(6000, None)

    def table(with_logits):
        parts = [predictions_from_arrays([f"{s}{i}" for i in range(len(y[sl]))], y[sl], P[sl], split=s,
                                         logits=logits[sl] if with_logits else None, run_id="r")
                 for s, sl in (("val", val), ("test", test))]  # fmt: skip
        return pd.concat(parts, ignore_index=True)

    def calibration(with_logits):
        report = evaluate_predictions(table(with_logits), n_boot=0)
        (run,) = [r for t in report["tasks"].values() for s in t["strategies"].values() for r in s["runs"]]
        return run["calibration"]

    c = calibration(True)
    assert c["temperature_fitted_to"] == "logits" and c["temperature"] == pytest.approx(10.0, rel=0.05)
    assert c["temperature"] == pytest.approx(fit_temperature(P[val], y[val], logits=logits[val]))
    c = calibration(False)  # no logit columns: log-probabilities as before
    assert c["temperature_fitted_to"] == "log-probabilities"
    assert c["temperature"] == pytest.approx(fit_temperature(P[val], y[val]))
