"""Diagnostic metrics as pure functions on numpy arrays.

Every function takes optional case ``weights``: ``None`` (each case once), a ``(n,)`` vector, or a
``(B, n)`` matrix of bootstrap counts. With a matrix the metric is computed for all B resamples at
once and a ``(B,)`` array comes back; with ``None`` or a vector, a float. Resampling by integer
counts gives exactly the metric of the resampled data set, so one code path serves the point
estimate and the bootstrap (see bootstrap.py).

Undefined values (a single-class set for AUROC, no predicted positives for PPV, ...) are ``nan``,
never a stand-in number; the report turns them into ``null`` plus a reason.

Conventions: labels are class indices ``0..K-1``; for binary tasks class 1 is the positive class
and ``score`` is its probability; a case is called positive when ``score >= threshold``.

Inputs are checked by the shared helpers :func:`check_scores`, :func:`check_probs`,
:func:`check_binary_labels` and :func:`check_class_labels` (also used by calibration, thresholds,
delong and bootstrap): NaN or infinite scores, and labels that are not 0/1 (binary) or class indices
(multiclass), raise a MedtlError naming the argument instead of giving a wrong number or nan.
"""

from __future__ import annotations

import numpy as np

from medtl.errors import MedtlError

__all__ = [
    "check_scores",
    "check_probs",
    "check_binary_labels",
    "check_class_labels",
    "auroc",
    "average_precision",
    "roc_curve",
    "pr_curve",
    "confusion_matrix",
    "binary_scores",
    "multiclass_scores",
    "rates_from_confusion",
    "classification_metrics",
    "regression_metrics",
    "no_skill",
    "BINARY_METRICS",
    "MULTICLASS_METRICS",
    "REGRESSION_METRICS",
    "DEFINITIONS",
    "RANGES",
]

BINARY_METRICS = (
    "auroc", "auprc", "sensitivity", "specificity", "ppv", "npv", "f1",
    "accuracy", "balanced_accuracy", "kappa", "mcc",
)  # fmt: skip
MULTICLASS_METRICS = BINARY_METRICS  # multiclass: macro averages over classes (one-vs-rest)
REGRESSION_METRICS = ("mae", "rmse", "r2", "pearson_r")

# The range each metric can take: intervals over seeds (t-intervals) are clipped to it.
RANGES = {
    **{m: (0.0, 1.0) for m in ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv", "f1", "accuracy",
                               "balanced_accuracy", "ece", "mce")},
    "kappa": (-1.0, 1.0), "mcc": (-1.0, 1.0), "pearson_r": (-1.0, 1.0), "brier": (0.0, 2.0),
    "r2": (-np.inf, 1.0), "mae": (0.0, np.inf), "rmse": (0.0, np.inf),
}  # fmt: skip

# One-line definitions, quoted by the report's methods section.
DEFINITIONS = {
    "auroc": "area under the ROC curve (Mann-Whitney; ties count 1/2); multiclass: one-vs-rest, macro mean",
    "auprc": "average precision, sum over thresholds of (R_k - R_k-1) * P_k (no interpolation); multiclass: "
    "one-vs-rest, macro mean",
    "sensitivity": "TP / (TP + FN) (recall, true-positive rate)",
    "specificity": "TN / (TN + FP) (true-negative rate)",
    "ppv": "TP / (TP + FP) (precision, positive predictive value)",
    "npv": "TN / (TN + FN) (negative predictive value)",
    "f1": "2 TP / (2 TP + FP + FN)",
    "accuracy": "correct / all",
    "balanced_accuracy": "mean of per-class sensitivity over classes present",
    "kappa": "Cohen's kappa, (p_o - p_e) / (1 - p_e)",
    "mcc": "Matthews correlation coefficient (Gorodkin's K-class form for multiclass)",
    "brier": "mean squared error of the probabilities: binary (p - y)^2, multiclass sum_k (p_k - y_k)^2",
    "ece": "expected calibration error, sum_b n_b/n |acc_b - conf_b|",
    "mce": "maximum calibration error, max_b |acc_b - conf_b| over non-empty bins",
    "mae": "mean |y - y_hat|",
    "rmse": "sqrt(mean (y - y_hat)^2)",
    "r2": "1 - SS_res / SS_tot (coefficient of determination)",
    "pearson_r": "Pearson correlation of y and y_hat",
}


PROB_TOLERANCE = 1e-6  # float32 softmax outputs may stray this far outside [0, 1]


