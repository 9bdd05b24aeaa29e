"""How well an encoder's features suit a labelled target task, without fine-tuning.

- :func:`logme`: LogME (You et al. 2021), the log marginal evidence of Bayesian linear regression
  from features to each one-hot label column, maximised over its two precisions, per case, averaged
  over classes. Higher is better. With no more images than features a column is often fitted with no
  noise and the evidence rises with the noise precision to a supremum, taken in closed form.
- :func:`leep`: LEEP (Nguyen et al. 2020), from the *source model's* class probabilities on the
  target images: the log-likelihood of the target labels under the empirical source-to-target label
  predictor. Always <= 0; higher is better.
- :func:`h_score`: H-score (Bao et al. 2019), ``tr(cov(f)^+ cov(E[f | y]))``: between-class
  variance relative to total variance; by default the regularised form of Ibrahim et al. 2022
  (Ledoit-Wolf covariance and the (1 - alpha) factor). In [0, classes - 1]; higher is better.

All need at least two target classes and one label per feature row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medtl.errors import MedtlError
from medtl.similarity.distances import as_features


def _class_labels(labels: Any, n: int, what: str = "target labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise MedtlError(f"need one label per row: {n} rows but labels of shape {y.shape}", what)
    if n == 0:
        raise MedtlError("empty domain: no labelled target rows", what)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise MedtlError("labels must be class values (integers or strings), not continuous", what)
        y = y.astype(np.int64)
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise MedtlError(
            f"the target has a single class ({classes[0]!r}); transferability needs at least two", what
        )
    return codes.reshape(-1)


RESIDUAL_FLOOR = 1e-12  # a squared residual this small is a fit with no noise left: beta has no finite optimum


def _logme_single(f: np.ndarray, y: np.ndarray, max_iter: int = 100, tol: float = 1e-6):
    """Evidence per case, alpha, beta for one target column ``y``: the maximum by fixed-point iteration, or the
    supremum in closed form where beta grows without bound (beta inf); None where the evidence itself does."""
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2  # non-zero eigenvalues of F^T F (min(n, d) of them; the rest are 0)
    z = u.T @ y
    y_perp2 = max(float(y @ y - z @ z), 0.0)  # part of y outside F's column space
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))
        m2 = float(np.sum((beta * s * z / (alpha + beta * sigma)) ** 2))
        res2 = float(np.sum((alpha * z / (alpha + beta * sigma)) ** 2)) + y_perp2
        new_alpha = gamma / max(m2, 1e-12)
        new_beta = (n - gamma) / max(res2, RESIDUAL_FLOOR)
        done = abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol
        beta_rising = new_beta > beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    m2 = float(np.sum((beta * s * z / (alpha + beta * sigma)) ** 2))
    res2 = float(np.sum((alpha * z / (alpha + beta * sigma)) ** 2)) + y_perp2
    logdet = float(np.sum(np.log(alpha + beta * sigma))) + (d - len(sigma)) * np.log(alpha)
    evidence = (
        0.5 * n * np.log(beta)
        + 0.5 * d * np.log(alpha)
        - 0.5 * n * np.log(2 * np.pi)
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * logdet
    )
    rank = int(np.sum(sigma > sigma.max() * 1e-12))
    in_span = float(np.sum(z[:rank] ** 2)) >= (1 - 1e-10) * float(y @ y)  # nothing of y outside F's span
    if not in_span or (res2 > RESIDUAL_FLOOR * 10 and (done or not beta_rising)):  # a maximum, as before
        return float(evidence / n), alpha, beta
    # Beta grows without bound: the column is fitted with no noise left, as happens with no more cases than
    # features (the value at the floor or at max_iter would depend on them). With F of full row rank the evidence
    # tends to a finite supremum, the noiseless limit y ~ N(0, F F^T / alpha), maximised at
    # alpha = n / y^T (F F^T)^-1 y: in closed form. Below full row rank (identical images of one label, or a
    # feature that encodes the label) with y in the span it grows without bound: undefined.
    if rank < n:
        return None, alpha, None
    m2_exact = float(np.sum(z**2 / sigma))
    a = n / m2_exact
    limit = 0.5 * n * (np.log(a) - 1 - np.log(2 * np.pi)) - 0.5 * float(np.sum(np.log(sigma)))
    return float(limit / n), a, float("inf")


def logme(features: Any, labels: Any) -> float:
    """LogME of ``features (N, F)`` for class ``labels (N,)``: mean over classes of the per-case
    maximised log evidence of a one-hot regression. Higher is better; comparable across encoders
    on one target data set."""
    f = as_features(features, "target features")
    codes = _class_labels(labels, len(f))
    if not np.any(f):  # no feature varies: the evidence's fixed point divides by zero
        raise MedtlError("every feature is zero: LogME is undefined (a dead encoder or blank images?)",
                         "target features")
    onehot = np.eye(codes.max() + 1)[codes]
    per_class = [_logme_single(f, onehot[:, k])[0] for k in range(onehot.shape[1])]
    if any(v is None for v in per_class):
        raise MedtlError(f"LogME is undefined here: a linear combination of the features reproduces "
                         f"{sum(v is None for v in per_class)} of the {len(per_class)} one-hot label columns exactly "
                         "(identical images with one label, or a feature that encodes the label), so the evidence "
                         "grows without bound", "target features")
    return float(np.mean(per_class))


def leep(source_probs: Any, labels: Any) -> float:
    """LEEP from the source model's probabilities ``(N, Z)`` over its own Z classes on the target
    images and the target labels ``(N,)`` (any label set)."""
    theta = np.asarray(source_probs, dtype=np.float64)
    if theta.ndim != 2 or theta.shape[0] == 0:
        raise MedtlError(f"source probabilities must be a non-empty (N, Z) array, got {theta.shape}", "source_probs")
    if theta.min() < -1e-6 or not np.allclose(theta.sum(1), 1.0, atol=1e-4):
        raise MedtlError("source probabilities must be non-negative rows summing to 1 (apply softmax)", "source_probs")
    codes = _class_labels(labels, len(theta))
    n = len(theta)
    onehot = np.eye(codes.max() + 1)[codes]  # (N, C)
    joint = onehot.T @ theta / n  # P(y, z), (C, Z)
    cond = joint / np.clip(joint.sum(0, keepdims=True), 1e-300, None)  # P(y | z)
    eep = np.sum(theta * cond[codes], axis=1)  # sum_z P(y_i | z) theta_i(z)
    return float(np.mean(np.log(np.clip(eep, 1e-300, None))))


def h_score(features: Any, labels: Any, rcond: float = 1e-10, shrinkage: str | None = "ledoit_wolf") -> float:
    """H-score of ``features (N, F)`` for class ``labels (N,)``; in [0, number of classes - 1].

    ``shrinkage="ledoit_wolf"`` (default): the regularised H-score of Ibrahim et al. 2022,
    ``tr(pinv(cov_a(f)) (1 - a) cov(E[f | y]))`` with ``cov_a = (1 - a) cov(f) + a (tr cov(f) / F) I``
    the Ledoit-Wolf covariance and ``a`` its shrinkage. The (1 - a) factor matters: cov_a already
    shrinks the total variance by (1 - a), so without it the between-class part is compared with a
    covariance shrunk by a feature-dependent amount, exceeds the ceiling and can reorder encoders.
    With it, ``(1 - a) cov(E[f|y]) <= cov_a`` and the score stays in [0, classes - 1].
    ``shrinkage=None``: the original estimator ``tr(pinv(cov(f)) cov(E[f | y]))`` (Bao et al. 2019),
    which sits at its ceiling for any features when there are fewer cases than features.

    Covariances are population ones (divided by N) throughout. TLlib's ``regularized_h_score``
    divides the between-class covariance by N - 1, so its values are N / (N - 1) times these.
    """
    f = as_features(features, "target features")
    codes = _class_labels(labels, len(f))
    f = f - f.mean(0)
    if shrinkage == "ledoit_wolf":
        from sklearn.covariance import ledoit_wolf

        cov_f, alpha = ledoit_wolf(f, assume_centered=True)
        between_scale = 1.0 - float(alpha)
    elif shrinkage is None:
        cov_f, between_scale = f.T @ f / len(f), 1.0
    else:
        raise MedtlError(f"unknown shrinkage {shrinkage!r}; use 'ledoit_wolf' or None", "shrinkage")
    means = np.stack([f[codes == c].mean(0) for c in range(codes.max() + 1)])
    g = means[codes]
    cov_g = between_scale * (g.T @ g) / len(f)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=rcond, hermitian=True) @ cov_g))
