"""A paired test of two regressors' mean absolute errors on the same cases.

The per-case difference of absolute errors, d_i = |a_i - y_i| - |b_i - y_i|, has mean MAE_a - MAE_b;
its two-sided one-sample t-test (equivalently, the paired t-test of the absolute errors, scipy's
``ttest_rel``) asks whether that mean is zero. It is the regression counterpart of DeLong's test: it
accounts for the test cases being a sample, which a t-interval over training seeds on one fixed test
set does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from medtl.evaluation.metrics import check_scores


@dataclass(frozen=True)
class PairedErrorResult:
    mae_a: float
    mae_b: float
    difference: float  # mae_a - mae_b: negative means a erred less
    se: float  # standard error of the difference (sample sd of d over sqrt(n))
    t: float | None
    p_value: float | None  # two-sided; None (with a note) when the difference has no spread
    n_cases: int
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def paired_error_test(y_true, pred_a, pred_b) -> PairedErrorResult:
    """Two-sided paired t-test of MAE(pred_a) == MAE(pred_b) on the same cases."""
    y = check_scores(y_true, "y_true")
    a = check_scores(pred_a, "pred_a", n=len(y))
    b = check_scores(pred_b, "pred_b", n=len(y))
    d = np.abs(a - y) - np.abs(b - y)
    n = len(d)
    mae_a, mae_b, diff = float(np.abs(a - y).mean()), float(np.abs(b - y).mean()), float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    t = p = note = None
    if n < 2:
        note = "not computable: the paired test needs at least two cases"
    elif se > 1e-12 * max(1.0, float(np.abs(d).max())):
        t = diff / se
        p = float(2.0 * stats.t.sf(abs(t), df=n - 1))
    elif np.all(d == 0):
        note = "the two predictions err equally on every case: nothing to test"
    else:
        note = "not computable: the difference in absolute errors is the same on every case (no spread)"
    return PairedErrorResult(mae_a=mae_a, mae_b=mae_b, difference=diff, se=se, t=t, p_value=p, n_cases=n, note=note)