def first_bad(mask: np.ndarray) -> str:
    idx = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
    more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
    return ", ".join(map(str, idx[:5])) + more


def as_float(a, name: str) -> np.ndarray:
    try:
        return np.asarray(a, dtype=float)
    except (TypeError, ValueError) as err:
        raise MedtlError(f"must be numbers ({err})", name) from err


def _check_length(k: int, n: int | None, name: str) -> None:
    if n is not None and k != n:
        raise MedtlError(f"has {k} cases where {n} are expected (one per label)", name)
    if k == 0:
        raise MedtlError("no cases: a metric of nothing is not defined", name)


def check_scores(score, name: str = "score", n: int | None = None) -> np.ndarray:
    """``score`` as a finite float (n,) array; MedtlError naming ``name`` otherwise.

    NaN or inf cannot be ranked or binned meaningfully (numpy sorts NaN above every number, so a
    NaN score would count as the highest), so they are refused rather than scored."""
    s = as_float(score, name)
    if s.ndim != 1:
        raise MedtlError(f"must be one score per case, a 1-D array; got shape {s.shape}", name)
    _check_length(len(s), n, name)
    bad = ~np.isfinite(s)
    if bad.any():
        raise MedtlError(f"{int(bad.sum())} of {len(s)} values are NaN or infinite (at index {first_bad(bad)}); "
                         "drop those cases or fix the model output", name)  # fmt: skip
    return s


def check_probs(probs, name: str = "probs", n: int | None = None) -> np.ndarray:
    """``probs`` as a finite float (n, K >= 2) array of values in [0, 1]; MedtlError naming ``name``."""
    P = as_float(probs, name)
    if P.ndim != 2 or P.shape[1] < 2:
        raise MedtlError(f"must be a (cases, classes) array with at least 2 classes; got shape {P.shape}", name)
    _check_length(len(P), n, name)
    bad = ~np.isfinite(P)
    if bad.any():
        raise MedtlError(f"NaN or infinite probabilities for the cases at index {first_bad(bad)}", name)
    out = (P < -PROB_TOLERANCE) | (P > 1 + PROB_TOLERANCE)
    if out.any():
        raise MedtlError(f"probabilities outside [0, 1] for the cases at index {first_bad(out)} "
                         "(logits instead of probabilities?)", name)  # fmt: skip
    return P


def _label_values(y: np.ndarray) -> str:
    vals = np.unique(y.astype(str)) if y.dtype.kind in "OUS" else np.unique(y)
    return ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in vals[:6]) + (" ..." if len(vals) > 6 else "")


def _numbers_from_objects(y: np.ndarray) -> np.ndarray:
    # An object array of numbers (e.g. from a pandas column) is read as numbers; text stays text,
    # so "1" is not taken for the class 1.
    if y.dtype.kind == "O" and all(isinstance(v, (int, float, np.integer, np.floating)) for v in y):
        return y.astype(float)
    return y


def check_binary_labels(y_true, name: str = "y_true", n: int | None = None) -> np.ndarray:
    """Binary labels as a bool (n,) array: True/False or the numbers 0 and 1 (1 = positive).

    Anything else (strings, -1/+1, NaN) has no agreed positive class here, so it is refused with a
    MedtlError naming ``name`` rather than silently mapped."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise MedtlError(f"must be one label per case, a 1-D array; got shape {y.shape}", name)
    _check_length(len(y), n, name)
    if y.dtype == bool:
        return y
    y = _numbers_from_objects(y)
    if y.dtype.kind in "iuf":
        ok = (y == 0) | (y == 1)
        if ok.all():
            return y == 1
    raise MedtlError(f"binary labels must be 0/1 or True/False (1 = positive class); got values "
                     f"{_label_values(y)}: map them to 0/1 first", name)  # fmt: skip


def check_class_labels(y_true, n_classes: int, name: str = "y_true", n: int | None = None) -> np.ndarray:
    """Class labels as an int (n,) array of indices in ``0..n_classes-1``; MedtlError naming ``name``."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise MedtlError(f"must be one label per case, a 1-D array; got shape {y.shape}", name)
    _check_length(len(y), n, name)
    if y.dtype == bool:
        y = y.astype(int)
    y = _numbers_from_objects(y)
    if y.dtype.kind in "iuf":
        ok = np.isfinite(y) & (y == np.round(y)) & (y >= 0) & (y < n_classes)
        if ok.all():
            return y.astype(int)
    raise MedtlError(f"labels must be class indices 0..{n_classes - 1}; got values {_label_values(y)} "
                     "(map class names to indices first)", name)  # fmt: skip


