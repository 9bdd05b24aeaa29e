"""The typed report: report.json loads into it and dumps back byte for byte."""

from __future__ import annotations

import json

import pytest

from medtl.errors import MedtlError
from medtl.evaluation.evaluate import evaluate_predictions
from medtl.evaluation.report import Report, make_report, read_report
from medtl.evaluation.report.schema import Recommendation

FAST = {"n_boot": 60, "seed": 1}


@pytest.fixture(scope="module")
def written(tmp_path_factory, binary_table, multiclass_table, regression_table):
    import pandas as pd

    out = tmp_path_factory.mktemp("schema")
    table = pd.concat([binary_table, multiclass_table, regression_table], ignore_index=True)
    return make_report(table, out, **FAST)["json"]


def test_report_json_round_trips_byte_for_byte(written):
    report = read_report(written)
    assert report.to_json() == written.read_text()
    assert report.to_dict() == json.loads(written.read_text())


def test_attributes_read_what_the_keys_hold(written):
    raw = json.loads(written.read_text())
    report = read_report(written)
    assert report.schema_ == raw["schema"] and report.settings.n_boot == 60
    tumor = report.tasks["tumor"]
    assert tumor.kind == "binary" and tumor.positive_class == raw["tasks"]["tumor"]["positive_class"]
    entry, raw_entry = tumor.strategies["finetune"], raw["tasks"]["tumor"]["strategies"]["finetune"]
    assert entry.metrics["auroc"].value == raw_entry["metrics"]["auroc"]["value"]
    assert entry.metrics["auroc"].std == raw_entry["metrics"]["auroc"]["std"]  # two seeds: a summary
    assert entry.representative().run_id == raw_entry["representative_run"]
    assert entry.entries() == [entry]  # a single label fraction
    assert tumor.comparisons[0].p_value == raw["tasks"]["tumor"]["comparisons"][0]["p_value"]
    assert report.tasks["tumor3"].strategies["finetune"].per_class  # multiclass: one-vs-rest


def test_absent_keys_stay_absent_and_new_ones_come_last(binary_table):
    raw = evaluate_predictions(binary_table[binary_table["seed"] == 0], **FAST)
    report = Report.from_dict(raw)
    metric = report.to_dict()["tasks"]["tumor"]["strategies"]["finetune"]["metrics"]["auroc"]
    assert "std" not in metric and "reason" not in metric  # one run, a defined value
    report.notes.append("added")
    report.recommendation = Recommendation(explanation="x", outcome={"recommended": "a", "best_observed": "a"})
    dumped = report.to_dict()
    assert list(dumped)[-1] == "recommendation" and dumped["notes"][-1] == "added"
    assert report.recommendation.outcome.best_observed == "a"
    assert "recommendation" not in raw  # from_dict copies


def test_older_and_unknown_keys_load(binary_table):
    raw = evaluate_predictions(binary_table, **FAST)
    raw["settings"].pop("model_threshold")  # reports written before it existed
    raw["tasks"]["tumor"]["future_field"] = {"a": 1}
    report = Report.from_dict(raw)
    assert report.settings.model_threshold is None
    assert report.to_dict() == raw


def test_read_report_checks_the_schema(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"schema": "something.else"}))
    with pytest.raises(MedtlError, match="not a medtl evaluation report"):
        read_report(path)
