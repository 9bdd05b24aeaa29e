"""DeLong's test for two correlated AUROCs measured on the same cases (DeLong et al., 1988).

The structural components are computed from mid-ranks (Sun & Xu, 2014), O(n log n): for a positive
case, V10 is the fraction of negatives it out-scores (ties 1/2); for a negative case, V01 is the
fraction of positives that out-score it. AUC = mean V10 = mean V01 and

    Var(AUC) = S10 / m + S01 / n        (m positives, n negatives, S = sample covariance)

which extends to the covariance of two AUCs on the same cases.

When cases come in clusters (several images of one patient, near-copies of one image), the variance is
Obuchowski's (1997): with V10_k and V01_k the sums of a cluster's positives' V10 and negatives' V01, and
m_k, n_k its counts, S10 = I10 / (I10 - 1) / m * sum (V10_k - m_k AUC)^2 over the I10 clusters holding a
positive, S01 likewise over the I01 holding a negative, S11 = I / (I - 1) * sum (V10_k - m_k AUC)(V01_k -
n_k AUC), and Var = S10 / m + S01 / n + 2 S11 / (m n). Exact copies clustered by their original give
DeLong's variance of the originals. With one case per cluster DeLong's own estimate is kept. The macro
(multiclass) test keeps the true classes as strata: per class, the cluster sums of its cases' influences
(centred on the class mean) times I_c / (I_c - 1), plus cross terms between classes over clusters that hold
several, times I / (I - 1) (:func:`_clustered_covariance`): Obuchowski's form for K classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from medtl.errors import MedtlError
from medtl.evaluation.metrics import check_binary_labels, check_scores


def structural_components(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """V10 (k, m) over positives and V01 (k, n) over negatives for each of k score rows."""
    y = check_binary_labels(y_true)
    S = np.atleast_2d(np.asarray(scores, dtype=float))
    if S.ndim != 2:
        raise MedtlError(f"must be (k, n) score rows, got shape {S.shape}", "scores")
    for i, row in enumerate(S):
        check_scores(row, f"scores[{i}]" if len(S) > 1 else "scores", n=len(y))
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise MedtlError("DeLong's test needs both positive and negative cases", "labels")
    pos, neg = S[:, y], S[:, ~y]
    # Rank of a positive among all cases minus its rank among positives = negatives below it
    # (mid-ranks make ties count 1/2); likewise for negatives.
    r_all = stats.rankdata(S, axis=1)
    v10 = (r_all[:, y] - stats.rankdata(pos, axis=1)) / n
    v01 = 1.0 - (r_all[:, ~y] - stats.rankdata(neg, axis=1)) / m
    return v10, v01


def delong_covariance(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance matrix (k, k) for score rows on the same cases.

    The covariance is nan when there are fewer than two positive or two negative cases (a sample
    covariance of one value is undefined)."""
    v10, v01 = structural_components(y_true, scores)
    return v10.mean(axis=1), _covariance(v10, v01)


