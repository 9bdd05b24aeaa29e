"""Calibration: binned reliability, ECE/MCE, Brier score, and temperature scaling.

What is binned: for binary tasks the positive-class probability against the observed positive
rate (the reliability diagram clinicians read); for multiclass tasks the top-label confidence
against top-label accuracy (Guo et al., 2017). Bins are ``n_bins`` equal-width intervals
``[k/n_bins, (k+1)/n_bins)`` on [0, 1], the last one closed.

Weights follow metrics.py: None, a vector, or a (B, n) matrix of bootstrap counts.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from medtl.evaluation.metrics import _div, _out, _weights

DEFAULT_BINS = 15
_EPS = 1e-12


def confidence_and_outcome(probs, y_true) -> tuple[np.ndarray, np.ndarray]:
    """The binned quantity and its 0/1 outcome (see the module note)."""
    P = np.asarray(probs, dtype=float)
    y = np.asarray(y_true, dtype=int)
    if P.shape[1] == 2:
        return P[:, 1], (y == 1).astype(float)
    return P.max(axis=1), (P.argmax(axis=1) == y).astype(float)


def _bin_sums(conf, outcome, n_bins, W):
    idx = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    onehot = np.zeros((len(conf), n_bins))
    onehot[np.arange(len(conf)), idx] = 1.0
    return W @ onehot, W @ (onehot * conf[:, None]), W @ (onehot * outcome[:, None])


def reliability(probs, y_true, n_bins: int = DEFAULT_BINS) -> dict:
    """Per-bin count, mean confidence and observed rate (None for empty bins), for a diagram."""
    conf, outcome = confidence_and_outcome(probs, y_true)
    cnt, cs, os_ = (a[0] for a in _bin_sums(conf, outcome, n_bins, np.ones((1, len(conf)))))
    mean_conf, rate = _div(cs, cnt), _div(os_, cnt)
    none = lambda a: [None if np.isnan(v) else float(v) for v in a]  # noqa: E731
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "count": cnt.astype(int).tolist(),
        "confidence": none(mean_conf),
        "observed": none(rate),
    }


def calibration_errors(probs, y_true, n_bins: int = DEFAULT_BINS, weights=None) -> dict:
    """``{"ece": ..., "mce": ...}`` (floats, or (B,) arrays with a weights matrix)."""
    conf, outcome = confidence_and_outcome(probs, y_true)
    W, batched = _weights(weights, len(conf))
    cnt, cs, os_ = _bin_sums(conf, outcome, n_bins, W)
    gap = np.abs(os_ - cs)  # n_b * |acc_b - conf_b|
    ece = _div(gap.sum(axis=1), cnt.sum(axis=1))
    per_bin = np.where(cnt > 0, _div(gap, cnt), -np.inf)
    mce = per_bin.max(axis=1)
    mce[np.isinf(mce)] = np.nan
    return {"ece": _out(ece, batched), "mce": _out(mce, batched)}


def expected_calibration_error(probs, y_true, n_bins: int = DEFAULT_BINS, weights=None):
    return calibration_errors(probs, y_true, n_bins, weights)["ece"]


def maximum_calibration_error(probs, y_true, n_bins: int = DEFAULT_BINS, weights=None):
    return calibration_errors(probs, y_true, n_bins, weights)["mce"]


def brier_score(probs, y_true, weights=None):
    """Binary: mean (p - y)^2 of the positive class; multiclass: mean sum_k (p_k - y_k)^2 (as scikit-learn)."""
    P = np.asarray(probs, dtype=float)
    y = np.asarray(y_true, dtype=int)
    W, batched = _weights(weights, len(y))
    if P.shape[1] == 2:
        err = (P[:, 1] - (y == 1)) ** 2
    else:
        err = ((P - np.eye(P.shape[1])[y]) ** 2).sum(axis=1)
    return _out(_div(W @ err, W.sum(axis=1)), batched)


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """Softmax of log-probabilities divided by ``temperature`` (log p are logits up to a constant)."""
    z = np.log(np.clip(np.asarray(probs, dtype=float), _EPS, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs, y_true) -> float:
    """The temperature minimising the negative log-likelihood of (validation) labels."""
    logp = np.log(np.clip(np.asarray(probs, dtype=float), _EPS, 1.0))
    y = np.asarray(y_true, dtype=int)

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())

    # Search log T so the bound is symmetric: T from 1/20 to 20.
    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))
