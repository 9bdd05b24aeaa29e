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
    typed, plain = combine_reports([Report.from_dict(one), Report.from_dict(two)]), combine_reports([one, two])
    typed.pop("created"), plain.pop("created")  # the second may turn between the two calls
    assert typed == plain


def test_merged_reports_describe_each_test_set_and_name_the_settings_that_differ(tmp_path, binary_table):
    one = evaluate_predictions(binary_table[binary_table["strategy"] == "scratch"], **FAST)
    two = evaluate_predictions(binary_table[(binary_table["strategy"] == "finetune")
                                            & (binary_table["case_id"].str[-1] != "0")], n_boot=40, seed=1,
                               model_threshold=0.25)  # fmt: skip
    one["sources"], two["sources"] = ["a/predictions.csv"], ["b/results.csv"]
    one["created"] = "2020-01-01T00:00:00+00:00"
    paths = combine([one, two], tmp_path)
    rep = json.loads(paths["json"].read_text())
    md = paths["md"].read_text()
    assert rep["created"] != one["created"] and one["created"] not in md
    # only the settings that differ, both values; model_threshold is each model's own and not compared
    differ = [n for n in rep["notes"] if "other settings" in n]
    assert differ == ["b/results.csv was evaluated with other settings: n_boot 40 (in a/predictions.csv: 60)"]
    # one size and prevalence line per test set, each naming its strategies
    n1 = one["tasks"]["tumor"]["strategies"]["scratch"]["n_test"]
    n2 = two["tasks"]["tumor"]["strategies"]["finetune"]["n_test"]
    assert n1 != n2
    assert f"**Test set (scratch):** n = {n1}" in md and f"**Test set (finetune):** n = {n2}" in md
    assert "Test prevalence (scratch): " in md and f"of {n2} test cases" in md


def test_a_merge_says_which_input_each_note_is_from_and_report_takes_exclude(tmp_path, binary_table):
    """Merging a report with one made --exclude of the same file gave its exclusion note to both inputs and named
    both strategies after the one file; `medtl report --exclude` was refused as an unknown argument."""
    import pandas as pd

    from medtl.cli import main
    from medtl.evaluation.batch_results import evaluate_files

    table = binary_table[binary_table["strategy"] == "scratch"]
    path = tmp_path / "bin.csv"
    table.to_csv(path, index=False)
    listed = tmp_path / "listed.csv"
    pd.DataFrame({"case_id": sorted(table["case_id"].unique())[:5]}).to_csv(listed, index=False)
    plain, excluded = evaluate_files([path], **FAST), evaluate_files([path], exclude=listed, **FAST)
    merged = combine_reports([plain, excluded])
    left_out = [n for n in merged["notes"] if "left out 5 case(s)" in n]
    assert left_out and all(n.startswith(f"input 2 ({path}): ") for n in left_out)
    assert set(merged["tasks"]["tumor"]["strategies"]) == {"scratch", "scratch [input 2]"}
    # its DeLong rows name its strategies as the table does (they kept input 1's names)
    both = evaluate_files([path], **FAST), evaluate_files([path], exclude=listed, **FAST)
    for rep in both:
        rep["tasks"]["tumor"]["strategies"]["finetune"] = rep["tasks"]["tumor"]["strategies"]["scratch"]
        rep["tasks"]["tumor"]["comparisons"] = [{"strategy_a": "scratch", "strategy_b": "finetune"}]
    pairs = {(c["strategy_a"], c["strategy_b"]) for c in combine_reports(list(both))["tasks"]["tumor"]["comparisons"]}
    assert pairs == {("scratch", "finetune"), ("scratch [input 2]", "finetune [input 2]")}
    assert main(["report", str(path), "--exclude", str(listed), "--out", str(tmp_path / "r"), "--n-boot", "20"]) == 0
    assert any("left out 5 case(s)" in n for n in json.loads((tmp_path / "r" / "report.json").read_text())["notes"])

