"""The paired test of two regressors' MAEs against scipy's paired t-test of the absolute errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from medtl.errors import MedtlError
from medtl.evaluation.paired import paired_error_test


@pytest.mark.parametrize("seed", range(4))
def test_matches_scipy_ttest_rel_on_absolute_errors(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(50, 15, 40)
    a = y + rng.normal(0, 8, 40)
    b = y + rng.normal(1 + seed, 10, 40)
    r = paired_error_test(y, a, b)
    ea, eb = np.abs(a - y), np.abs(b - y)
    ref = stats.ttest_rel(ea, eb)
    assert r.mae_a == pytest.approx(ea.mean()) and r.mae_b == pytest.approx(eb.mean())
    assert r.difference == pytest.approx(ea.mean() - eb.mean())
    assert r.t == pytest.approx(ref.statistic, rel=1e-10)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.se == pytest.approx(np.std(ea - eb, ddof=1) / np.sqrt(40))
    assert r.n_cases == 40 and r.note is None


def test_a_constant_baseline_is_beaten_only_with_evidence():
    """The training-mean baseline: a regressor that halves every error wins clearly; one that is better on
    a few cases only does not reach p < 0.05."""
    rng = np.random.default_rng(0)
    y = rng.uniform(20, 80, 60)
    base = np.full_like(y, y.mean())
    clear = paired_error_test(y, y + (base - y) / 2, base)
    assert clear.difference < 0 and clear.p_value < 1e-6
    lucky = base.copy()
    lucky[:3] = y[:3]  # right on three cases, the mean elsewhere
    weak = paired_error_test(y, lucky, base)
    assert weak.difference < 0 and weak.p_value > 0.05


def test_equal_errors_and_too_few_cases_give_a_note_not_a_p_value():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    same = paired_error_test(y, y + 1, y - 1)  # |errors| identical on every case
    assert same.p_value is None and same.difference == 0 and "err equally" in same.note
    shift = paired_error_test(y, y + 2, y + 1)  # differs by exactly 1 on every case: no spread
    assert shift.p_value is None and shift.difference == pytest.approx(1.0) and "no spread" in shift.note
    one = paired_error_test([1.0], [2.0], [3.0])
    assert one.p_value is None and "at least two" in one.note


def test_bad_input_is_refused_by_name():
    with pytest.raises(MedtlError, match="pred_b"):
        paired_error_test([1.0, 2.0], [1.0, 2.0], [1.0, float("nan")])
    with pytest.raises(MedtlError, match="pred_a"):
        paired_error_test([1.0, 2.0], [1.0], [1.0, 2.0])
