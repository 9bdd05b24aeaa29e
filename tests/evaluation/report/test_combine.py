"""combine / combine_reports: several inputs, one comparison report."""

from __future__ import annotations

import json

from medtl.evaluation.evaluate import evaluate_predictions
from medtl.evaluation.report import Report, combine, combine_reports

FAST = {"n_boot": 60, "seed": 1}


def test_combining_prediction_files_compares_strategies(tmp_path, binary_table):
    paths = combine([binary_table[binary_table["strategy"] == s] for s in ("scratch", "finetune")], tmp_path, **FAST)
    rep = json.loads(paths["json"].read_text())
    assert len(rep["tasks"]["tumor"]["comparisons"]) == 2


def test_combining_reports_renames_clashing_strategies(tmp_path, binary_table):
    one = evaluate_predictions(binary_table[binary_table["seed"] == 0], **FAST)
    two = evaluate_predictions(binary_table[binary_table["seed"] == 1], **FAST)
    two["sources"] = ["second.csv"]
    rep = json.loads(combine([one, two], tmp_path)["json"].read_text())
    assert set(rep["tasks"]["tumor"]["strategies"]) == {"scratch", "finetune", "scratch [second]", "finetune [second]"}


def test_combining_typed_reports_matches_combining_dicts(binary_table):
    one = evaluate_predictions(binary_table[binary_table["seed"] == 0], **FAST)
    two = evaluate_predictions(binary_table[binary_table["seed"] == 1], **FAST)
    assert combine_reports([Report.from_dict(one), Report.from_dict(two)]) == combine_reports([one, two])
