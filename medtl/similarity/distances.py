"""Distances between two domains' feature arrays ``(N, F)`` (e.g. an encoder's pooled features on
source and target images).

- :func:`mmd` / :func:`mmd_test`: multi-kernel Gaussian MMD^2 and its permutation-test p-value.
- :func:`proxy_a_distance`: ``PAD = 2 (1 - 2 err)`` from a linear domain classifier's held-out error.
- :func:`frechet_distance`: Frechet distance between the Gaussians fitted to each domain.
- :func:`linear_cka`: linear CKA for *paired* rows (row i of both arrays is the same case, e.g. the
  same images through two encoders). CKA compares representations of one set of inputs; between
  two unpaired samples it is undefined (any row order would give a different value), so unpaired
  input is refused rather than silently subsampled.

All refuse empty domains and (except CKA) feature sets of different widths with a
:class:`MedtlError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medtl.errors import MedtlError

DEFAULT_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


def as_features(x: Any, what: str, min_rows: int = 1) -> np.ndarray:
    """A finite float64 ``(N, F)`` array, or a :class:`MedtlError` saying what is wrong."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise MedtlError(f"features must be a (N, F) array, got shape {a.shape}", what)
    if a.shape[0] < min_rows:
        raise MedtlError(
            f"{'empty domain' if a.shape[0] == 0 else 'too few rows'}: need at least {min_rows} row(s), "
            f"got {a.shape[0]}",
            what,
        )
    if a.shape[1] == 0:
        raise MedtlError("features have zero width", what)
    if not np.all(np.isfinite(a)):
        raise MedtlError("features contain NaN or infinite values", what)
    return a


def check_pair(x: Any, y: Any, min_rows: int = 1, what: str = "features") -> tuple[np.ndarray, np.ndarray]:
    a = as_features(x, f"source {what}", min_rows)
    b = as_features(y, f"target {what}", min_rows)
    if a.shape[1] != b.shape[1]:
        raise MedtlError(
            f"source and target features differ in width ({a.shape[1]} vs {b.shape[1]}); "
            "compare features from one encoder (or use linear_cka on paired rows)",
            what,
        )
    return a, b


def _sq_dists(z: np.ndarray) -> np.ndarray:
    sq = (z * z).sum(1)
    return np.clip(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0, None)


def _kernel(z: np.ndarray, multipliers: Sequence[float], base_bandwidth: float | None) -> tuple[np.ndarray, float]:
    d = _sq_dists(z)
    t = len(z)
    s = float(d.sum() / max(t * (t - 1), 1)) if base_bandwidth is None else float(base_bandwidth)
    if s <= 0:
        s = 1.0  # all points identical: any bandwidth gives MMD 0
    k = np.mean([np.exp(-d / (m * s)) for m in multipliers], axis=0)
    return k, s


def _mmd_from_kernel(k: np.ndarray, in_x: np.ndarray, unbiased: bool) -> np.ndarray:
    """MMD^2 for one or many assignments; ``in_x`` is a boolean ``(T,)`` or ``(T, P)`` mask of x rows."""
    a = in_x.astype(np.float64)
    b = 1.0 - a
    n, m = a.sum(0), b.sum(0)
    ka, kb = k @ a, k @ b
    sxx, syy, sxy = (a * ka).sum(0), (b * kb).sum(0), (a * kb).sum(0)
    if unbiased:
        diag = np.diag(k)
        exx = (sxx - diag @ a) / (n * (n - 1))
        eyy = (syy - diag @ b) / (m * (m - 1))
    else:
        exx, eyy = sxx / n**2, syy / m**2
    return exx + eyy - 2.0 * sxy / (n * m)


def mmd(
    x: Any,
    y: Any,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
    base_bandwidth: float | None = None,
    unbiased: bool = True,
) -> float:
    """Squared MMD between two samples with the averaged Gaussian kernels ``exp(-d^2 / (m s))``.

    ``s`` is the mean squared distance between distinct pooled points unless ``base_bandwidth`` is
    given. Same estimator as :func:`medtl.adapt.losses.mmd2` (unbiased U-statistic by default here).
    """
    a, b = check_pair(x, y, min_rows=2 if unbiased else 1)
    k, _ = _kernel(np.concatenate([a, b]), multipliers, base_bandwidth)
    mask = np.r_[np.ones(len(a), bool), np.zeros(len(b), bool)]
    return float(_mmd_from_kernel(k, mask, unbiased))


