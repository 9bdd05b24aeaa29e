"""report.json as typed models: the one definition of what a report holds, for its renderers and readers.

evaluate.py produces the dict (``evaluate_predictions``); ``Report.from_dict`` / ``read_report`` type it, and
``Report.to_dict`` gives back exactly the keys it was made from (absent keys stay absent, their order is
kept), so report.json files written by any earlier medtl 1.x load and re-render unchanged. Fields the
renderers alone draw (curves, reliability bins, confusion matrices) stay plain dicts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_serializer, model_validator

from medtl.evaluation.evaluate import SCHEMA, SCHEMA_VERSION, load_report
from medtl.plain import plain


class _Node(BaseModel):
    """Unknown keys are kept (a newer or older report still round-trips); dumps keep the keys' input order."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    _keys: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _remember_order(cls, data, handler):
        node = handler(data)
        if isinstance(data, dict):
            node._keys = tuple(data)
        return node

    @model_serializer(mode="wrap")
    def _in_input_order(self, handler):
        d = handler(self)
        if not isinstance(d, dict):
            return d
        return {**{k: d[k] for k in self._keys if k in d}, **d}  # keys set later come last


class Metric(_Node):
    """One metric: a value with its interval; undefined values carry the reason instead (value None)."""

    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    std: float | None = None  # over seeds
    n_runs: int | None = None
    reason: str | None = None
    n_undefined_resamples: int | None = None
    outside_interval: bool | None = None
    ci_method: str | None = None  # when not the report's bootstrap: Wilson (a proportion) or Newcombe (an AUROC) at 0 or 1


class Threshold(_Node):
    rule: str
    value: float | None = None
    target: float | int | None = None  # as the user gave it
    chosen_on: str | None = None
    per_run: dict[str, float | None] | None = None  # several seeds: each run's own threshold


class Run(_Node):
    """One run (strategy, label fraction, seed) on the test split."""

    run_id: str
    strategy: str
    seed: int | None = None
    label_fraction: float | None = None
    n_test: int
    n_val: int | None = None
    n_test_patients: int | None = None
    patient_ids_per_image: bool | None = None  # every patient id is the case's own id: no real patient ids
    near_copy_units: bool | None = None  # near-copies of one image were joined into one bootstrap unit
    domains_test: dict[str, int] = {}
    metrics: dict[str, Metric] = {}
    per_class: dict[str, dict[str, Metric]] | None = None  # multiclass, one-vs-rest
    threshold: Threshold | None = None
    prevalence: dict | None = None
    confusion_matrix: dict | None = None
    calibration: dict | None = None
    curves: dict | None = None  # the representative run's only
    label_summary: dict | None = None  # regression
    scatter: dict | None = None  # regression
    bootstrap: dict | None = None
    notes: list[str] = []


class Entry(_Node):
    """A strategy at one label fraction: a single run's bootstrap intervals, or a summary over seeds."""

    label_fraction: float | None = None
    n_runs: int
    seeds: list[int | None] = []
    run_ids: list[str] = []
    representative_run: str
    aggregation: str | None = None
    metrics: dict[str, Metric] = {}
    n_test: int | None = None
    per_class: dict[str, dict[str, Metric]] | None = None
    calibration_scaled: dict[str, Metric] | None = None
    threshold: Threshold | None = None


class Strategy(Entry):
    """The headline entry (the largest label fraction), every fraction's entry, and every run."""

    by_label_fraction: list[Entry] | None = None
    runs: list[Run] = []

    def entries(self) -> list[Entry]:
        """The results per label fraction (the headline alone when a single fraction ran)."""
        return list(self.by_label_fraction or [self])

    def representative(self) -> Run:
        return next(r for r in self.runs if r.run_id == self.representative_run)


