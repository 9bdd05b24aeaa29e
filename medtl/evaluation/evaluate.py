"""From a predictions table to the report's numbers: a JSON-ready dict (typed by report/schema.py).

Per task, strategy and run: the threshold (binary) and the temperature are fitted on the validation
rows; metrics, calibration and curves are computed on the test rows with bootstrap intervals. Runs
of one strategy that differ only in seed are summarised over seeds; runs at several label fractions
give a label-fraction curve; strategies evaluated on the same test cases are compared by DeLong.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from medtl import __version__
from medtl.errors import MedtlError
from medtl.evaluation import calibration as cal
from medtl.evaluation.bootstrap import bootstrap_samples, percentile_interval, sampling_units, seed_summary
from medtl.evaluation.delong import delong_macro_test, delong_test
from medtl.evaluation.metrics import (
    BINARY_METRICS,
    RANGES,
    REGRESSION_METRICS,
    classification_metrics,
    cumulative_counts,
    no_skill,
    regression_metrics,
    safe_div,
)
from medtl.evaluation.paired import paired_error_test
from medtl.evaluation.predictions import (
    NEAR_COPY_GROUP,
    PREDICT_THRESHOLD,
    TaskInfo,
    label_indices,
    load_predictions,
    logit_matrix,
    probabilities,
    task_infos,
    validate_predictions,
)
from medtl.evaluation.thresholds import DEFAULT_THRESHOLD, RULES, Threshold, choose_threshold
from medtl.plain import plain

SCHEMA = "medtl.evaluation.report"
SCHEMA_VERSION = "1.0"
CALIBRATION_METRICS = ("brier", "ece", "mce")
CLASS_METRICS = ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv", "f1")
# statistics whose value moves with the share of each class in the test set (bootstrapped unstratified)
DEPEND_ON_THE_CLASS_MIX = ("auprc", "ppv", "npv", "f1", "accuracy", "kappa", "mcc", *CALIBRATION_METRICS)
# The rule name (report.json's since it was added) of a threshold taken from the predictions, and where it came
# from: predict's results.csv does not say whether predict was given --threshold, so neither may the report.
PREDICT_RULE = "model"
PREDICT_SOURCE = "its results.csv's threshold column: the model's stored threshold, or predict's --threshold if given"


@dataclass
class EvalSettings:
    """How predictions are evaluated; every field is recorded in report.json."""

    val_split: str = "val"
    test_split: str = "test"
    threshold_rule: str = "youden"  # youden | sensitivity | specificity
    target: float | None = None  # the target sensitivity / specificity
    positive_class: str | None = None  # binary: default is the last prob_ column
    n_boot: int = 1000
    seed: int = 0
    level: float = 0.95
    n_bins: int = cal.DEFAULT_BINS
    curve_points: int = 101
    model_threshold: float | None = None  # binary: the threshold the predictions were made at (predict's results)

    def __post_init__(self):
        if self.threshold_rule not in RULES:
            raise MedtlError(f"unknown threshold rule {self.threshold_rule!r}; use {', '.join(RULES)}", "threshold_rule")
        if self.threshold_rule != "youden" and (self.target is None or not 0 < self.target <= 1):
            raise MedtlError(f"rule {self.threshold_rule!r} needs a target in (0, 1]", "target")
        if self.n_boot < 0 or not 0 < self.level < 1 or self.n_bins < 1:
            raise MedtlError("n_boot must be >= 0, level in (0, 1), n_bins >= 1", "settings")
        if self.val_split == self.test_split:
            raise MedtlError("the validation and test splits must differ (thresholds are never picked on test)",
                             "val_split")  # fmt: skip

    def ci_method(self, kinds: Sequence[str] = ("classification",)) -> str:
        """How the intervals were made, for tasks of these kinds (a regression has no classes to stratify by)."""
        if self.n_boot == 0:
            return "no confidence intervals (n_boot = 0)"
        classes = set(kinds) != {"regression"}
        strata = ("stratified by true class for statistics of one class (sensitivity, specificity, AUROC, balanced "
                  "accuracy), unstratified for those that move with the class mix (PPV, NPV, F1, AUPRC, accuracy, "
                  "kappa, MCC, calibration)" + (" (classification; regression cases unstratified)"
                                                 if "regression" in kinds else "")) if classes else "unstratified"
        return (f"{self.level:.0%} percentile bootstrap, {self.n_boot} resamples (seed {self.seed}), {strata}, "
                "resampling patients (all their images together) when patient ids are given, "
                "else cases, and near-copies of one image (near_copy_group) together")  # fmt: skip


# ----------------------------------------------------------------------------- helpers


def _num(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if np.isfinite(v) else None


def holm(comparisons: list[dict]) -> list[dict]:
    """Each comparison with ``p_holm``: its p-value adjusted by Holm's step-down method (Holm 1979) over
    every tested comparison of the task, which holds the family-wise error rate at the nominal level."""
    tested = sorted((c["p_value"], i) for i, c in enumerate(comparisons) if c.get("p_value") is not None)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))  # step-down: never below an earlier one
        comparisons[i]["p_holm"] = running
    return comparisons


def wilson_interval(successes: int, n: int, level: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion (Wilson 1927)."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if successes == 0 else low), (1.0 if successes == n else high)  # exact at the ends


def auroc_score_interval(auroc: float, n_pos: int, n_neg: int, level: float) -> tuple[float, float]:
    """Newcombe's score interval of an AUROC (Newcombe 2006, Stat Med 25:559, method 5): the AUROCs
    theta whose Hanley-McNeil variance, with both class sizes replaced by their mean N* = (m + n) / 2, puts
    the estimate within z standard errors, ``m n (est - theta)^2 = z^2 theta (1 - theta) (2 + h + (1 + 2h)
    theta (1 - theta)) / ((2 - theta) (1 + theta))`` with h = N* - 1. Unlike the bootstrap it has width
    at an AUROC of 0 or 1 (perfect separation)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    z2, mn, h = float(norm.ppf(0.5 + level / 2)) ** 2, float(n_pos * n_neg), (n_pos + n_neg) / 2 - 1

    def inner(t):
        return 2 + h + (1 + 2 * h) * t * (1 - t)

    if auroc >= 1:  # the estimate is itself a root: with (1 - t) divided out, the search finds the other end
        return float(brentq(lambda t: mn * (1 - t) * (2 - t) * (1 + t) - z2 * t * inner(t), 0.0, 1.0)), 1.0
    if auroc <= 0:  # likewise with t divided out
        return 0.0, float(brentq(lambda t: mn * t * (2 - t) * (1 + t) - z2 * (1 - t) * inner(t), 0.0, 1.0))

    def excess(t):  # >= 0 outside the interval, < 0 inside
        return mn * (auroc - t) ** 2 * (2 - t) * (1 + t) - z2 * t * (1 - t) * inner(t)

    low, high = brentq(excess, 0.0, auroc), brentq(excess, auroc, 1.0)
    return float(low), float(high)