def _subsample(a: np.ndarray, max_rows: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_rows is None or len(a) <= max_rows:
        return a
    return a[np.sort(rng.choice(len(a), max_rows, replace=False))]


def mmd_test(
    x: Any,
    y: Any,
    n_permutations: int = 200,
    seed: int = 0,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
    base_bandwidth: float | None = None,
    max_rows: int | None = 1000,
) -> dict[str, Any]:
    """Unbiased MMD^2 and its permutation-test p-value ``(1 + #{perm >= observed}) / (1 + P)``.

    The domains are pooled, the labels shuffled ``n_permutations`` times, and the statistic
    recomputed on the same kernel matrix (bandwidth fixed from the pooled sample, so it does not
    change under permutation). Each domain is randomly subsampled to ``max_rows`` first (None: all).
    """
    a, b = check_pair(x, y, min_rows=2)
    if n_permutations < 1:
        raise MedtlError(f"n_permutations must be >= 1, got {n_permutations}", "n_permutations")
    rng = np.random.default_rng(seed)
    a, b = _subsample(a, max_rows, rng), _subsample(b, max_rows, rng)
    k, s = _kernel(np.concatenate([a, b]), multipliers, base_bandwidth)
    t, n = len(a) + len(b), len(a)
    observed = float(_mmd_from_kernel(k, np.arange(t) < n, True))
    null = []
    for start in range(0, n_permutations, 50):  # batches of permutations: one matrix product each
        p = min(50, n_permutations - start)
        masks = np.stack([rng.permutation(t) < n for _ in range(p)], axis=1)
        null.append(_mmd_from_kernel(k, masks, True))
    null_arr = np.concatenate(null)
    p_value = (1 + int(np.sum(null_arr >= observed - 1e-15))) / (1 + n_permutations)
    return {
        "mmd2": observed,
        "p_value": float(p_value),
        "n_permutations": int(n_permutations),
        "bandwidth": s,
        "n_source": len(a),
        "n_target": len(b),
    }


def proxy_a_distance(x: Any, y: Any, folds: int = 5, seed: int = 0, C: float = 1.0) -> dict[str, float]:
    """Proxy A-distance (Ben-David et al. 2007/2010): ``PAD = 2 (1 - 2 err)``.

    ``err`` is the *balanced* held-out error of a logistic-regression domain classifier on
    standardised features (stratified ``folds``-fold cross-validation), so chance is 0.5 whatever
    the domain sizes. PAD is clipped to [0, 2]: 0 = indistinguishable domains, 2 = separable.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a, b = check_pair(x, y, min_rows=2)
    folds = min(folds, len(a), len(b))
    z = np.concatenate([a, b])
    d = np.r_[np.zeros(len(a), int), np.ones(len(b), int)]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    pred = cross_val_predict(clf, z, d, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    err = 0.5 * (np.mean(pred[d == 0] != 0) + np.mean(pred[d == 1] != 1))
    pad = float(np.clip(2.0 * (1.0 - 2.0 * err), 0.0, 2.0))
    return {"pad": pad, "error": float(err)}


def frechet_distance(x: Any, y: Any) -> float:
    """``||mu_x - mu_y||^2 + tr(S_x + S_y - 2 (S_x S_y)^{1/2})`` between fitted Gaussians (as in FID).

    The trace of the matrix square root is computed as ``sum sqrt(eig(S_x^{1/2} S_y S_x^{1/2}))``
    (a symmetric PSD matrix with the same eigenvalues as ``S_x S_y``), which stays real and stable
    when the covariances are singular (fewer cases than features).
    """
    a, b = check_pair(x, y, min_rows=2)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    ev = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    tr_covmean = float(np.sum(np.sqrt(np.clip(ev, 0.0, None))))
    value = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_covmean
    return float(max(value, 0.0))


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA (Kornblith et al. 2019) between two representations of the *same* N cases.

    ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred arrays; widths may differ.
    """
    a = as_features(x, "cka x", 2)
    b = as_features(y, "cka y", 2)
    if len(a) != len(b):
        raise MedtlError(
            f"linear CKA needs paired rows (the same cases in both arrays), got {len(a)} and {len(b)} rows",
            "cka",
        )
    a = a - a.mean(0)
    b = b - b.mean(0)
    num = np.linalg.norm(b.T @ a, "fro") ** 2
    den = np.linalg.norm(a.T @ a, "fro") * np.linalg.norm(b.T @ b, "fro")
    if den == 0:
        raise MedtlError("linear CKA is undefined for a constant representation", "cka")
    return float(num / den)
