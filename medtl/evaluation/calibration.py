"""Calibration: binned reliability, ECE/MCE, Brier score, and temperature scaling.

What is binned: for binary tasks the positive-class probability against the observed positive
rate (the reliability diagram clinicians read); for multiclass tasks the top-label confidence
against top-label accuracy (Guo et al., 2017). Bins are ``n_bins`` equal-width intervals
``[k/n_bins, (k+1)/n_bins)`` on [0, 1], the last one closed.

Weights follow metrics.py: None, a vector, or a (B, n) matrix of bootstrap counts. Inputs are
checked by metrics.py's shared helpers (finite probabilities in [0, 1], class-index labels).

Temperature scaling (Guo et al., 2017) divides the model's logits by T. When the logits are known
they are used; otherwise log-probabilities stand in for them (equal up to a per-case constant, which
softmax ignores), but probabilities of saturated models round to 0 and are clipped, which flattens
the large logit gaps and biases T low, so pass ``logits`` where the predictions table has them.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import minimize_scalar

from medtl.errors import MedtlError
from medtl.evaluation.metrics import as_weights, check_class_labels, check_probs, safe_div, unbatch

DEFAULT_BINS = 15
_EPS = 1e-12
LOG_T_BOUND = 3.0  # T is searched in [e^-3, e^3] = [0.05, 20]


def confidence_and_outcome(probs, y_true) -> tuple[np.ndarray, np.ndarray]:
    """The binned quantity and its 0/1 outcome (see the module note)."""
    P = check_probs(probs)
    y = check_class_labels(y_true, P.shape[1], n=len(P))
    if P.shape[1] == 2:
        return P[:, 1], (y == 1).astype(float)
    return P.max(axis=1), (P.argmax(axis=1) == y).astype(float)


def _check_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise MedtlError(f"must be a positive integer, got {n_bins!r}", "n_bins")
    return int(n_bins)


def _bin_sums(conf, outcome, n_bins, W):
    idx = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    onehot = np.zeros((len(conf), n_bins))
    onehot[np.arange(len(conf)), idx] = 1.0
    return W @ onehot, W @ (onehot * conf[:, None]), W @ (onehot * outcome[:, None])


def reliability(probs, y_true, n_bins: int = DEFAULT_BINS) -> dict:
    """Per-bin count, mean confidence and observed rate (None for empty bins), for a diagram."""
    n_bins = _check_bins(n_bins)
    conf, outcome = confidence_and_outcome(probs, y_true)
    cnt, cs, os_ = (a[0] for a in _bin_sums(conf, outcome, n_bins, np.ones((1, len(conf)))))
    mean_conf, rate = safe_div(cs, cnt), safe_div(os_, cnt)
    none = lambda a: [None if np.isnan(v) else float(v) for v in a]  # noqa: E731
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "count": cnt.astype(int).tolist(),
        "confidence": none(mean_conf),
        "observed": none(rate),
    }


def calibration_errors(probs, y_true, n_bins: int = DEFAULT_BINS, weights=None) -> dict:
    """``{"ece": ..., "mce": ...}`` (floats, or (B,) arrays with a weights matrix)."""
    n_bins = _check_bins(n_bins)
    conf, outcome = confidence_and_outcome(probs, y_true)
    W, batched = as_weights(weights, len(conf))
    cnt, cs, os_ = _bin_sums(conf, outcome, n_bins, W)
    gap = np.abs(os_ - cs)  # n_b * |acc_b - conf_b|
    ece = safe_div(gap.sum(axis=1), cnt.sum(axis=1))
    per_bin = np.where(cnt > 0, safe_div(gap, cnt), -np.inf)
    mce = per_bin.max(axis=1)
    mce[np.isinf(mce)] = np.nan
    return {"ece": unbatch(ece, batched), "mce": unbatch(mce, batched)}


def expected_calibration_error(probs, y_true, n_bins: int = DEFAULT_BINS, weights=None):
    return calibration_errors(probs, y_true, n_bins, weights)["ece"]


def maximum_calibration_error(probs, y_true, n_bins: int = DEFAULT_BINS, weights=None):
    return calibration_errors(probs, y_true, n_bins, weights)["mce"]


def brier_score(probs, y_true, weights=None):
    """Binary: mean (p - y)^2 of the positive class; multiclass: mean sum_k (p_k - y_k)^2 (as scikit-learn)."""
    P = check_probs(probs)
    y = check_class_labels(y_true, P.shape[1], n=len(P))
    W, batched = as_weights(weights, len(y))
    if P.shape[1] == 2:
        err = (P[:, 1] - (y == 1)) ** 2
    else:
        err = ((P - np.eye(P.shape[1])[y]) ** 2).sum(axis=1)
    return unbatch(safe_div(W @ err, W.sum(axis=1)), batched)


def _check_logits(logits, n: int, k: int, name: str = "logits") -> np.ndarray:
    from medtl.evaluation.metrics import as_float, first_bad

    z = as_float(logits, name)
    if z.shape != (n, k):
        raise MedtlError(f"must be one logit per class and case, shape ({n}, {k}); got {z.shape}", name)
    bad = ~np.isfinite(z)
    if bad.any():
        raise MedtlError(f"NaN or infinite logits for the cases at index {first_bad(bad)}", name)
    return z


def _scaled_inputs(probs, logits) -> np.ndarray:
    """The logits to divide by T: ``logits`` when given, else clipped log-probabilities."""
    P = check_probs(probs)
    if logits is not None:
        return _check_logits(logits, *P.shape)
    return np.log(np.clip(P, _EPS, 1.0))


def _check_temperature(temperature) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError) as err:
        raise MedtlError(f"must be a number, got {temperature!r}", "temperature") from err
    if not np.isfinite(t) or t <= 0:
        raise MedtlError(f"must be a finite number > 0, got {temperature!r}", "temperature")
    return t


def apply_temperature(probs, temperature: float, logits=None) -> np.ndarray:
    """Softmax of the logits divided by ``temperature``.

    ``logits`` (n, K), when given, are the model's logits for ``probs``; without them
    log-probabilities are used (logits up to a per-case constant)."""
    t = _check_temperature(temperature)
    z = _scaled_inputs(probs, logits) / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def temperature_at_bound(temperature: float) -> bool:
    """Whether a fitted T sits at the edge of the search range (the optimum may lie beyond it)."""
    return abs(abs(np.log(temperature)) - LOG_T_BOUND) < 1e-3


def fit_temperature(probs, y_true, logits=None) -> float:
    """The temperature minimising the negative log-likelihood of (validation) labels.

    ``logits`` (n, K): the model's logits for ``probs``; use them when available (see the module
    note). Warns when T ends at its bound [e^-3, e^3], where the NLL may still be falling."""
    z0 = _scaled_inputs(probs, logits)
    y = check_class_labels(y_true, z0.shape[1], n=len(z0))

    def nll(log_t: float) -> float:
        z = z0 / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())

    # Search log T so the bound is symmetric.
    res = minimize_scalar(nll, bounds=(-LOG_T_BOUND, LOG_T_BOUND), method="bounded", options={"xatol": 1e-5})
    t = float(np.exp(res.x))
    if temperature_at_bound(t):
        warnings.warn(f"fitted temperature {t:.3g} is at the bound of its search range "
                      f"[{np.exp(-LOG_T_BOUND):.3g}, {np.exp(LOG_T_BOUND):.3g}]: the best T may lie beyond it"
                      + ("" if logits is not None else "; fitting on logits instead of probabilities may help"),
                      RuntimeWarning, stacklevel=2)  # fmt: skip
    return t