# Below this many sampling units in the smaller class the percentile bootstrap under-covers an AUROC (a review's
# simulation, binormal scores: 73% of 95% intervals covered with 5 positives, 80% with 10, 90% with 30), while
# Newcombe's score interval covered 96-97%: an AUROC's interval is then the wider of the two.
FEW_FOR_THE_BOOTSTRAP = 50


def _auroc_where_degenerate(d: dict | None, n_pos: int, n_neg: int, level: float) -> None:
    """An AUROC of 1 (every positive above every negative) is 1 in every bootstrap resample; Newcombe's
    interval says how uncertain it still is on this many cases. With a small class (:data:`FEW_FOR_THE_BOOTSTRAP`)
    Newcombe's interval widens the bootstrap's where it is wider."""
    if not d or d["value"] is None or d["ci_low"] is None or min(n_pos, n_neg) == 0:
        return
    if d["value"] in (0.0, 1.0) and d["ci_low"] == d["ci_high"]:
        d["ci_low"], d["ci_high"] = auroc_score_interval(d["value"], int(n_pos), int(n_neg), level)
        d["ci_method"] = "Newcombe score interval (an AUROC of 0 or 1 does not vary under the bootstrap)"
    elif min(n_pos, n_neg) < FEW_FOR_THE_BOOTSTRAP:
        low, high = auroc_score_interval(d["value"], int(n_pos), int(n_neg), level)
        if low < d["ci_low"] or high > d["ci_high"]:
            d["ci_low"], d["ci_high"] = min(low, d["ci_low"]), max(high, d["ci_high"])
            d["ci_method"] = (f"the wider of the bootstrap's and Newcombe's score interval (fewer than "
                              f"{FEW_FOR_THE_BOOTSTRAP} cases in a class, where the bootstrap's is too narrow)")


SAME_IN_EVERY_RUN = "Same in every run: the representative run's interval over the test cases"
SHOWN_RESOLUTION = 5e-4  # values closer than this look the same at the three decimals reports show


def _count_units(mask: np.ndarray, units: np.ndarray | None) -> int:
    """The sampling units among the cases ``mask`` selects: a patient or near-copy group counts once."""
    return int(mask.sum()) if units is None else len(np.unique(units[mask]))


def _has_copies(test: pd.DataFrame) -> bool:
    """Whether the cases carry near-copy groups, which join cases into one bootstrap unit."""
    return bool(NEAR_COPY_GROUP in test and test[NEAR_COPY_GROUP].notna().any())


def _proportions(positive: np.ndarray, called: np.ndarray, units: np.ndarray | None) -> dict[str, tuple[int, int]]:
    """(successes, denominator) of each proportion of one class against the rest, in sampling units (its
    cases share one outcome when the proportion is 0 or 1, the only time these counts are used).
    ``positive``: the true class; ``called``: the decision."""
    def count(mask):
        return _count_units(mask, units)

    tp, tn = positive & called, ~positive & ~called
    return {"sensitivity": (count(tp), count(positive)), "specificity": (count(tn), count(~positive)),
            "ppv": (count(tp), count(called)), "npv": (count(tn), count(~called)),
            "accuracy": (count(tp | tn), count(np.ones_like(positive)))}


def _wilson_where_degenerate(metrics: dict, counts: dict[str, tuple[int, int]], level: float) -> None:
    """A proportion of 0 or 1 (30 of 30 negatives called negative) cannot vary under the bootstrap, whose
    interval collapses to the point; Wilson's interval says how uncertain it still is. ``counts``: the
    (successes, denominator) of each proportion in ``metrics`` that may get one."""
    for name, (k, n) in counts.items():
        d = metrics.get(name)
        if not d or d["value"] is None or n == 0 or d["value"] not in (0.0, 1.0) or d["ci_low"] != d["ci_high"]:
            continue
        d["ci_low"], d["ci_high"] = wilson_interval(int(k), int(n), level)
        d["ci_method"] = "Wilson score interval (a proportion of 0 or 1 does not vary under the bootstrap)"