def _covariance(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        return np.full((len(v10), len(v10)), np.nan)
    return np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    var_a: float
    var_b: float
    covariance: float
    se: float  # standard error of the difference
    z: float | None
    p_value: float | None  # two-sided; None when the difference has no variance
    n_positive: int | None  # binary; a macro (multiclass) test has n_per_class instead
    n_negative: int | None
    note: str | None = None
    n_per_class: list[int] | None = None
    n_clusters: int | None = None  # the sampling units of a cluster-robust variance (None: one case each)

    def to_dict(self) -> dict:
        return asdict(self)


def _units(clusters, n: int) -> np.ndarray | None:
    """Cluster codes 0..K-1 of ``n`` cases (a case without one, None or NaN, is its own), or None when there
    are none or every case is its own."""
    if clusters is None:
        return None
    if len(clusters) != n:
        raise MedtlError(f"need one cluster per case: {n} cases, {len(clusters)} clusters", "clusters")
    names = [f"\0case{i}" if c is None or (isinstance(c, float) and np.isnan(c)) else str(c)
             for i, c in enumerate(clusters)]
    codes = np.unique(names, return_inverse=True)[1]
    return codes if codes.max(initial=-1) + 1 < n else None


def _sums(values: np.ndarray, units: np.ndarray, k_units: int) -> np.ndarray:
    """Per-cluster sums of each row of ``values`` (k, n) -> (k, K)."""
    return np.stack([np.bincount(units, weights=row, minlength=k_units) for row in values])


def _obuchowski_covariance(v10: np.ndarray, v01: np.ndarray, y: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Obuchowski's (1997) covariance of the AUCs of score rows (k, .) from their structural components;
    nan when fewer than two clusters hold a positive or a negative."""
    k_units, m, n = int(units.max()) + 1, v10.shape[1], v01.shape[1]
    auc = v10.mean(axis=1, keepdims=True)
    m_k = np.bincount(units[y], minlength=k_units)
    n_k = np.bincount(units[~y], minlength=k_units)
    i10, i01, i_all = int((m_k > 0).sum()), int((n_k > 0).sum()), int(((m_k + n_k) > 0).sum())
    if min(i10, i01) < 2:
        return np.full((len(v10), len(v10)), np.nan)
    d10 = _sums(v10, units[y], k_units) - m_k * auc  # (k, K): zero for clusters without a positive
    d01 = _sums(v01, units[~y], k_units) - n_k * auc
    s10 = d10 @ d10.T * i10 / (i10 - 1) / m
    s01 = d01 @ d01.T * i01 / (i01 - 1) / n
    s11 = (d10 @ d01.T + d01 @ d10.T) / 2 * i_all / (i_all - 1)
    return s10 / m + s01 / n + 2 * s11 / (m * n)


def _clustered_covariance(influence: np.ndarray, classes: np.ndarray, units: np.ndarray) -> np.ndarray:
    """The covariance of the AUCs from each case's influence (k, n), with the cases' true classes as strata and
    clusters of cases as the sampling units: per class, the cluster sums of its cases' influences (centred on
    the class's mean) times I_c / (I_c - 1), I_c its clusters; between two classes, the cross products of those
    sums times I / (I - 1), I all clusters. Obuchowski's (1997) form for any number of classes: with two it is
    the binary test's, and with every case its own cluster it is DeLong's, strata and all (no cross terms); nan
    when a class has fewer than two clusters."""
    k_units = int(units.max()) + 1
    sums, sizes = [], []
    for c in np.unique(classes):
        mine = classes == c
        part = influence[:, mine]
        sums.append(_sums(part - part.mean(axis=1, keepdims=True), units[mine], k_units))
        sizes.append(int((np.bincount(units[mine], minlength=k_units) > 0).sum()))
    if min(sizes) < 2:
        return np.full((len(influence), len(influence)), np.nan)
    n_all = int((np.bincount(units, minlength=k_units) > 0).sum())
    cov = np.zeros((len(influence), len(influence)))
    for a, (d_a, i_a) in enumerate(zip(sums, sizes)):
        cov += d_a @ d_a.T * i_a / (i_a - 1)
        for d_b in sums[a + 1:]:
            cov += (d_a @ d_b.T + d_b @ d_a.T) * n_all / (n_all - 1)
    return cov


def delong_test(y_true, score_a, score_b, clusters=None) -> DeLongResult:
    """Two-sided DeLong test of AUROC(score_a) == AUROC(score_b) on the same labelled cases; ``clusters``
    (one label per case: patient, near-copy group) makes the variance cluster-robust (Obuchowski 1997)
    when some cases share one.

    ``p_value`` is None, with a ``note`` saying why, when the test cannot be computed (fewer than two
    cases of a class, or a difference with zero estimated variance) or is not needed (both scorings
    order every positive-negative pair alike)."""
    y = check_binary_labels(y_true)
    a = check_scores(score_a, "score_a", n=len(y))
    b = check_scores(score_b, "score_b", n=len(y))
    v10, v01 = structural_components(y, np.vstack([a, b]))
    auc = v10.mean(axis=1)
    m, n = v10.shape[1], v01.shape[1]
    units = _units(clusters, len(y))
    if units is None:
        cov = _covariance(v10, v01)
    elif m < 2 or n < 2:  # as without clusters: no variance from one case of a class
        cov = np.full((2, 2), np.nan)
    else:
        cov = _obuchowski_covariance(v10, v01, y, units)
    return _result(auc, cov, np.array_equal(v10[0], v10[1]) and np.array_equal(v01[0], v01[1]),
                   f"at least two positive and two negative cases (have {m} and {n})" + (
                       "" if units is None or m < 2 or n < 2 else ", each class in at least two clusters (patients "
                       "or near-copy groups)"), "positive-negative pair",
                   n_positive=int(y.sum()), n_negative=int((~y).sum()),
                   n_clusters=None if units is None else int(units.max()) + 1)


def _result(auc, cov, same_order: bool, needs: str, pairs: str, **counts) -> DeLongResult:
    """The two-sided test of ``auc[0] - auc[1]`` with DeLong covariance ``cov`` (2 x 2); ``same_order``:
    the scorings order every pair alike (nothing to test), ``needs`` says what a nan variance lacks."""
    var_diff = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    diff = float(auc[0] - auc[1])
    z = p = note = None
    if not np.isfinite(var_diff):
        note = f"not computable: DeLong's variance needs {needs}"
    elif var_diff > 1e-15:
        z = float(diff / np.sqrt(var_diff))
        p = float(2.0 * stats.norm.sf(abs(z)))
    elif same_order:
        note = f"the two scorings order every {pairs} alike: the AUROCs are equal, nothing to test"
    else:
        note = "not computable: the AUROC difference has zero estimated variance"
    return DeLongResult(
        auc_a=float(auc[0]), auc_b=float(auc[1]), difference=diff,
        var_a=float(cov[0, 0]), var_b=float(cov[1, 1]), covariance=float(cov[0, 1]),
        se=float(np.sqrt(max(var_diff, 0.0))) if np.isfinite(var_diff) else float("nan"), z=z, p_value=p,
        note=note, **counts,
    )  # fmt: skip


def delong_macro_test(y_true, probs_a, probs_b, clusters=None) -> DeLongResult:
    """DeLong's test for the difference of two macro one-vs-rest AUROCs (multiclass) on the same cases.

    ``y_true``: class indices 0..K-1; ``probs_a`` / ``probs_b``: (n, K) scores. The macro AUROC is the
    mean over classes of AUROC(class k vs the rest, column k), as medtl reports it. DeLong's variance
    comes from the structural components; with K classes every case is a positive of its own class and a
    negative of the others, so a case's influence on the macro difference is the mean over classes of
    its (V10 or V01 minus the AUC) divided by the class's positive or negative count. Cases of one true
    class are one sample (DeLong's two samples are the positives and the negatives), so the variance is
    the sum over classes of n_c times the sample variance of the influences of its cases; with K = 2 this
    is exactly :func:`delong_test`."""
    y = np.asarray(y_true)
    A, B = np.asarray(probs_a, dtype=float), np.asarray(probs_b, dtype=float)
    if A.ndim != 2 or A.shape != B.shape or A.shape[0] != len(y):
        raise MedtlError(f"need (n, K) scores for n={len(y)} cases, got {A.shape} and {B.shape}", "scores")
    k = A.shape[1]
    if not np.issubdtype(y.dtype, np.integer) or y.min(initial=0) < 0 or y.max(initial=0) >= k:
        raise MedtlError(f"labels must be class indices 0..{k - 1}", "labels")
    counts = np.bincount(y, minlength=k)
    if (counts == 0).any():
        raise MedtlError(f"every class needs test cases for a macro AUROC; counts {counts.tolist()}", "labels")
    n = len(y)
    auc = np.zeros((2, k))
    infl = np.zeros((2, n))  # each case's influence on the two macro AUROCs
    for c in range(k):
        pos = y == c
        v10, v01 = structural_components(pos, np.vstack([A[:, c], B[:, c]]))
        auc[:, c] = v10.mean(axis=1)
        infl[:, pos] += (v10 - auc[:, [c]]) / pos.sum() / k
        infl[:, ~pos] += (v01 - auc[:, [c]]) / (~pos).sum() / k
    macro = auc.mean(axis=1)
    units = _units(clusters, n)
    if units is not None and counts.min() < 2:  # as without clusters: no variance from one case of a class
        cov = np.full((2, 2), np.nan)
    elif units is not None:  # clusters of cases (of one class or several): their influences summed
        cov = _clustered_covariance(infl, y, units)
    else:
        cov = np.zeros((2, 2))
        for c in range(k):
            group = infl[:, y == c]
            if group.shape[1] < 2:
                cov[:] = np.nan
                break
            cov += np.atleast_2d(np.cov(group)) * group.shape[1]
    return _result(macro, cov, np.allclose(auc[0], auc[1]) and np.allclose(infl[0], infl[1]),
                   f"at least two cases of every class (have {counts.tolist()})" + (
                       "" if units is None or counts.min() < 2 else ", each class in at least two clusters (patients "
                       "or near-copy groups)"), "pair in every class",
                   n_positive=None, n_negative=None, n_per_class=counts.tolist(),
                   n_clusters=None if units is None else int(units.max()) + 1)
