"""Every metric against scikit-learn (or scipy) on random inputs, binary and multiclass."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from medtl.errors import MedtlError
from medtl.evaluation.metrics import (
    auroc,
    average_precision,
    classification_metrics,
    confusion_matrix,
    pr_curve,
    regression_metrics,
    roc_curve,
)


def _binary(seed, n=300, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.normal(y * 0.8, 1.0)
    if ties:  # coarse scores: many ties, as in real rounded outputs
        s = np.round(s, 1)
    p = 1 / (1 + np.exp(-s))
    return y, p


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_binary_metrics_equal_sklearn(seed, ties):
    y, p = _binary(seed, ties=ties)
    thr = 0.55
    pred = (p >= thr).astype(int)
    r = classification_metrics(y, np.c_[1 - p, p], threshold=thr)
    m = r["metrics"]
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m["auprc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["ppv"] == pytest.approx(skm.precision_score(y, pred))
    assert m["npv"] == pytest.approx(skm.precision_score(y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    np.testing.assert_array_equal(r["confusion_matrix"], skm.confusion_matrix(y, pred))


@pytest.mark.parametrize("seed", range(4))
def test_multiclass_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(100 + seed)
    K, n = 4, 400
    y = rng.integers(0, K, n)
    logits = rng.normal(size=(n, K)) + 1.2 * np.eye(K)[y]
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = P.argmax(axis=1)
    r = classification_metrics(y, P)
    m, pc = r["metrics"], r["per_class"]
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, P, multi_class="ovr", average="macro"), abs=1e-12)
    Y = label_binarize(y, classes=range(K))
    np.testing.assert_allclose(pc["auroc"], skm.roc_auc_score(Y, P, average=None), atol=1e-12)
    np.testing.assert_allclose(pc["auprc"], skm.average_precision_score(Y, P, average=None), atol=1e-12)
    assert m["auprc"] == pytest.approx(skm.average_precision_score(Y, P, average="macro"), abs=1e-12)
    np.testing.assert_allclose(pc["sensitivity"], skm.recall_score(y, pred, average=None))
    np.testing.assert_allclose(pc["ppv"], skm.precision_score(y, pred, average=None))
    np.testing.assert_allclose(pc["f1"], skm.f1_score(y, pred, average=None))
    spec = [skm.recall_score(y == k, pred == k, pos_label=False) for k in range(K)]
    npv = [skm.precision_score(y == k, pred == k, pos_label=False) for k in range(K)]
    np.testing.assert_allclose(pc["specificity"], spec)
    np.testing.assert_allclose(pc["npv"], npv)
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["ppv"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    np.testing.assert_array_equal(r["confusion_matrix"], skm.confusion_matrix(y, pred))


def test_weighted_metrics_equal_sklearn_sample_weight_and_repetition():
    y, p = _binary(7, n=120, ties=True)
    w = np.random.default_rng(0).integers(0, 4, len(y)).astype(float)
    assert auroc(y, p, w) == pytest.approx(skm.roc_auc_score(y, p, sample_weight=w), abs=1e-12)
    assert average_precision(y, p, w) == pytest.approx(skm.average_precision_score(y, p, sample_weight=w), abs=1e-12)
    # Integer weights are the same as repeating cases: the bootstrap relies on this.
    rep = np.repeat(np.arange(len(y)), w.astype(int))
    assert auroc(y, p, w) == pytest.approx(skm.roc_auc_score(y[rep], p[rep]), abs=1e-12)


def test_batched_weights_equal_row_by_row():
    y, p = _binary(3, n=80)
    W = np.random.default_rng(1).integers(0, 3, size=(6, len(y))).astype(float)
    batch = classification_metrics(y, np.c_[1 - p, p], 0.5, W)["metrics"]
    for b in range(len(W)):
        single = classification_metrics(y, np.c_[1 - p, p], 0.5, W[b])["metrics"]
        for k, v in single.items():
            assert batch[k][b] == pytest.approx(v, nan_ok=True), k


def test_curves_equal_sklearn():
    y, p = _binary(2, n=150, ties=True)
    fpr, tpr, thr = roc_curve(y, p)
    sf, st, sth = skm.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf)
    np.testing.assert_allclose(tpr, st)
    np.testing.assert_allclose(thr[1:], sth[1:])
    rec, prec, _ = pr_curve(y, p)
    sp, sr, _ = skm.precision_recall_curve(y, p)
    np.testing.assert_allclose(rec[1:], sr[::-1][1:])
    np.testing.assert_allclose(prec[1:], sp[::-1][1:])


def test_regression_metrics_equal_sklearn_and_scipy():
    rng = np.random.default_rng(5)
    y = rng.uniform(20, 80, 200)
    f = y + rng.normal(0, 7, 200)
    m = regression_metrics(y, f)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, f))
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, f)))
    assert m["r2"] == pytest.approx(skm.r2_score(y, f))
    assert m["pearson_r"] == pytest.approx(stats.pearsonr(y, f)[0])
    w = rng.integers(1, 4, 200).astype(float)
    mw = regression_metrics(y, f, w)
    assert mw["mae"] == pytest.approx(skm.mean_absolute_error(y, f, sample_weight=w))
    assert mw["r2"] == pytest.approx(skm.r2_score(y, f, sample_weight=w))


def test_undefined_values_are_nan_not_numbers():
    y = np.zeros(10, int)
    p = np.linspace(0.1, 0.9, 10)
    r = classification_metrics(y, np.c_[1 - p, p], threshold=2.0)["metrics"]
    assert np.isnan(r["auroc"]) and np.isnan(r["auprc"])  # one class: undefined, not 0.5
    assert np.isnan(r["sensitivity"]) and np.isnan(r["ppv"])  # no positives, no positive calls
    assert np.isnan(r["mcc"])  # scikit-learn would say 0.0
    assert r["specificity"] == 1.0 and r["accuracy"] == 1.0
    assert np.isnan(regression_metrics([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["r2"])


def test_confusion_matrix_weighted():
    cm = confusion_matrix([0, 1, 1, 2], [0, 2, 1, 2], 3, weights=[1, 2, 3, 4])
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 3, 2], [0, 0, 4]])


def _nan_case():
    # Without the NaN case the AUROC is 4/6 (as scikit-learn); numpy sorts NaN above every number,
    # so unchecked, the NaN case counted as the highest score and gave 7/9.
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.3, np.nan])
    return y, s


def test_metrics_refuse_nan_and_inf_scores_naming_the_argument():
    y, s = _nan_case()
    assert auroc(y[:5], s[:5]) == pytest.approx(skm.roc_auc_score(y[:5], s[:5]))
    for fn in (auroc, average_precision, roc_curve, pr_curve):
        with pytest.raises(MedtlError, match=r"^score: 1 of 6 values are NaN or infinite \(at index 5\)"):
            fn(y, s)
        with pytest.raises(MedtlError, match="score: .*NaN or infinite"):
            fn(y, np.where(np.arange(6) == 0, np.inf, np.nan_to_num(s)))
    P = np.c_[1 - np.nan_to_num(s, nan=0.5), np.nan_to_num(s, nan=0.5)]
    P[5] = np.nan
    with pytest.raises(MedtlError, match="probs: NaN or infinite probabilities for the cases at index 5"):
        classification_metrics(y, P)
    with pytest.raises(MedtlError, match="probs: probabilities outside"):
        classification_metrics(y, np.c_[-np.arange(6.0), np.arange(6.0)])  # logits, not probabilities
    with pytest.raises(MedtlError, match="y_pred"):
        regression_metrics([1.0, 2.0, 3.0], [1.0, np.nan, 3.0])
    with pytest.raises(MedtlError, match="y_true"):
        regression_metrics([1.0, np.inf, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(MedtlError, match="score: has 5 cases where 6 are expected"):
        auroc(y, s[:5])


@pytest.mark.parametrize("labels", [["no", "no", "no", "yes", "yes", "yes"], [-1, -1, -1, 1, 1, 1],
                                    [0, 0, 0, 2, 2, 2], [0.0, 0.0, 0.0, 1.0, 1.0, np.nan]])
def test_binary_metrics_refuse_labels_they_cannot_map(labels):
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9])
    for fn in (auroc, average_precision, roc_curve, pr_curve):
        with pytest.raises(MedtlError, match="y_true: binary labels must be 0/1 or True/False"):
            fn(np.array(labels, dtype=object if isinstance(labels[0], str) else None), s)
    # 0/1 as floats and booleans are fine and equal scikit-learn
    y = np.array([0, 0, 0, 1, 1, 1])
    assert auroc(y.astype(float), s) == auroc(y.astype(bool), s) == pytest.approx(skm.roc_auc_score(y, s))


def test_class_label_and_weight_checks():
    P = np.full((4, 3), 1 / 3)
    with pytest.raises(MedtlError, match="y_true: labels must be class indices 0..2"):
        classification_metrics(np.array(["a", "b", "c", "a"]), P)
    with pytest.raises(MedtlError, match="y_true: labels must be class indices 0..2"):
        classification_metrics([0, 1, 3, 1], P)
    with pytest.raises(MedtlError, match="y_pred"):
        confusion_matrix([0, 1], [0, -1], 2)
    with pytest.raises(MedtlError, match="weights"):
        auroc([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], weights=[1.0, 1.0])
    with pytest.raises(MedtlError, match="weights"):
        auroc([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], weights=[1.0, np.nan, 1.0, 1.0])
    with pytest.raises(MedtlError, match="no cases"):
        auroc([], [])


def test_object_arrays_threshold_and_confusion_input_checks():
    from medtl.evaluation.metrics import binary_scores

    s = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    # numbers held as objects (a pandas column) are numbers; text "0"/"1" is not taken for classes
    assert auroc(np.array([0, 0, 1, 1], dtype=object), s) == pytest.approx(skm.roc_auc_score(y, s))
    with pytest.raises(MedtlError, match="y_true: binary labels"):
        auroc(np.array(["0", "0", "1", "1"], dtype=object), s)
    with pytest.raises(MedtlError, match="threshold"):
        classification_metrics(y, np.c_[1 - s, s], threshold=float("nan"))  # would call every case negative
    with pytest.raises(MedtlError, match="cm"):
        binary_scores([[1.0, np.nan], [0.0, 2.0]])
    cm = [[3.0, 1.0], [2.0, 4.0]]
    m = binary_scores(cm)
    assert m["sensitivity"] == pytest.approx(4 / 6) and m["accuracy"] == pytest.approx(0.7)


def test_pearson_r_of_a_constant_prediction_is_undefined_not_rounding_noise():
    from medtl.evaluation.metrics import regression_metrics

    y = np.array([23.0, 35.5, 41.2, 60.7, 72.1, 19.9])
    m = regression_metrics(y, np.full(6, 42.066666666666666))  # a mean that sums with rounding error
    assert np.isnan(m["pearson_r"]) and abs(m["r2"]) < 1e-12  # the mean itself: R² 0
    weights = np.random.default_rng(0).integers(0, 3, size=(4, 6)).astype(float) + 1
    assert np.isnan(regression_metrics(y, np.full(6, 42.066666666666666), weights)["pearson_r"]).all()
    assert np.isnan(regression_metrics(np.full(6, 3.3), y)["r2"])


def test_no_skill_references_are_a_constant_predictions_scores():
    from medtl.evaluation.calibration import brier_score
    from medtl.evaluation.metrics import no_skill

    rng = np.random.default_rng(12)
    y = rng.random(83) < 0.48
    ns = no_skill(y)
    p = y.mean()
    assert ns["prevalence"] == pytest.approx(p)
    assert ns["accuracy"] == pytest.approx(max(np.mean(y), np.mean(~y)))  # always the majority class
    assert ns["brier"] == pytest.approx(np.mean((p - y) ** 2))  # always predicting the prevalence
    const = np.full(len(y), p)
    assert ns["brier"] == pytest.approx(brier_score(np.c_[1 - const, const], y.astype(int)))
    assert ns["auprc"] == pytest.approx(skm.average_precision_score(y, const))
    assert ns["auroc"] == pytest.approx(skm.roc_auc_score(y, const)) == pytest.approx(0.5)
    with pytest.raises(MedtlError, match="y_true"):
        no_skill(np.array(["a", "b"]))


def test_an_unweighted_confusion_matrix_holds_counts():
    """Counts are integers (a notebook showed 12., 3.); weighted resamples stay real numbers."""
    from medtl.evaluation.metrics import classification_metrics, confusion_matrix

    y, P = np.array([0, 1, 1, 0]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    cm = classification_metrics(y, P, 0.5)["confusion_matrix"]
    assert cm.dtype.kind == "i" and cm.tolist() == [[1, 1], [1, 1]]
    assert confusion_matrix(y, [0, 1, 0, 1], 2).dtype.kind == "i"
    assert confusion_matrix(y, [0, 1, 0, 1], 2, weights=[0.5, 1, 1, 1]).dtype.kind == "f"