class Comparison(_Node):
    """A paired test between two strategies' runs on the same test cases (or why it was not made):
    DeLong's for classification (``auc_a``, ``auc_b``), the paired t-test of absolute errors for
    regression (``mae_a``, ``mae_b``); ``difference`` is a minus b."""

    strategy_a: str
    strategy_b: str
    run_a: str | None = None
    run_b: str | None = None
    seed: int | None = None
    label_fraction: float | None = None
    test: str | None = None
    auc_a: float | None = None
    auc_b: float | None = None
    mae_a: float | None = None
    mae_b: float | None = None
    difference: float | None = None
    se: float | None = None
    p_value: float | None = None
    p_holm: float | None = None  # adjusted over the task's tested comparisons (Holm)
    note: str | None = None


class Task(_Node):
    kind: str  # binary | multiclass | regression
    classes: list[str] = []
    positive_class: str | None = None
    strategies: dict[str, Strategy] = {}
    comparisons: list[Comparison] = []
    notes: list[str] = []


class Outcome(_Node):
    """The similarity stage's recommendation against what the runs observed (similarity.recommend)."""

    recommended: str | None = None
    best_observed: str | None = None
    best_observed_tie: list[str] = []  # the candidates sharing the best outcome, when several do
    top1_is_best: bool | None = None  # None: the ranking was a tie, or every outcome was equal
    regret: float | None = None
    spearman: float | None = None
    kendall: float | None = None
    label_fraction: float | None = None  # the label budget it was ranked for and observed at
    n_labelled: int | None = None
    tie: list[str] = []  # the candidates the ranking could not separate (recommended: the top-scored of them)
    support: float | None = None  # share of image resamples with the top-scored candidate on top (None: not measured)
    prior_only: bool = False  # no measurement told the candidates apart: the strategy prior ordered them
    ranking: list[dict[str, Any]] = []  # {key, composite} per candidate, best first, as ranked for this budget


class Recommendation(_Node):
    explanation: Any = None
    outcome: Outcome | None = None  # at the largest label budget
    by_budget: list[Outcome] = []  # one per label budget, smallest first


class Settings(_Node):
    """How the predictions were evaluated: evaluate.EvalSettings' fields and the interval method in words."""

    val_split: str = "val"
    test_split: str = "test"
    threshold_rule: str = "youden"
    target: float | int | None = None
    positive_class: str | None = None
    n_boot: int | None = None
    seed: int = 0
    level: float = 0.95
    n_bins: int | None = None
    curve_points: int | None = None
    model_threshold: float | None = None
    ci_method: str = ""


class Report(_Node):
    """A report.json: how it was evaluated, and per task its strategies, runs and comparisons."""

    schema_: str = Field(SCHEMA, alias="schema")
    schema_version: str = SCHEMA_VERSION
    created: str = ""
    medtl_version: str = ""
    sources: list[str] = []
    settings: Settings = Settings()
    notes: list[str] = []
    tasks: dict[str, Task] = {}
    recommendation: Recommendation | None = None  # pipeline runs
    figures: list[dict] | None = None  # written by render_report
    extras: dict[str, Any] | None = None  # written by render_report

    @classmethod
    def from_dict(cls, data: dict | Report) -> Report:
        if isinstance(data, Report):
            return data.model_copy(deep=True)
        return cls.model_validate(plain(data, 'report'))

    def to_dict(self) -> dict:
        """The report.json content: the keys it was made from, in their order."""
        return self.model_dump(by_alias=True, exclude_unset=True)

    def to_json(self) -> str:
        """Indented JSON with flat lists of numbers kept on one line (curves would take thousands of lines)."""
        text = json.dumps(plain(self.to_dict(), 'report'), indent=1, ensure_ascii=False)
        return _FLAT.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text) + "\n"


_FLAT = re.compile(r"\[\s*((?:-?[\d.eE+-]+|null|true|false)(?:,\s*(?:-?[\d.eE+-]+|null|true|false))*)\s*\]")


def read_report(path: str | Path) -> Report:
    """A report.json, its schema checked (evaluate.load_report), as a typed Report."""
    return Report.from_dict(load_report(path))
