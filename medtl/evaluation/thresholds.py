"""Operating thresholds for binary tasks, chosen on validation data and applied unchanged to test.

A case is called positive when ``score >= threshold``. The rules:

- ``youden``: maximise Youden's J = sensitivity + specificity - 1;
- ``sensitivity``: the highest threshold whose sensitivity reaches ``target`` (best specificity there);
- ``specificity``: the lowest threshold whose specificity reaches ``target`` (best sensitivity there).

The threshold is placed midway between the chosen validation score and the next lower distinct
one: it classifies the validation cases exactly as the chosen cut does, without sitting on a score
that happened to occur in validation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medtl.errors import MedtlError
from medtl.evaluation.metrics import check_binary_labels, check_scores, roc_curve

RULES = ("youden", "sensitivity", "specificity")
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Threshold:
    """A threshold and how it was found; ``sensitivity``/``specificity`` are achieved on ``chosen_on``."""

    value: float
    rule: str
    target: float | None = None
    chosen_on: str | None = None
    n: int = 0
    sensitivity: float | None = None
    specificity: float | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(
    y_true, score, rule: str = "youden", target: float | None = None, chosen_on: str = "val"
) -> Threshold:
    """Pick a threshold on (validation) labels ``y_true`` (0/1) and positive-class ``score``."""
    y = check_binary_labels(y_true)
    s = check_scores(score, n=len(y))
    if rule not in RULES:
        raise MedtlError(f"unknown threshold rule {rule!r}; use one of {', '.join(RULES)}", "threshold_rule")
    if rule != "youden" and (target is None or not 0.0 < target <= 1.0):
        raise MedtlError(f"rule {rule!r} needs a target in (0, 1], got {target!r}", "threshold_target")
    if y.all() or not y.any():
        raise MedtlError(f"the {chosen_on} data hold only one class; a threshold needs both", chosen_on)
    fpr, tpr, thr = roc_curve(y, s)
    # Index 0 is "call nothing positive" (threshold +inf); the rest follow the distinct scores downwards.
    if rule == "youden":
        i = int(np.argmax(tpr - fpr))  # first maximum = highest such threshold
    elif rule == "sensitivity":
        i = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    else:
        i = int(np.flatnonzero(1.0 - fpr >= target - 1e-12)[-1])
    value = _midpoint(thr, i)
    return Threshold(
        value=value,
        rule=rule,
        target=target,
        chosen_on=chosen_on,
        n=int(len(y)),
        sensitivity=float(tpr[i]),
        specificity=float(1.0 - fpr[i]),
    )


def _midpoint(thr: np.ndarray, i: int) -> float:
    if i == 0:  # nothing called positive: just above the highest score
        return float(np.nextafter(thr[1], np.inf))
    if i + 1 < len(thr):
        return float((thr[i] + thr[i + 1]) / 2.0)
    return float(thr[i])


def apply_threshold(score, threshold: float | Threshold) -> np.ndarray:
    """0/1 calls of ``score >= threshold``."""
    t = threshold.value if isinstance(threshold, Threshold) else float(threshold)
    if np.isnan(t):
        raise MedtlError("the threshold is NaN", "threshold")
    # A NaN score would silently be called negative.
    return (check_scores(score) >= t).astype(int)


def checkpoint_threshold(y_true, score, rule: str = "youden", target: float | None = None) -> dict:
    """The checkpoint meta keys of a binary model's operating threshold, chosen on validation:
    ``{"threshold": value, "threshold_rule": {...how...}}``. When no threshold can be chosen (one class
    in validation, say) the default is stored and ``threshold_rule`` says why, so ``medtl predict``
    always decides as evaluation did."""
    try:
        thr = choose_threshold(y_true, score, rule, target, chosen_on="val")
    except MedtlError as err:
        thr = Threshold(DEFAULT_THRESHOLD, "default", note=err.reason)
    return {"threshold": float(thr.value), "threshold_rule": thr.to_dict()}

