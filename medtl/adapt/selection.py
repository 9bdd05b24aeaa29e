"""Choosing a checkpoint without target labels.

Pure functions on arrays (probabilities ``(N, K)``, labels ``(N,)``, features ``(N, F)``), one per
selector, listed in :data:`SELECTORS`. Training logs every one each epoch and the configured one picks the
checkpoint (:mod:`medtl.engine.selection`).

- ``source_accuracy``: accuracy on held-out labelled source data (ignores the shift).
- ``dev``: deep embedded validation (You et al. 2019): source validation loss importance-weighted by
  the target/source density ratio of a domain classifier, with the control variate that cuts its
  variance. Lower is better.
- ``entropy``: mean prediction entropy on the target (lower is better; rewards confidence, and is
  fooled by a model that is confidently wrong or collapsed).
- ``infomax``: information maximisation ``H(mean p) - mean H(p)`` (higher is better; confident and
  diverse predictions, which guards against collapse onto one class).
- ``snd``: soft neighbourhood density (Saito et al. 2021): mean entropy of each target point's
  softmax similarity to the other target points' predictions (higher is better: dense clusters).
  Like entropy it can be fooled by collapse: identical predictions for every case give the maximal
  value ``log(N - 1)``, so read it beside ``infomax`` or the predicted class balance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medtl.errors import MedtlError

_EPS = 1e-12


def _probs(p: Any, what: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise MedtlError(f"{what} must be a non-empty (N, K>=2) probability array, got shape {p.shape}", what)
    if not np.all(np.isfinite(p)) or p.min() < -1e-6 or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise MedtlError(f"{what} rows must be probabilities (non-negative, summing to 1)", what)
    return np.clip(p, 0.0, 1.0)


def _labels(y: Any, n: int, k: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise MedtlError(f"{what} must have shape ({n},), got {y.shape}", what)
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise MedtlError(f"{what} must be integer class indices", what)
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise MedtlError(f"{what} must lie in 0..{k - 1}, got values {sorted(set(y.tolist()) - set(range(k)))}", what)
    return y


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, _EPS, None))).sum(-1)


def source_accuracy(probs, labels) -> float:
    """Accuracy of ``argmax(probs)`` against ``labels`` on labelled source validation data."""
    p = _probs(probs, "source_probs")
    y = _labels(labels, p.shape[0], p.shape[1], "source_labels")
    return float((p.argmax(1) == y).mean())


def prediction_entropy(probs) -> float:
    """Mean Shannon entropy (nats) of target predictions. Lower is better."""
    return float(_entropy(_probs(probs, "target_probs")).mean())


def information_maximization(probs) -> float:
    """``H(mean prediction) - mean H(prediction)`` on the target. Higher is better."""
    p = _probs(probs, "target_probs")
    return float(_entropy(p.mean(0)) - _entropy(p).mean())


def soft_neighborhood_density(probs, temperature: float = 0.05) -> float:
    """SND (Saito et al. 2021) on target predictions. Higher is better. Near-uniform predictions (an
    untrained model) and identical ones both score the maximum, log(N - 1): read it beside InfoMax.

    Rows are L2-normalised, cosine similarities divided by ``temperature`` are soft-maxed over the
    *other* points (self excluded), and the mean entropy of those neighbourhood distributions is returned.
    """
    p = _probs(probs, "target_probs")
    if p.shape[0] < 2:
        raise MedtlError("SND needs at least 2 target rows", "target_probs")
    z = p / np.clip(np.linalg.norm(p, axis=1, keepdims=True), _EPS, None)
    s = z @ z.T / temperature
    np.fill_diagonal(s, -np.inf)
    s = s - s.max(1, keepdims=True)
    e = np.exp(s)
    nb = e / e.sum(1, keepdims=True)
    return float(_entropy(nb).mean())


# the inverse L2 strengths density_ratio chooses from (weak features and few rows want strong regularisation)
REGULARISATION = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def density_ratio(source_features, target_features, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Importance weights ``w(x) = p_target(x) / p_source(x)`` for the source rows.

    A logistic-regression domain classifier (standardised features) gives out-of-fold probabilities
    ``d(x) = P(target | x)``; ``w = (n_s / n_t) * d / (1 - d)`` corrects for the domain sizes. Its L2 strength
    is the one of ``REGULARISATION`` with the lowest out-of-fold log loss, and where none predicts the domain
    better than its share of the rows, every weight is 1 (no shift detected). At a fixed C=1 a classifier of a few
    hundred rows in 512 feature dimensions separated two draws of one distribution, and the weights, whose mean
    over the source should be 1, averaged 140 (a review measured 13.9 in a pipeline), so DEV's control variate
    ``eta * (mean(w) - 1)`` outweighed the loss it corrects.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs = np.asarray(source_features, dtype=np.float64)
    xt = np.asarray(target_features, dtype=np.float64)
    if xs.ndim != 2 or xt.ndim != 2 or xs.shape[1] != xt.shape[1]:
        raise MedtlError(
            f"source and target features must be (N, F) of one width, got {xs.shape} and {xt.shape}", "features"
        )
    n_s, n_t = len(xs), len(xt)
    folds = min(folds, n_s, n_t)
    if folds < 2:
        raise MedtlError(f"density ratio needs at least 2 rows per domain, got {n_s} and {n_t}", "features")
    x = np.concatenate([xs, xt])
    d = np.r_[np.zeros(n_s), np.ones(n_t)]
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    base_rate = np.full(len(d), n_t / (n_s + n_t))  # no shift detected: every weight 1
    best = (log_loss(d, base_rate, labels=[0, 1]), base_rate)
    for c in REGULARISATION:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
        p = cross_val_predict(clf, x, d, cv=cv, method="predict_proba")[:, 1]
        loss = log_loss(d, p, labels=[0, 1])
        if loss < best[0]:
            best = (loss, p)
    prob = np.clip(best[1][:n_s], 1e-6, 1 - 1e-6)
    return (n_s / n_t) * prob / (1 - prob)


def dev_risk(losses, weights) -> float:
    """Deep embedded validation risk (You et al. 2019), lower is better.

    ``L = w * loss``; ``eta = -Cov(L, w) / Var(w)``; risk ``= mean(L) + eta * mean(w) - eta``.
    With constant weights (no shift detected) it reduces to the plain mean loss.
    """
    loss = np.asarray(losses, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    if loss.shape != w.shape or loss.size < 2:
        raise MedtlError(f"DEV needs equal-length losses and weights (>= 2), got {loss.size} and {w.size}", "dev")
    weighted = w * loss
    var_w = w.var(ddof=1)
    eta = 0.0 if var_w < 1e-12 else -np.cov(weighted, w, ddof=1)[0, 1] / var_w
    return float(weighted.mean() + eta * w.mean() - eta)


def dev_score(source_probs, source_labels, source_features, target_features, seed: int = 0,
              diagnostics: dict | None = None) -> float:
    """DEV risk of a checkpoint from its source-validation predictions and both domains' features.

    ``diagnostics`` (a dict, filled when given): the importance weights' ``mean_weight`` (1 where the domain
    classifier is calibrated) and ``effective_share``, Kish's effective sample size over the number of source
    rows, ``(sum w)^2 / (n sum w^2)``: near 1 when the weights are even, small when a few rows carry the risk."""
    p = _probs(source_probs, "source_probs")
    y = _labels(source_labels, p.shape[0], p.shape[1], "source_labels")
    if len(np.asarray(source_features)) != len(p):
        raise MedtlError("source_features and source_probs must have one row per source case", "source_features")
    losses = -np.log(np.clip(p[np.arange(len(y)), y], _EPS, None))
    w = density_ratio(source_features, target_features, seed=seed)
    if diagnostics is not None:
        diagnostics.update(mean_weight=float(w.mean()), effective_share=float(w.sum() ** 2 / (len(w) * (w ** 2).sum())))
    return dev_risk(losses, w)


# name -> (function of a checkpoint record, keys it needs, higher_is_better, what it measures)
SELECTORS: dict[str, tuple[Callable[..., float], tuple[str, ...], bool, str]] = {
    "source_accuracy": (source_accuracy, ("source_probs", "source_labels"), True, "source validation accuracy"),
    "dev": (
        dev_score,
        ("source_probs", "source_labels", "source_features", "target_features"),
        False,
        "importance-weighted source validation loss (DEV)",
    ),
    "entropy": (prediction_entropy, ("target_probs",), False, "mean target prediction entropy"),
    "infomax": (information_maximization, ("target_probs",), True, "target information maximisation"),
    "snd": (soft_neighborhood_density, ("target_probs",), True, "soft neighbourhood density on the target"),
}