def _metric(value, low, high, reason: str | None = None, n_undefined: int = 0) -> dict:
    d = {"value": _num(value), "ci_low": _num(low), "ci_high": _num(high)}
    if d["value"] is None:
        d.update(ci_low=None, ci_high=None, reason=reason or "undefined on this test set")
    else:
        if n_undefined:
            d["n_undefined_resamples"] = int(n_undefined)  # excluded from the interval
        if d["ci_low"] is not None and not d["ci_low"] <= d["value"] <= d["ci_high"]:
            # Said, not hidden: a statistic biased under resampling (binned ECE at small n) does this.
            d["outside_interval"] = True
    return d


def _as_frame(predictions) -> tuple[pd.DataFrame, list[str]]:
    """A validated table from a DataFrame, a path, or a list of them or of (DataFrame, name) pairs (a table
    already read, named for error messages), concatenated."""
    items = predictions if isinstance(predictions, (list, tuple)) else [predictions]
    frames, sources = [], []
    for item in items:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], pd.DataFrame):
            table, name = item
            frames.append(validate_predictions(table, name))
            sources.append(str(name))
        elif isinstance(item, pd.DataFrame):
            frames.append(validate_predictions(item))
            sources.append("<DataFrame>")
        else:
            frames.append(load_predictions(item))
            sources.append(str(item))
    if not frames:
        raise MedtlError("no predictions given", "predictions")
    df = frames[0] if len(frames) == 1 else validate_predictions(pd.concat(frames, ignore_index=True), "+".join(sources))
    return df, sources


def _groups(test: pd.DataFrame) -> np.ndarray | None:
    """The bootstrap's sampling unit of each case: its patient (a case without one is its own unit), with the
    patients of a near-copy group (``near_copy_group``: images that are one scan re-encoded or re-cut, which
    per-image data sets give different "patients") joined into one unit; None when every case is its own."""
    pid = test["patient_id"]
    copies = test[NEAR_COPY_GROUP] if NEAR_COPY_GROUP in test else pd.Series([None] * len(test), index=test.index)
    if pid.isna().all() and copies.isna().all():
        return None
    case = test["case_id"] if "case_id" in test else test.index.to_series()  # paired frames are indexed by case
    units = np.where(pid.isna(), ("case:" + case.astype(str)).to_numpy(), ("patient:" + pid.astype(str)).to_numpy())
    return units if copies.isna().all() else sampling_units(units, copies.to_numpy(object))


