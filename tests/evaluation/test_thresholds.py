"""Thresholds are picked on validation data and applied unchanged to test."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.errors import MedtlError
from medtl.evaluation.thresholds import apply_threshold, choose_threshold


def _data(seed, n=200):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, 1 / (1 + np.exp(-rng.normal(1.2 * y, 1.0)))


def _sens_spec(y, s, t):
    pred = s >= t
    return pred[y == 1].mean(), (~pred[y == 0]).mean()


@pytest.mark.parametrize("seed", range(4))
def test_youden_maximises_j_over_all_cuts(seed):
    y, s = _data(seed)
    t = choose_threshold(y, s, "youden")
    best = max(sum(_sens_spec(y, s, c)) - 1 for c in np.r_[np.unique(s), np.inf])
    sens, spec = _sens_spec(y, s, t.value)
    assert sens + spec - 1 == pytest.approx(best)
    assert (t.sensitivity, t.specificity) == pytest.approx((sens, spec))
    assert t.value not in set(s)  # midway between two validation scores


def test_target_sensitivity_and_specificity():
    y, s = _data(1, 400)
    cuts = np.unique(s)
    t = choose_threshold(y, s, "sensitivity", target=0.9)
    # Brute force: the highest cut still reaching the target (the best specificity there).
    best = max(c for c in cuts if _sens_spec(y, s, c)[0] >= 0.9)
    assert _sens_spec(y, s, t.value) == _sens_spec(y, s, best)
    assert t.sensitivity >= 0.9
    t = choose_threshold(y, s, "specificity", target=0.95)
    best = min(c for c in cuts if _sens_spec(y, s, c)[1] >= 0.95)
    assert _sens_spec(y, s, t.value) == _sens_spec(y, s, best)
    assert t.specificity >= 0.95


def test_bad_rules_and_single_class_validation():
    y, s = _data(0)
    with pytest.raises(MedtlError, match="rule"):
        choose_threshold(y, s, "max_f1")
    with pytest.raises(MedtlError, match="target"):
        choose_threshold(y, s, "sensitivity")
    with pytest.raises(MedtlError, match="one class"):
        choose_threshold(np.ones(5), s[:5])


def test_apply_threshold():
    np.testing.assert_array_equal(apply_threshold([0.2, 0.5, 0.7], 0.5), [0, 1, 1])


def test_threshold_functions_refuse_nan_scores_and_unmappable_labels():
    y, s = _data(5, n=20)
    bad = s.copy()
    bad[3] = np.nan
    with pytest.raises(MedtlError, match=r"score: 1 of 20 values are NaN or infinite \(at index 3\)"):
        choose_threshold(y, bad)
    with pytest.raises(MedtlError, match="score: .*NaN"):
        apply_threshold(bad, 0.5)  # unchecked, the NaN case was silently called negative
    with pytest.raises(MedtlError, match="y_true: binary labels"):
        choose_threshold(np.where(y == 1, 1, -1), s)
    with pytest.raises(MedtlError, match="y_true: binary labels"):
        choose_threshold(np.where(y == 1, "pos", "neg"), s)
    with pytest.raises(MedtlError, match="threshold"):
        apply_threshold(s, float("nan"))


def test_checkpoint_threshold_is_the_validation_choice_or_the_default_with_its_reason():
    import numpy as np

    from medtl.evaluation.thresholds import DEFAULT_THRESHOLD, checkpoint_threshold, choose_threshold

    y, s = np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    meta = checkpoint_threshold(y == 1, s)
    assert meta["threshold"] == choose_threshold(y == 1, s).value and meta["threshold_rule"]["rule"] == "youden"
    one_class = checkpoint_threshold(np.zeros(4, bool), s[:4])
    assert one_class["threshold"] == DEFAULT_THRESHOLD and one_class["threshold_rule"]["rule"] == "default"
    assert one_class["threshold_rule"]["note"]
