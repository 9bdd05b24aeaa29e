"""DeLong's test for two correlated AUROCs measured on the same cases (DeLong et al., 1988).

The structural components are computed from mid-ranks (Sun & Xu, 2014), O(n log n): for a positive
case, V10 is the fraction of negatives it out-scores (ties 1/2); for a negative case, V01 is the
fraction of positives that out-score it. AUC = mean V10 = mean V01 and

    Var(AUC) = S10 / m + S01 / n        (m positives, n negatives, S = sample covariance)

which extends to the covariance of two AUCs on the same cases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from medtl.errors import MedtlError


def structural_components(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """V10 (k, m) over positives and V01 (k, n) over negatives for each of k score rows."""
    y = np.asarray(y_true).astype(bool)
    S = np.atleast_2d(np.asarray(scores, dtype=float))
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
    """AUCs (k,) and their DeLong covariance matrix (k, k) for score rows on the same cases."""
    v10, v01 = structural_components(y_true, scores)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return v10.mean(axis=1), cov


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
    n_positive: int
    n_negative: int
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def delong_test(y_true, score_a, score_b) -> DeLongResult:
    """Two-sided DeLong test of AUROC(score_a) == AUROC(score_b) on the same labelled cases."""
    y = np.asarray(y_true).astype(bool)
    a, b = np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)
    if not (len(a) == len(b) == len(y)):
        raise MedtlError(f"scores and labels differ in length ({len(a)}, {len(b)}, {len(y)})", "delong")
    auc, cov = delong_covariance(y, np.vstack([a, b]))
    var_diff = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    diff = float(auc[0] - auc[1])
    z = p = note = None
    if var_diff > 1e-15:
        z = diff / np.sqrt(var_diff)
        p = float(2.0 * stats.norm.sf(abs(z)))
        z = float(z)
    else:
        note = "the two scorings rank the cases identically: the difference has no variance"
    return DeLongResult(
        auc_a=float(auc[0]), auc_b=float(auc[1]), difference=diff,
        var_a=float(cov[0, 0]), var_b=float(cov[1, 1]), covariance=float(cov[0, 1]),
        se=float(np.sqrt(max(var_diff, 0.0))), z=z, p_value=p,
        n_positive=int(y.sum()), n_negative=int((~y).sum()), note=note,
    )  # fmt: skip