def as_weights(weights, n: int) -> tuple[np.ndarray, bool]:
    """Weights as a float (B, n) matrix, and whether the caller passed a matrix (wants (B,) back)."""
    if weights is None:
        return np.ones((1, n)), False
    w = as_float(weights, "weights")
    if w.ndim not in (1, 2) or w.shape[-1] != n:
        raise MedtlError(f"must be (n,) or (resamples, n) with n = {n} cases; got shape {w.shape}", "weights")
    if not np.isfinite(w).all() or (w < 0).any():
        raise MedtlError("weights must be finite and non-negative", "weights")
    if w.ndim == 1:
        return w[None, :], False
    return w, True


def unbatch(x: np.ndarray, batched: bool):
    return x if batched else float(x[0])


def safe_div(a, b):
    # A zero denominator means "undefined", so nan, not 0 or a warning.
    a, b = np.broadcast_arrays(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    out = np.full(a.shape, np.nan)
    np.divide(a, b, out=out, where=b != 0)
    return out


def _tie_groups(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending sort order and the start index of each run of equal scores in it."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    return order, starts


def _grouped_counts(y: np.ndarray, score: np.ndarray, W: np.ndarray):
    """Weighted positives and negatives per distinct score (ascending): two (B, k) arrays."""
    order, starts = _tie_groups(score)
    wp = np.add.reduceat((W * y)[:, order], starts, axis=1)
    wn = np.add.reduceat((W * ~y)[:, order], starts, axis=1)
    return wp, wn, score[order][starts]


def auroc(y_true, score, weights=None):
    """Area under the ROC curve of binary ``y_true`` (bool / 0-1) against ``score``; nan if one class."""
    y = check_binary_labels(y_true)
    s = check_scores(score, n=len(y))
    W, batched = as_weights(weights, len(y))
    wp, wn, _ = _grouped_counts(y, s, W)
    # Each positive beats the negatives below its score and ties half of those at its score.
    neg_below = np.cumsum(wn, axis=1) - wn
    num = (wp * (neg_below + 0.5 * wn)).sum(axis=1)
    return unbatch(safe_div(num, wp.sum(axis=1) * wn.sum(axis=1)), batched)


def cumulative_counts(y, s, W):
    """Cumulative weighted TP and FP counts as the threshold falls through each distinct score."""
    wp, wn, thr = _grouped_counts(y, s, W)
    tps = np.cumsum(wp[:, ::-1], axis=1)
    fps = np.cumsum(wn[:, ::-1], axis=1)
    return tps, fps, thr[::-1]


def average_precision(y_true, score, weights=None):
    """Average precision (area under the PR curve, step-wise as scikit-learn); nan if no positives."""
    y = check_binary_labels(y_true)
    s = check_scores(score, n=len(y))
    W, batched = as_weights(weights, len(y))
    tps, fps, _ = cumulative_counts(y, s, W)
    # Where nothing is called positive yet precision is 0/0; its recall step is 0, so use 0.
    precision = np.nan_to_num(safe_div(tps, tps + fps))
    recall = safe_div(tps, tps[:, -1:])
    steps = np.diff(recall, axis=1, prepend=0.0)
    return unbatch((steps * precision).sum(axis=1), batched)


def roc_curve(y_true, score, weights=None):
    """ROC points ``(fpr, tpr, thresholds)`` starting at (0, 0); weights must be None or a vector."""
    y = check_binary_labels(y_true)
    W, _ = as_weights(weights, len(y))
    tps, fps, thr = cumulative_counts(y, check_scores(score, n=len(y)), W)
    tpr = np.c_[np.zeros((len(W), 1)), safe_div(tps, tps[:, -1:])]
    fpr = np.c_[np.zeros((len(W), 1)), safe_div(fps, fps[:, -1:])]
    return fpr[0], tpr[0], np.r_[np.inf, thr]


def pr_curve(y_true, score, weights=None):
    """Precision-recall points ``(recall, precision, thresholds)`` starting at recall 0, precision 1."""
    y = check_binary_labels(y_true)
    W, _ = as_weights(weights, len(y))
    tps, fps, thr = cumulative_counts(y, check_scores(score, n=len(y)), W)
    precision = np.nan_to_num(safe_div(tps, tps + fps), nan=1.0)
    recall = safe_div(tps, tps[:, -1:])
    return np.r_[0.0, recall[0]], np.r_[1.0, precision[0]], np.r_[np.inf, thr]


def confusion_matrix(y_true, y_pred, n_classes: int, weights=None):
    """Weighted confusion matrix, rows = true class, columns = predicted class: (K, K) or (B, K, K)."""
    y = check_class_labels(y_true, n_classes)
    p = check_class_labels(y_pred, n_classes, "y_pred", n=len(y))
    W, batched = as_weights(weights, len(y))
    # One matrix product counts all cells for all resamples at once.
    cell = np.zeros((len(y), n_classes * n_classes))
    cell[np.arange(len(y)), y * n_classes + p] = 1.0
    cm = (W @ cell).reshape(len(W), n_classes, n_classes)
    if weights is None:
        cm = cm.astype(np.int64)  # unweighted: counts
    return cm if batched else cm[0]


def rates_from_confusion(cm) -> dict[str, np.ndarray]:
    """Per-class one-vs-rest rates from a (..., K, K) confusion matrix: arrays of shape (..., K)."""
    cm = as_float(cm, "cm")
    if cm.ndim < 2 or cm.shape[-1] != cm.shape[-2] or not np.isfinite(cm).all() or (cm < 0).any():
        raise MedtlError(f"must be square (..., K, K) counts, finite and >= 0; got shape {cm.shape}", "cm")
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    actual = cm.sum(axis=-1)
    called = cm.sum(axis=-2)
    total = actual.sum(axis=-1, keepdims=True)
    fn, fp = actual - tp, called - tp
    tn = total - tp - fn - fp
    return {
        "sensitivity": safe_div(tp, tp + fn),
        "specificity": safe_div(tn, tn + fp),
        "ppv": safe_div(tp, tp + fp),
        "npv": safe_div(tn, tn + fn),
        "f1": safe_div(2 * tp, 2 * tp + fp + fn),
        "support": actual,
    }


def _agreement(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, Cohen's kappa and MCC from a (B, K, K) confusion matrix."""
    total = cm.sum(axis=(-2, -1))
    correct = np.trace(cm, axis1=-2, axis2=-1)
    t = cm.sum(axis=-1)  # true class counts
    p = cm.sum(axis=-2)  # predicted class counts
    po = safe_div(correct, total)
    pe = safe_div((t * p).sum(axis=-1), total**2)
    tp_ = (t * p).sum(axis=-1)
    mcc_den = np.sqrt((total**2 - (p * p).sum(axis=-1)) * (total**2 - (t * t).sum(axis=-1)))
    return {
        "accuracy": po,
        "kappa": safe_div(po - pe, 1.0 - pe),
        "mcc": safe_div(correct * total - tp_, mcc_den),
    }


def binary_scores(cm) -> dict[str, np.ndarray]:
    """Threshold metrics of the positive class (index 1) from a (B, 2, 2) confusion matrix."""
    r = rates_from_confusion(cm)
    out = {k: r[k][..., 1] for k in ("sensitivity", "specificity", "ppv", "npv", "f1")}
    out.update(_agreement(np.asarray(cm, dtype=float)))
    out["balanced_accuracy"] = _balanced_accuracy(r)
    return out


def _balanced_accuracy(r: dict) -> np.ndarray:
    # As scikit-learn: mean recall over the classes present in the truth.
    present = r["support"] > 0
    recall = np.where(present, r["sensitivity"], 0.0)
    return safe_div(recall.sum(axis=-1), present.sum(axis=-1))


def multiclass_scores(cm) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Macro-averaged metrics (B,) and per-class metrics (B, K) from a (B, K, K) confusion matrix."""
    r = rates_from_confusion(cm)
    with np.errstate(invalid="ignore"):
        # Macro means are undefined when any class's value is (nan propagates), except balanced
        # accuracy, which (as scikit-learn) averages recall over the classes present.
        macro = {k: r[k].mean(axis=-1) for k in ("sensitivity", "specificity", "ppv", "npv", "f1")}
    macro["balanced_accuracy"] = _balanced_accuracy(r)
    macro.update(_agreement(np.asarray(cm, dtype=float)))
    per_class = {k: r[k] for k in ("sensitivity", "specificity", "ppv", "npv", "f1")}
    return macro, per_class


def classification_metrics(y_true, probs, threshold: float | None = 0.5, weights=None) -> dict:
    """All classification metrics of class indices ``y_true`` against probabilities ``probs`` (n, K).

    Binary (K == 2): the positive class is index 1 and is called when ``probs[:, 1] >= threshold``.
    Multiclass: the predicted class is the argmax (``threshold`` is ignored); scalar metrics are
    macro means and ``per_class`` holds each class's one-vs-rest value.
    Returns ``{"metrics": {...}, "per_class": {...}, "confusion_matrix": array}``; with a (B, n)
    weights matrix every value gains a leading resample axis.
    """
    P = check_probs(probs)
    K = P.shape[1]
    y = check_class_labels(y_true, K, n=len(P))
    if threshold is not None and not (isinstance(threshold, (int, float, np.number)) and np.isfinite(threshold)):
        raise MedtlError(f"must be a finite number or None, got {threshold!r}", "threshold")
    W, batched = as_weights(weights, len(y))
    if K == 2:
        pred = (P[:, 1] >= (0.5 if threshold is None else threshold)).astype(int)
        cm = confusion_matrix(y, pred, 2, W)
        m = binary_scores(cm)
        m["auroc"] = auroc(y == 1, P[:, 1], W)
        m["auprc"] = average_precision(y == 1, P[:, 1], W)
        per_class = {}
    else:
        cm = confusion_matrix(y, P.argmax(axis=1), K, W)
        m, per_class = multiclass_scores(cm)
        per_class["auroc"] = np.stack([auroc(y == k, P[:, k], W) for k in range(K)], axis=-1)
        per_class["auprc"] = np.stack([average_precision(y == k, P[:, k], W) for k in range(K)], axis=-1)
        with np.errstate(invalid="ignore"):
            m["auroc"] = per_class["auroc"].mean(axis=-1)
            m["auprc"] = per_class["auprc"].mean(axis=-1)
    if not batched:
        m = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in m.items()}
        per_class = {k: np.asarray(v)[0] for k, v in per_class.items()}
        cm = cm[0].astype(np.int64) if weights is None else cm[0]  # unweighted: counts
    return {"metrics": m, "per_class": per_class, "confusion_matrix": cm}


def regression_metrics(y_true, y_pred, weights=None) -> dict:
    """MAE, RMSE, R^2 and Pearson r of ``y_pred`` against ``y_true`` (floats, or (B,) arrays)."""
    y = check_scores(y_true, "y_true")
    f = check_scores(y_pred, "y_pred", n=len(y))
    W, batched = as_weights(weights, len(y))
    n = W.sum(axis=1)
    err = f - y
    mean_y = safe_div(W @ y, n)
    mean_f = safe_div(W @ f, n)
    dy = y[None, :] - mean_y[:, None]
    df = f[None, :] - mean_f[:, None]
    ss_res = W @ (err**2)
    ss_tot = (W * dy**2).sum(axis=1)
    cov = (W * dy * df).sum(axis=1)
    var_f = (W * df**2).sum(axis=1)
    # Constant values leave rounding residue (~1e-30 relative) in the weighted sums of squares: that is
    # zero, so r2 / pearson_r come out undefined instead of a number made of rounding error.
    ss_tot = np.where(ss_tot <= 1e-24 * n * (mean_y**2 + 1.0), 0.0, ss_tot)
    var_f = np.where(var_f <= 1e-24 * n * (mean_f**2 + 1.0), 0.0, var_f)
    out = {
        "mae": safe_div(W @ np.abs(err), n),
        "rmse": np.sqrt(safe_div(ss_res, n)),
        "r2": 1.0 - safe_div(ss_res, ss_tot),
        "pearson_r": safe_div(cov, np.sqrt(ss_tot * var_f)),
    }
    return {k: unbatch(v, batched) for k, v in out.items()}


def no_skill(y_true) -> dict[str, float]:
    """What predictions that ignore the image score on these binary labels (1 = positive), to read a
    model's values against: accuracy of always calling the majority class, the Brier score of always
    predicting the prevalence p (p(1 - p)), AUPRC of a constant score (p) and AUROC (0.5)."""
    y = check_binary_labels(y_true)
    if not len(y):
        raise MedtlError("y_true: no cases", "y_true")
    p = float(y.mean())
    return {"prevalence": p, "accuracy": max(p, 1.0 - p), "brier": p * (1.0 - p), "auprc": p, "auroc": 0.5}