def _grid_curves(y: np.ndarray, s: np.ndarray, W: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC (TPR on an FPR grid) and PR (precision on a recall grid) for each resample: two (B, G) arrays."""
    tps, fps, _ = cumulative_counts(y, s, W)
    zero = np.zeros((len(W), 1))
    tpr = np.c_[zero, safe_div(tps, tps[:, -1:])]
    fpr = np.c_[zero, safe_div(fps, fps[:, -1:])]
    recall = safe_div(tps, tps[:, -1:])
    precision = np.nan_to_num(safe_div(tps, tps + fps), nan=1.0)
    roc = np.full((len(W), len(grid)), np.nan)
    pr = np.full((len(W), len(grid)), np.nan)
    for b in range(len(W)):
        if np.isfinite(tpr[b, -1]) and np.isfinite(fpr[b, -1]):
            roc[b] = np.interp(grid, fpr[b], tpr[b])
        if np.isfinite(recall[b, -1]):
            # Step curve: the precision where recall first reaches each grid value.
            idx = np.minimum(np.searchsorted(recall[b], grid, side="left"), recall.shape[1] - 1)
            pr[b] = precision[b, idx]
    return roc, pr


def _class_reason(name: str, k: int, counts: np.ndarray, cm: np.ndarray, classes: Sequence[str], thr) -> str:
    c = classes[k]
    n = counts.sum()
    called = cm[:, k].sum() if cm is not None else None
    if name in ("auroc", "auprc"):
        if counts[k] == 0:
            return f"no {c!r} cases in the test set: {name.upper()} needs cases of both kinds"
        return f"only {c!r} cases in the test set: {name.upper()} needs cases of both kinds"
    if name == "sensitivity":
        return f"no {c!r} cases in the test set"
    if name == "specificity":
        return f"no cases other than {c!r} in the test set"
    if name == "ppv":
        at = f" at threshold {thr:.4g}" if thr is not None else ""
        return f"no case was called {c!r}{at}"
    if name == "npv":
        return f"every case was called {c!r}"
    if name == "f1":
        return f"no {c!r} cases and none called {c!r}"
    return f"undefined ({called}/{n} called {c!r})"


def _reason(name: str, kind: str, counts, cm, classes, thr, per_class_values=None) -> str:
    base = name.split("/")[-1]
    if kind == "regression":
        return {"r2": "the test labels are constant", "pearson_r": "the test labels or predictions are constant"}.get(
            base, "no test cases"
        )
    if base in ("mcc", "kappa"):
        return ("all test cases fall in one true class or one predicted class (a zero denominator); "
                "the value is undefined, not 0")  # fmt: skip
    if base in CLASS_METRICS:
        if kind == "binary":
            return _class_reason(base, 1, counts, cm, classes, thr)
        bad = [k for k in range(len(classes)) if per_class_values is None or not np.isfinite(per_class_values[k])]
        k = bad[0] if bad else 0
        return f"macro mean undefined: {_class_reason(base, k, counts, cm, classes, thr)}"
    return "undefined on this test set"


# ----------------------------------------------------------------------------- one run


def _split_rows(rows: pd.DataFrame, st: EvalSettings, run: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    test = rows[rows["split"] == st.test_split]
    val = rows[rows["split"] == st.val_split]
    if test.empty:
        have = ", ".join(sorted(rows["split"].unique()))
        raise MedtlError(f"run {run!r} has no rows with split {st.test_split!r} (splits present: {have})", "split")
    return test, val


def _run_header(rows: pd.DataFrame, test: pd.DataFrame, val: pd.DataFrame, groups: np.ndarray | None) -> dict:
    first = rows.iloc[0]
    lf = first.get("label_fraction") if "label_fraction" in rows else None
    return {
        "run_id": str(first["run_id"]),
        "strategy": str(first["strategy"]),
        "seed": None if pd.isna(first["seed"]) else int(first["seed"]),
        "label_fraction": _num(lf) if lf is not None and not pd.isna(lf) else None,
        "n_test": int(len(test)),
        "n_val": int(len(val)),
        "n_test_patients": None if groups is None else int(len(set(groups))),
        # a manifest without patient ids uses each image's path as its id (medtl.data.build)
        "patient_ids_per_image": None if groups is None else bool(
            (test["patient_id"].astype(str) == test["case_id"].astype(str)).all()),
        # near-copies joined into one unit: the units are then fewer than the patients (or images)
        "near_copy_units": _has_copies(test) or None,
        "domains_test": {str(k): int(v) for k, v in test["domain"].value_counts().items() if k != ""},
    }


def evaluate_run(rows: pd.DataFrame, info: TaskInfo, st: EvalSettings) -> dict:
    """Evaluate one run (all its rows, every split) of one task; a JSON-ready dict."""
    run = str(rows.iloc[0]["run_id"])
    test, val = _split_rows(rows, st, run)
    units = _groups(test)  # the bootstrap's sampling units, also the counts of a score interval
    if info.kind == "regression":
        return _regression_run(rows, test, val, units, st)
    return _classification_run(rows, test, val, units, info, st)


# Thresholds closer than this are one threshold: re-choosing on results.csv's 6-decimal probabilities
# moves a midpoint by up to 5e-7.
SAME_THRESHOLD = 1e-5


def _with_predict_threshold(rows: pd.DataFrame, st: EvalSettings) -> EvalSettings:
    """``st`` with this run's own ``model_threshold`` when its rows say which threshold predict applied
    (results.csv's threshold column, see batch_results): several models' results each keep their own.
    Not with a ``positive_class`` given, which may name the class predict's threshold was not for."""
    if PREDICT_THRESHOLD not in rows or st.positive_class is not None:
        return st
    values = pd.to_numeric(rows[PREDICT_THRESHOLD], errors="coerce").dropna().unique()
    return replace(st, model_threshold=float(values[0])) if len(values) == 1 else st


def _run_threshold(yv: np.ndarray, Pv: np.ndarray, P: np.ndarray, st: EvalSettings) -> Threshold:
    """A binary run's threshold: chosen on the validation rows; else the one the predictions were made at
    (``st.model_threshold``, the threshold column of predict's results.csv); else 0.5. The note says which,
    and when the validation choice differs from the threshold predict applied."""
    given = st.model_threshold
    why = f"no validation rows (split {st.val_split!r})"
    if len(yv):
        try:
            thr = choose_threshold(yv == 1, Pv[:, 1], st.threshold_rule, st.target, chosen_on=st.val_split)
        except MedtlError as err:
            why = err.reason
        else:
            if given is None or abs(thr.value - given) <= SAME_THRESHOLD:
                return thr
            # the user's predicted_label column was made at the other threshold: say both, and what it changes
            changed = int(((P[:, 1] >= thr.value) != (P[:, 1] >= given)).sum())
            return replace(thr, note=f"the threshold chosen on {st.val_split} ({thr.value:.4g}, {thr.rule}) differs "
                           f"from the threshold medtl predict applied ({given:.4g}) for its predicted_label column; "
                           f"the metrics here are at {thr.value:.4g}, which calls {changed} of {len(P)} test cases "
                           "differently from predicted_label")  # fmt: skip
    if given is not None:
        return Threshold(float(given), PREDICT_RULE, n=len(yv), note=f"{why}: the threshold medtl predict applied, "
                         f"{given:.4g}, was used ({PREDICT_SOURCE})")  # fmt: skip
    return Threshold(DEFAULT_THRESHOLD, "default", n=len(yv),
                     note=f"{why}: the default threshold {DEFAULT_THRESHOLD} was used")  # fmt: skip


def _bootstrap_table(stat, point, n, st: EvalSettings, strata, groups) -> tuple[dict, dict, dict]:
    """Point values, interval bounds and undefined-resample counts for every statistic ``stat`` returns."""
    if st.n_boot == 0:
        nan = {k: np.full(np.shape(v), np.nan) for k, v in point.items()}
        return nan, nan, {k: np.zeros(np.shape(v), int) for k, v in point.items()}
    boot = bootstrap_samples(stat, n, strata=strata, groups=groups, n_boot=st.n_boot, seed=st.seed)
    low, high, undefined = {}, {}, {}
    for k, v in boot.items():
        low[k], high[k] = percentile_interval(v, st.level)
        undefined[k] = (~np.isfinite(v)).sum(axis=0)
    return low, high, undefined


def _classification_run(rows, test, val, units, info: TaskInfo, st: EvalSettings) -> dict:
    classes = list(info.classes)
    if info.kind == "binary" and st.positive_class is not None:
        if st.positive_class not in classes:
            raise MedtlError(f"positive class {st.positive_class!r} is not one of {classes}", "positive_class")
        classes = [c for c in classes if c != st.positive_class] + [st.positive_class]
    binary = info.kind == "binary"
    y, P = label_indices(test, classes), probabilities(test, classes)
    yv, Pv = label_indices(val, classes), probabilities(val, classes)
    out = _run_header(rows, test, val, units)
    notes: list[str] = []

    # Threshold: chosen on validation only, then applied unchanged to test.
    if not binary:
        threshold = {"rule": "argmax", "value": None, "chosen_on": None,
                     "note": "multiclass: the predicted class is the one with the highest probability"}  # fmt: skip
        thr_value = None
    else:
        thr = _run_threshold(yv, Pv, P, _with_predict_threshold(rows, st))
        if thr.note:
            notes.append(f"run {out['run_id']}: {thr.note}")
        threshold = thr.to_dict()
        thr_value = thr.value

    # Temperature scaling: fitted on validation, applied to test; on the logits when the table has them.
    Lv, L = logit_matrix(val, classes), logit_matrix(test, classes)
    if Lv is None or L is None:
        Lv = L = None  # log-probabilities stand in for the logits
    with warnings.catch_warnings():  # a temperature at its bound is said once, in the notes below
        warnings.filterwarnings("ignore", message="fitted temperature", category=RuntimeWarning)
        temperature = cal.fit_temperature(Pv, yv, logits=Lv) if len(val) >= 2 else None
    P_ts = cal.apply_temperature(P, temperature, logits=L) if temperature is not None else None
    if temperature is None:
        notes.append(f"run {out['run_id']}: no validation rows, so no temperature scaling")
    elif cal.temperature_at_bound(temperature):
        notes.append(f"run {out['run_id']}: the fitted temperature {temperature:.3g} is at the bound of its "
                     "search range; the best temperature may lie beyond it")  # fmt: skip

    grid = np.linspace(0.0, 1.0, st.curve_points)
    curve_classes = [len(classes) - 1] if binary else list(range(len(classes)))

    def stat(W, curves=True):
        r = classification_metrics(y, P, thr_value, W)
        s = dict(r["metrics"])
        s.update(cal.calibration_errors(P, y, st.n_bins, W))
        s["brier"] = cal.brier_score(P, y, W)
        for k, v in r["per_class"].items():
            s[f"per_class/{k}"] = v
        if P_ts is not None:
            s.update({f"scaled/{k}": v for k, v in cal.calibration_errors(P_ts, y, st.n_bins, W).items()})
            s["scaled/brier"] = cal.brier_score(P_ts, y, W)
        for k in curve_classes if curves else ():
            s[f"roc/{k}"], s[f"pr/{k}"] = _grid_curves(y == k, P[:, k], W, grid)
        return s

    point = {k: np.asarray(v)[0] for k, v in stat(np.ones((1, len(y)))).items()}
    # Statistics of one class at a time (sensitivity, AUROC) resample within each class. Those that depend on the
    # test set's class mix (PPV, accuracy, calibration) resample the cases as they came, so that their interval
    # also covers the sampling of the prevalence: held fixed, PPV's 95% interval covered 83% at 1% prevalence.
    low, high, undef = _bootstrap_table(stat, point, len(y), st, y, units)
    mixed = [k for k in point if k.rsplit("/", 1)[-1] in DEPEND_ON_THE_CLASS_MIX]
    by_case = _bootstrap_table(lambda W: {k: v for k, v in stat(W, curves=False).items() if k in mixed},
                               {k: point[k] for k in mixed}, len(y), st, None, units)
    for table, update in zip((low, high, undef), by_case):
        table.update(update)

    counts = np.bincount(y, minlength=len(classes))
    cm = classification_metrics(y, P, thr_value)["confusion_matrix"]

    def entry(key, name):
        v = point[key]
        reason = None
        if not np.isfinite(v):
            pcv = point.get(f"per_class/{name}")
            reason = _reason(name, info.kind, counts, cm, classes, thr_value, pcv)
        return _metric(v, low[key], high[key], reason, undef[key])

    out["metrics"] = {m: entry(m, m) for m in (*BINARY_METRICS, *CALIBRATION_METRICS)}
    # the decision as classification_metrics makes it
    called = (P[:, 1] >= (0.5 if thr_value is None else thr_value)).astype(int) if binary else P.argmax(axis=1)

    def n_units(mask) -> int:
        return _count_units(mask, units)

    if st.n_boot > 0:  # without a bootstrap no metric has an interval to replace
        if binary:
            _wilson_where_degenerate(out["metrics"], _proportions(y == 1, called == 1, units), st.level)
            _auroc_where_degenerate(out["metrics"]["auroc"], n_units(y == 1), n_units(y == 0), st.level)
        else:  # accuracy is a proportion; the macro averages are not
            right = y == called
            _wilson_where_degenerate(out["metrics"], {"accuracy": (n_units(right), n_units(right | ~right))},
                                     st.level)
    if not binary:
        out["per_class"] = {}
        for k, c in enumerate(classes):
            out["per_class"][c] = {}
            for m in CLASS_METRICS:
                key = f"per_class/{m}"
                v = point[key][k]
                reason = None if np.isfinite(v) else _class_reason(m, k, counts, cm, classes, thr_value)
                out["per_class"][c][m] = _metric(v, low[key][k], high[key][k], reason, undef[key][k])
            if st.n_boot > 0:  # one class against the rest: a 2x2 table
                _wilson_where_degenerate(out["per_class"][c], _proportions(y == k, called == k, units), st.level)
                _auroc_where_degenerate(out["per_class"][c]["auroc"], n_units(y == k), n_units(y != k), st.level)
    out["threshold"] = threshold
    out["prevalence"] = {
        "test": {c: {"n": int(counts[k]), "fraction": float(counts[k] / len(y))} for k, c in enumerate(classes)},
        "val": {c: int(n) for c, n in zip(classes, np.bincount(yv, minlength=len(classes)))} if len(val) else None,
    }
    if binary:  # a constant prediction's values, to read the model's against
        out["no_skill"] = no_skill(y == 1)
    out["confusion_matrix"] = {"classes": classes, "counts": cm.astype(int).tolist(), "rows": "true",
                               "columns": "predicted", "threshold": thr_value}  # fmt: skip
    out["calibration"] = {
        "quantity": "positive-class probability vs observed positive rate" if binary
        else "top-label confidence vs top-label accuracy",
        "binning": f"{st.n_bins} equal-width bins on [0, 1]",
        "temperature": temperature,
        "fitted_on": st.val_split if temperature is not None else None,
        "temperature_fitted_to": None if temperature is None else ("logits" if L is not None else "log-probabilities"),
        "reliability": cal.reliability(P, y, st.n_bins),
        "reliability_scaled": cal.reliability(P_ts, y, st.n_bins) if P_ts is not None else None,
        "scaled": {m: entry(f"scaled/{m}", m) for m in CALIBRATION_METRICS} if P_ts is not None else None,
    }  # fmt: skip
    out["curves"] = {"roc": [], "pr": []}
    for k in curve_classes:
        r = lambda a: [None if not np.isfinite(x) else round(float(x), 4) for x in a]  # noqa: E731
        grid_l = [round(float(g), 4) for g in grid]
        out["curves"]["roc"].append({"class": classes[k], "fpr": grid_l, "tpr": r(point[f"roc/{k}"]),
                                     "tpr_low": r(low[f"roc/{k}"]), "tpr_high": r(high[f"roc/{k}"])})  # fmt: skip
        out["curves"]["pr"].append({"class": classes[k], "recall": grid_l, "precision": r(point[f"pr/{k}"]),
                                    "precision_low": r(low[f"pr/{k}"]), "precision_high": r(high[f"pr/{k}"]),
                                    "prevalence": float(counts[k] / len(y))})  # fmt: skip
    out["bootstrap"] = _boot_info(st, test, units)
    auroc = out["metrics"].get("auroc") or {}
    if auroc.get("ci_high") is not None and auroc["ci_high"] < 0.5:  # worse than chance, beyond the sampling
        notes.append(f"run {out['run_id']}: the AUROC interval lies below 0.5 ({auroc['ci_low']:.3f}–"
                     f"{auroc['ci_high']:.3f}): the model ranks these cases worse than chance. Check that the "
                     + (f"positive class ({classes[1]}) and the " if binary else "") + "labels mean what the model "
                     "was trained to predict, then whether the test images differ from its training images")
    out["notes"] = notes
    return out


def _boot_info(st: EvalSettings, test: pd.DataFrame, units: np.ndarray | None) -> dict:
    copies = units is not None and _has_copies(test)
    unit = "case" if units is None else "patient" + (", near-copy groups joined" if copies else "")
    return {"n_boot": st.n_boot, "seed": st.seed, "level": st.level, "method": "percentile", "unit": unit,
            "near_copy_groups": copies}


def _regression_run(rows, test, val, units, st: EvalSettings) -> dict:
    y = pd.to_numeric(test["label"]).to_numpy(dtype=float)
    f = test["prediction"].to_numpy(dtype=float)
    out = _run_header(rows, test, val, units)
    point = {k: np.asarray([v])[0] for k, v in regression_metrics(y, f).items()}
    low, high, undef = _bootstrap_table(lambda W: regression_metrics(y, f, W), point, len(y), st, None, units)
    out["metrics"] = {
        m: _metric(point[m], low[m], high[m], None if np.isfinite(point[m]) else _reason(m, "regression", *[None] * 4),
                   undef[m])
        for m in REGRESSION_METRICS
    }  # fmt: skip
    out["threshold"] = None
    out["label_summary"] = {"mean": float(y.mean()), "std": float(y.std(ddof=1)) if len(y) > 1 else None,
                            "min": float(y.min()), "max": float(y.max())}  # fmt: skip
    # what a constant scores, to read the model's errors against: the validation mean (a value a model could
    # know), else the test mean (which knows the test labels: R² 0 by definition, and a hard reference)
    yv = pd.to_numeric(val["label"], errors="coerce").dropna().to_numpy(dtype=float) if len(val) else np.array([])
    constant, source = (float(yv.mean()), "val") if len(yv) else (float(y.mean()), "test")
    out["no_skill"] = {"constant": constant, "from": source, "mae": float(np.abs(y - constant).mean()),
                       "rmse": float(np.sqrt(((y - constant) ** 2).mean()))}
    # A bounded sample of points for the scatter plot.
    keep = np.random.default_rng(0).permutation(len(y))[:1000]
    out["scatter"] = {"label": np.round(y[keep], 4).tolist(), "prediction": np.round(f[keep], 4).tolist()}
    out["bootstrap"] = _boot_info(st, test, units)
    out["notes"] = []
    return out


# ----------------------------------------------------------------------------- aggregation


def _aggregate(runs: list[dict], fraction, st: EvalSettings, kind: str = "classification") -> dict:
    """One entry per (strategy, label fraction): the single run's bootstrap CIs, or a summary over seeds."""
    head = {"label_fraction": fraction, "n_runs": len(runs), "seeds": [r["seed"] for r in runs],
            "run_ids": [r["run_id"] for r in runs], "representative_run": runs[0]["run_id"]}  # fmt: skip
    if len(runs) == 1:
        r = runs[0]
        head.update(aggregation=f"single run; {st.ci_method([kind])}", metrics=r["metrics"], threshold=r["threshold"],
                    n_test=r["n_test"])  # fmt: skip
        if "per_class" in r:
            head["per_class"] = r["per_class"]
        if "calibration" in r:
            head["calibration_scaled"] = r["calibration"]["scaled"]
        return head

    def summary(values_of, name):
        vals = [values_of(r) for r in runs]
        s = seed_summary([v["value"] for v in vals if v is not None], st.level, RANGES.get(name))
        d = {"value": s["value"], "ci_low": s["ci_low"], "ci_high": s["ci_high"], "std": s["std"], "n_runs": s["n"]}
        first = vals[0] or {}
        scored = [v["value"] for v in vals if v is not None and v["value"] is not None]
        # every run defined and the same at the decimals a report shows (a t-interval would show no width)
        same = len(scored) == len(vals) > 1 and max(scored) - min(scored) < SHOWN_RESOLUTION
        if same and first.get("ci_low") is not None:
            # every run scored the same: a t-interval over seeds has no width and says nothing, while the test
            # cases are still a sample; the representative run's interval over them stands in
            d.update(ci_low=first["ci_low"], ci_high=first["ci_high"], ci_method=SAME_IN_EVERY_RUN
                     + (f" ({first['ci_method']})" if first.get("ci_method") else ""))
        if d["value"] is None:
            d["reason"] = "undefined in every run: " + next((v["reason"] for v in vals if v and v.get("reason")), "")
        return d

    metrics = {m: summary(lambda r, m=m: r["metrics"][m], m) for m in runs[0]["metrics"]}
    head.update(aggregation=f"mean over {len(runs)} runs (seeds); interval: {st.level:.0%} t-interval of the mean; "
                "std: standard deviation over runs", metrics=metrics, n_test=runs[0]["n_test"])  # fmt: skip
    if "per_class" in runs[0]:
        head["per_class"] = {c: {m: summary(lambda r, c=c, m=m: r["per_class"][c][m], m) for m in CLASS_METRICS}
                             for c in runs[0]["per_class"]}  # fmt: skip
    if runs[0].get("calibration") and runs[0]["calibration"]["scaled"]:
        head["calibration_scaled"] = {
            m: summary(lambda r, m=m: (r["calibration"]["scaled"] or {}).get(m), m) for m in CALIBRATION_METRICS
        }
    thr = runs[0]["threshold"]
    if thr is not None:
        head["threshold"] = {"rule": thr["rule"], "target": thr.get("target"), "chosen_on": thr.get("chosen_on"),
                             "value": None, "per_run": {r["run_id"]: r["threshold"]["value"] for r in runs},
                             "note": "each run's threshold was chosen on its own validation rows"}  # fmt: skip
    else:
        head["threshold"] = None
    return head


def _paired_comparisons(rows_t: pd.DataFrame, info: TaskInfo, runs_by_strategy: dict, st: EvalSettings) -> list[dict]:
    """Paired tests between strategies on the same test cases, pairing runs with the same label fraction
    and seed: DeLong for classification (multiclass: of the macro one-vs-rest AUROCs), the paired
    t-test of absolute errors for regression (:func:`medtl.evaluation.paired.paired_error_test`)."""
    classes = list(info.classes)
    if info.kind != "binary":
        pos = None
    else:
        if st.positive_class is not None:
            classes = [c for c in classes if c != st.positive_class] + [st.positive_class]
        pos = classes[1]
    test = rows_t[rows_t["split"] == st.test_split]
    # run ids are unique within a strategy only (medtl train writes seed0 for every model)
    scores = {(str(s), str(r)): g.set_index("case_id") for (s, r), g in test.groupby(["strategy", "run_id"], sort=False)}
    out = []
    for a, b in itertools.combinations(runs_by_strategy, 2):
        for ra in runs_by_strategy[a]:
            for rb in runs_by_strategy[b]:
                if ra["label_fraction"] != rb["label_fraction"]:
                    continue
                # Same seed; or any seed when one side has a single run at this fraction.
                single = min(_n_at(runs_by_strategy[a], ra), _n_at(runs_by_strategy[b], rb)) == 1
                if ra["seed"] != rb["seed"] and not single:
                    continue
                one = _mae_one if info.kind == "regression" else _delong_one
                out.append(one(scores[a, str(ra["run_id"])], scores[b, str(rb["run_id"])], pos, classes, a, b, ra, rb))
    return out


def _n_at(runs: list[dict], run: dict) -> int:
    return sum(r["label_fraction"] == run["label_fraction"] for r in runs)


def _paired_cases(ta: pd.DataFrame, tb: pd.DataFrame, a: str, b: str, ra: dict, rb: dict, test: str,
                  numeric: bool = False):
    """(comparison head, ta, tb) on the cases both runs share, in one order; the head gets a ``note``
    (and the frames are None) when the runs cannot be paired. ``numeric``: regression targets agree when
    equal to float32 precision (pipeline tables written before 2026-12-01 stored the model jobs'
    targets as float32 copies)."""
    head = {"strategy_a": a, "strategy_b": b, "run_a": ra["run_id"], "run_b": rb["run_id"], "seed": ra["seed"],
            "label_fraction": ra["label_fraction"], "test": test}  # fmt: skip
    common = ta.index.intersection(tb.index)
    if len(common) != len(ta) or len(common) != len(tb):
        head["note"] = f"not compared: the runs' test cases differ ({len(ta)} vs {len(tb)}, {len(common)} shared)"
        return head, None, None
    ta, tb = ta.loc[common], tb.loc[common]
    if numeric:
        same = np.allclose(pd.to_numeric(ta["label"]).to_numpy(float), pd.to_numeric(tb["label"]).to_numpy(float),
                           rtol=1e-6, atol=0.0)
    else:
        same = (ta["label"] == tb["label"]).all()
    if not same:
        head["note"] = "not compared: the runs disagree on the true labels of the same cases"
        return head, None, None
    return head, ta, tb


def _mae_one(ta: pd.DataFrame, tb: pd.DataFrame, pos, classes, a: str, b: str, ra: dict, rb: dict) -> dict:
    """One paired t-test of the two runs' absolute errors (regression)."""
    head, ta, tb = _paired_cases(ta, tb, a, b, ra, rb, "paired t-test of absolute errors, two-sided, MAE_a - MAE_b",
                                 numeric=True)
    if ta is None:
        return head
    y = pd.to_numeric(ta["label"]).to_numpy(dtype=float)
    r = paired_error_test(y, ta["prediction"].to_numpy(dtype=float), tb["prediction"].to_numpy(dtype=float))
    head.update(r.to_dict())
    return head


def _delong_one(ta: pd.DataFrame, tb: pd.DataFrame, pos: str | None, classes: list, a: str, b: str, ra: dict,
                rb: dict) -> dict:
    """One DeLong test; ``pos`` None: multiclass, on the macro one-vs-rest AUROC over ``classes``."""
    what = "AUROC_a - AUROC_b" if pos is not None else "macro one-vs-rest AUROC_a - AUROC_b"
    head, ta, tb = _paired_cases(ta, tb, a, b, ra, rb, f"DeLong, two-sided, {what}")
    if ta is None:
        return head
    if pos is None:
        index = {c: i for i, c in enumerate(classes)}
        if not ta["label"].isin(list(index)).all():
            head["note"] = "not compared: test labels outside the task's classes"
            return head
        y = ta["label"].map(index).to_numpy(dtype=int)
        if len(set(y.tolist())) < len(classes):
            head["note"] = "not compared: a class has no test cases, the macro AUROC is undefined"
            return head
        cols = [f"prob_{c}" for c in classes]
        head.update(delong_macro_test(y, ta[cols].to_numpy(float), tb[cols].to_numpy(float), _groups(ta)).to_dict(),
                    n_cases=len(ta))
        return head
    y = (ta["label"] == pos).to_numpy()
    if y.all() or not y.any():
        head["note"] = "not compared: the test set holds one class, AUROC is undefined"
        return head
    col = f"prob_{pos}"
    head.update(delong_test(y, ta[col].to_numpy(float), tb[col].to_numpy(float), _groups(ta)).to_dict(),
                n_cases=len(ta))
    return head


def _fraction_key(r: dict) -> float:
    return np.inf if r["label_fraction"] is None else r["label_fraction"]


def evaluate_predictions(predictions, settings: EvalSettings | None = None, **kwargs) -> dict:
    """Evaluate a predictions table (DataFrame, path, or list of them): the report.json content.

    ``kwargs`` are EvalSettings fields (``val_split``, ``threshold_rule``, ``n_boot`` ...).
    """
    st = settings or EvalSettings(**kwargs)
    df, sources = _as_frame(predictions)
    report = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "medtl_version": __version__,
        "sources": sources,
        "settings": {**asdict(st), "ci_method": st.ci_method()},
        "notes": [],
        "tasks": {},
    }
    if df["patient_id"].isna().all() and (NEAR_COPY_GROUP not in df or df[NEAR_COPY_GROUP].isna().all()):
        report["notes"].append("no patient ids in the table: the bootstrap resamples cases, which assumes one image "
                               "per patient (intervals are too narrow otherwise)")  # fmt: skip
    for task, info in task_infos(df).items():
        rows_t = df[df["task"] == task]
        t = {"kind": info.kind, "classes": list(info.classes), "positive_class": None, "strategies": {},
             "comparisons": [], "notes": []}  # fmt: skip
        if info.kind == "binary":
            t["positive_class"] = st.positive_class or info.classes[-1]
        runs_by_strategy = {}
        for strategy, rows_s in rows_t.groupby("strategy", sort=False):
            runs = [evaluate_run(g, info, st) for _, g in rows_s.groupby("run_id", sort=False)]
            runs.sort(key=lambda r: (_fraction_key(r), -1 if r["seed"] is None else r["seed"], r["run_id"]))
            runs_by_strategy[str(strategy)] = runs
            fractions = sorted({_fraction_key(r) for r in runs})
            by_fraction = [_aggregate([r for r in runs if _fraction_key(r) == f], None if np.isinf(f) else f, st,
                                      info.kind) for f in fractions]  # fmt: skip
            entry = dict(by_fraction[-1])  # headline: the largest label fraction
            entry["by_label_fraction"] = by_fraction if len(by_fraction) > 1 else None
            entry["runs"] = runs
            for r in runs:  # curves are drawn for the representative run only: keep the JSON small
                if r["run_id"] != entry["representative_run"]:
                    r["curves"] = None
            t["strategies"][str(strategy)] = entry
            for r in runs:
                t["notes"].extend(n for n in r["notes"] if n not in t["notes"])
        t["comparisons"] = holm(_paired_comparisons(rows_t, info, runs_by_strategy, st))
        report["tasks"][str(task)] = t
    if report["tasks"]:  # the method as these tasks' kinds make it (a regression is not stratified)
        report["settings"]["ci_method"] = st.ci_method([t["kind"] for t in report["tasks"].values()])
    return plain(report, "report")



def load_report(path: str | Path) -> dict:
    """Read a report.json, checking its schema."""
    import json

    path = Path(path)
    try:
        rep = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MedtlError(f"cannot read report: {err}", path) from err
    if not isinstance(rep, dict) or rep.get("schema") != SCHEMA:
        raise MedtlError(f"not a medtl evaluation report (schema {SCHEMA!r} expected)", path)
    major = str(rep.get("schema_version", "")).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise MedtlError(f"report schema version {rep.get('schema_version')} is not supported "
                         f"(this medtl reads {SCHEMA_VERSION})", path)  # fmt: skip
    return rep
