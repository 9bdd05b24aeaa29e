"""medtl.evaluation.evaluate: a predictions table -> the report dict (schema, thresholds on val, metrics on test)."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medtl.errors import MedtlError
from medtl.evaluation.evaluate import SCHEMA, EvalSettings, evaluate_predictions, load_report
from medtl.evaluation.predictions import predictions_from_arrays
from medtl.evaluation.thresholds import choose_threshold


def _split(rng, split, n):
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-rng.normal(1.5 * y - 0.75, 1.0)))
    return predictions_from_arrays([f"{split}{i}" for i in range(n)], y, np.c_[1 - s, s], class_names=["neg", "pos"],
                                   split=split, run_id="r", strategy="s")


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    return pd.concat([_split(rng, "val", 40), _split(rng, "test", 50)], ignore_index=True)


def test_settings_are_checked_when_made():
    with pytest.raises(MedtlError, match="unknown threshold rule 'best'"):
        EvalSettings(threshold_rule="best")
    with pytest.raises(MedtlError, match="needs a target"):
        EvalSettings(threshold_rule="sensitivity")
    with pytest.raises(MedtlError, match="splits must differ"):
        EvalSettings(val_split="test")


def test_threshold_comes_from_val_and_metrics_from_test(table):
    report = evaluate_predictions(table, n_boot=0)
    assert report["schema"] == SCHEMA and report["settings"]["threshold_rule"] == "youden"
    run = report["tasks"]["default"]["strategies"]["s"]["runs"][0]
    val, test = table[table["split"] == "val"], table[table["split"] == "test"]
    assert (run["n_val"], run["n_test"]) == (40, 50)
    expected = choose_threshold(val["label"] == "pos", val["prob_pos"], "youden")
    assert run["threshold"]["value"] == pytest.approx(expected.value) and run["threshold"]["chosen_on"] == "val"
    assert run["metrics"]["auroc"]["value"] == pytest.approx(roc_auc_score(test["label"] == "pos", test["prob_pos"]))
    called = test["prob_pos"] >= expected.value
    sensitivity = (called & (test["label"] == "pos")).sum() / (test["label"] == "pos").sum()
    assert run["metrics"]["sensitivity"]["value"] == pytest.approx(sensitivity)
    assert run["metrics"]["auroc"]["ci_low"] is None  # n_boot=0: no interval, and None rather than NaN


def test_the_report_is_strict_json_and_reads_back(table, tmp_path):
    report = evaluate_predictions(table, n_boot=20)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report, allow_nan=False))  # plain values only: no NaN, no NumPy types
    assert load_report(path) == report
    path.write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(MedtlError, match="not a medtl evaluation report"):
        load_report(path)


def test_a_proportion_of_one_gets_a_wilson_interval_not_a_point(tmp_path):
    """30 of 30 negatives called negative: the bootstrap interval of the specificity is 1.000-1.000; Wilson's
    (checked against statsmodels' formula written out: centre and half-width) is about 0.886-1."""
    from medtl.evaluation.evaluate import evaluate_predictions, wilson_interval

    rng = np.random.default_rng(0)
    n_neg, n_pos = 30, 14
    p_pos = np.r_[rng.uniform(0.0, 0.3, n_neg), rng.uniform(0.2, 1.0, n_pos)]
    y = np.r_[["normal"] * n_neg, ["tumor"] * n_pos]
    rows = pd.DataFrame({"case_id": [f"c{i}" for i in range(len(y))], "patient_id": None, "domain": "d",
                         "split": "test", "label": y, "prob_normal": 1 - p_pos, "prob_tumor": p_pos, "run_id": "r",
                         "strategy": "s", "task": "t", "seed": 0})
    val = rows.copy()
    val["split"], val["case_id"] = "val", [f"v{i}" for i in range(len(y))]
    report = evaluate_predictions(pd.concat([rows, val]), n_boot=200, threshold_rule="youden")
    spec = report["tasks"]["t"]["strategies"]["s"]["metrics"]["specificity"]
    assert spec["value"] == 1.0  # every negative lies below every positive but a few: the threshold spares them
    lo, hi = wilson_interval(30, 30, 0.95)
    z = 1.959963984540054
    assert lo == pytest.approx((1 + z * z / 60 - z * np.sqrt(z * z / 3600)) / (1 + z * z / 30))
    assert (spec["ci_low"], spec["ci_high"]) == (pytest.approx(lo), 1.0) and spec["ci_method"].startswith("Wilson")
    sens = report["tasks"]["t"]["strategies"]["s"]["metrics"]["sensitivity"]
    assert "ci_method" not in sens or sens["value"] in (0.0, 1.0)  # a proportion inside (0, 1) keeps its bootstrap
    assert wilson_interval(30, 30, 0.95)[0] == pytest.approx(0.8865, abs=1e-4)
    assert wilson_interval(0, 10, 0.95) == (0.0, pytest.approx(0.2775, abs=1e-4))


def _hanley_mcneil_score_set(auroc: float, m: int, n: int, level: float) -> tuple[float, float]:
    """Reference for Newcombe's interval, written independently: on a fine grid of theta, the Hanley-McNeil
    variance in its original Q1/Q2 form with m and n replaced by N* = (m + n) / 2, and the theta within
    z standard errors of the estimate."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + level / 2)
    theta = np.linspace(0, 1, 2_000_001)
    q1, q2, big_n = theta / (2 - theta), 2 * theta ** 2 / (1 + theta), (m + n) / 2
    var = (theta * (1 - theta) + (big_n - 1) * (q1 - theta ** 2) + (big_n - 1) * (q2 - theta ** 2)) / (m * n)
    inside = theta[(auroc - theta) ** 2 <= z * z * var]
    return inside.min(), inside.max()


def test_newcombe_auroc_interval_matches_a_published_example_and_a_grid_reference():
    from sklearn.metrics import roc_auc_score

    from medtl.evaluation.evaluate import auroc_score_interval

    # SingleCaseES's NAP example (NAP is the AUROC of phase B over phase A): 0.917, 95% CI 0.597-0.986
    a, b = [20, 20, 26, 25, 22, 23], [28, 25, 24, 27, 30, 30, 29]
    auc = roc_auc_score([0] * 6 + [1] * 7, a + b)
    assert auc == pytest.approx(11 / 12)
    assert auroc_score_interval(auc, 7, 6, 0.95) == pytest.approx((0.5973193600384168, 0.9859976893703788), abs=1e-9)
    assert auroc_score_interval(auc, 7, 6, 0.90) == pytest.approx((0.6591091902344411, 0.9822247870934007), abs=1e-9)
    for est, m, n in [(1.0, 9, 9), (1.0, 4, 30), (0.0, 12, 5), (0.73, 20, 35)]:
        assert auroc_score_interval(est, m, n, 0.95) == pytest.approx(_hanley_mcneil_score_set(est, m, n, 0.95),
                                                                      abs=2e-6)
    low, high = auroc_score_interval(1.0, 9, 9, 0.95)
    assert high == 1.0 and 0.75 < low < 0.8  # 18 perfectly separated cases: far from certain


def test_a_perfect_auroc_gets_newcombes_interval_in_the_report(tmp_path):
    """Perfect separation: every bootstrap resample has AUROC 1, so the percentile interval is 1.000-1.000;
    the report shows Newcombe's interval, marked N and explained in the caption; over the two seeds that scored the
    same, that run's interval (S) instead of a zero-width t-interval."""
    from medtl.evaluation.evaluate import auroc_score_interval, evaluate_predictions
    from medtl.evaluation.report import render_report

    n_neg, n_pos = 9, 9
    p = np.r_[np.linspace(0.05, 0.4, n_neg), np.linspace(0.6, 0.95, n_pos)]
    frames = []
    for seed in (0, 1):
        df = pd.DataFrame({"case_id": [f"c{i}" for i in range(18)], "patient_id": None, "domain": "d",
                           "split": "test", "label": ["F"] * n_neg + ["M"] * n_pos, "prob_F": 1 - p, "prob_M": p,
                           "run_id": f"r{seed}", "strategy": "s", "task": "sex", "seed": seed})
        frames.append(df)
    report = evaluate_predictions(pd.concat(frames), n_boot=200)
    run = report["tasks"]["sex"]["strategies"]["s"]["runs"][0]["metrics"]["auroc"]
    assert run["value"] == 1.0 and (run["ci_low"], run["ci_high"]) == pytest.approx(auroc_score_interval(1.0, 9, 9, 0.95))
    assert run["ci_method"].startswith("Newcombe")
    md = render_report(report, tmp_path / "report")["md"].read_text()
    low = f"{run['ci_low']:.3f}"
    assert f"({low}–1.000 N)" in md and "N: Newcombe's score interval" in md  # each run
    # both seeds scored the same: the headline shows a run's interval over the test cases, not a zero-width one
    assert f"1.000 ± 0.000 ({low}–1.000 S N)" in md and "S: every run scored the same" in md
    assert "1.000–1.000)" not in md  # an interval of no width (AUPRC, MCC of 1) is marked D and explained
    assert "1.000–1.000 D)" in md and "D: the interval has no width at the decimals shown" in md
    calibration = md[md.index("### Calibration"):].split("\n\n")[2]  # its caption explains its S marks too
    assert " S)" in md[md.index("### Calibration"):md.index("### Runs")] and "S: every run scored the same" in calibration


def test_multiclass_accuracy_and_per_class_proportions_of_one_get_wilson_intervals():
    n = 30
    y = np.repeat(["a", "b", "c"], 10)
    P = np.full((n, 3), 0.05)
    P[np.arange(n), np.repeat([0, 1, 2], 10)] = 0.9  # every case right
    df = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "patient_id": None, "domain": "d", "split": "test",
                       "label": y, "prob_a": P[:, 0], "prob_b": P[:, 1], "prob_c": P[:, 2], "run_id": "r",
                       "strategy": "s", "task": "t", "seed": 0})
    entry = evaluate_predictions(df, n_boot=100)["tasks"]["t"]["strategies"]["s"]
    assert entry["metrics"]["accuracy"]["ci_low"] == pytest.approx(1 / (1 + 1.959963984540054 ** 2 / 30))  # 30/30
    assert entry["per_class"]["a"]["sensitivity"]["ci_low"] == pytest.approx(1 / (1 + 1.959963984540054 ** 2 / 10))
    assert entry["metrics"]["sensitivity"].get("ci_method") is None  # a macro average is no proportion


def test_near_copies_are_one_bootstrap_unit_with_their_patients():
    """Per-image data sets give every image its own "patient", so a re-encoded copy of a scan in the test set
    counts twice; the manifest's near-copy groups join such images (and, through them, patients) into one
    unit: whole groups are resampled, so the interval is wider than one that takes copies for new cases."""
    from medtl.evaluation.evaluate import _groups, evaluate_predictions

    df = pd.DataFrame({"case_id": list("abcdef"), "patient_id": ["p1", "p2", "p1", "p3", None, None],
                       "near_copy_group": ["g1", "g1", None, "g2", "g2", None]})
    units = _groups(df)  # a and b share g1, a and c share p1: a, b, c one unit; d, e one; f its own
    assert len({units[0], units[1], units[2]}) == 1 and units[3] == units[4] and len(set(units)) == 3
    chain = pd.DataFrame({"case_id": list("abcde"), "patient_id": ["P1"] * 4 + ["P2"],
                          "near_copy_group": ["G1", "G2", "G3", "G4", "G3"]})
    assert len(set(_groups(chain))) == 1  # P2 shares G3 with P1: one unit, however the union is walked
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    for trial in range(100):  # against scipy's connected components of "same patient or same group"
        pid = np.random.default_rng(trial).integers(0, 5, 12).astype(str)
        grp = np.where(np.random.default_rng(trial + 1000).random(12) < 0.5,
                       np.random.default_rng(trial + 2000).integers(0, 4, 12).astype(str), None)
        table = pd.DataFrame({"case_id": [f"c{i}" for i in range(12)], "patient_id": pid, "near_copy_group": grp})
        linked = [(i, j) for i in range(12) for j in range(12) if pid[i] == pid[j] or (grp[i] and grp[i] == grp[j])]
        _, label = connected_components(coo_matrix((np.ones(len(linked)), tuple(zip(*linked))), shape=(12, 12)))
        units = _groups(table)
        assert ((label[:, None] == label[None, :]) == (units[:, None] == units[None, :])).all(), trial

    rng = np.random.default_rng(1)
    n = 40
    p = np.clip(np.r_[rng.normal(0.35, 0.2, n), rng.normal(0.65, 0.2, n)], 0.01, 0.99)
    y = np.r_[["a"] * n, ["b"] * n]
    base = pd.DataFrame({"case_id": [f"c{i}" for i in range(2 * n)], "label": y, "prob_a": 1 - p, "prob_b": p})
    # every image four times, as copies of one another
    table = pd.concat([base.assign(case_id=base["case_id"] + f"-{k}", near_copy_group=base["case_id"])
                       for k in range(4)], ignore_index=True)
    grouped = evaluate_predictions(table, n_boot=400)["tasks"]["default"]["strategies"]["default"]
    loose = evaluate_predictions(table.drop(columns="near_copy_group"), n_boot=400)
    loose = loose["tasks"]["default"]["strategies"]["default"]
    width = {k: e["metrics"]["auroc"]["ci_high"] - e["metrics"]["auroc"]["ci_low"]
             for k, e in (("grouped", grouped), ("loose", loose))}
    assert grouped["metrics"]["auroc"]["value"] == loose["metrics"]["auroc"]["value"]
    assert width["grouped"] > 1.6 * width["loose"]  # four copies: about twice as wide (sqrt 4)
    assert grouped["runs"][0]["bootstrap"]["unit"] == "patient, near-copy groups joined"
    assert loose["runs"][0]["bootstrap"]["unit"] == "case"
    assert grouped["runs"][0]["bootstrap"]["near_copy_groups"] and not loose["runs"][0]["bootstrap"]["near_copy_groups"]
    # and the report says what it resampled: 80 units of 320 images, not 'each image its own patient'
    from medtl.evaluation.report.sections import _patients

    assert grouped["runs"][0]["near_copy_units"] and grouped["runs"][0]["n_test_patients"] == 2 * n
    assert _patients(grouped["runs"][0]).startswith(f" in {2 * n} bootstrap units (")
    assert "near-copies of one image joined" in _patients(grouped["runs"][0])
    assert "near_copy_group" in evaluate_predictions(table, n_boot=10)["settings"]["ci_method"]


def test_score_intervals_at_0_or_1_count_sampling_units_not_images():
    """9 + 9 perfectly separated cases, each four times as near-copies: Newcombe's and Wilson's intervals
    are those of 9 + 9 cases, not of 36 + 36 images."""
    from medtl.evaluation.evaluate import auroc_score_interval, evaluate_predictions, wilson_interval

    p = np.r_[np.linspace(0.05, 0.4, 9), np.linspace(0.6, 0.95, 9)]
    base = pd.DataFrame({"case_id": [f"c{i}" for i in range(18)], "label": ["F"] * 9 + ["M"] * 9,
                         "prob_F": 1 - p, "prob_M": p})
    table = pd.concat([base.assign(case_id=base["case_id"] + f"-{k}", near_copy_group=base["case_id"])
                       for k in range(4)], ignore_index=True)
    m = evaluate_predictions(table, n_boot=100)["tasks"]["default"]["strategies"]["default"]["metrics"]
    assert (m["auroc"]["ci_low"], m["auroc"]["ci_high"]) == pytest.approx(auroc_score_interval(1.0, 9, 9, 0.95))
    assert m["sensitivity"]["ci_low"] == pytest.approx(wilson_interval(9, 9, 0.95)[0])


def test_runs_within_float_noise_of_each_other_scored_the_same_and_an_undefined_run_does_not():
    from medtl.evaluation.evaluate import _aggregate, EvalSettings

    def run(i, value):
        metric = None if value is None else {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.05}
        return {"run_id": f"r{i}", "seed": i, "metrics": {"auc": metric}, "threshold": None, "n_test": 10}

    same = _aggregate([run(i, 0.1234565 + d) for i, d in enumerate((1e-12, -1e-12, 0.0))], 1.0, EvalSettings())
    assert same["metrics"]["auc"]["ci_method"].startswith("Same in every run")
    assert same["metrics"]["auc"]["ci_low"] == pytest.approx(0.1234565 - 0.1)
    gap = _aggregate([run(0, None), run(1, 0.5), run(2, 0.5)], 1.0, EvalSettings())
    assert "ci_method" not in gap["metrics"]["auc"]  # one run undefined: not "the same in every run"


def test_delong_comparisons_say_their_variance_is_cluster_robust_over_near_copies(tmp_path):
    from medtl.evaluation.evaluate import evaluate_predictions
    from medtl.evaluation.report import render_report

    rng = np.random.default_rng(0)
    n = 30
    frames = []
    for strategy in ("a", "b"):
        p = np.clip(np.r_[rng.normal(0.4, 0.2, n), rng.normal(0.6, 0.2, n)], 0.01, 0.99)
        frames.append(pd.DataFrame({"case_id": [f"c{i}" for i in range(2 * n)], "label": ["x"] * n + ["y"] * n,
                                    "prob_x": 1 - p, "prob_y": p, "strategy": strategy, "seed": 0}))
    table = pd.concat(frames, ignore_index=True)
    plain = render_report(evaluate_predictions(table, n_boot=50), tmp_path / "plain")["md"].read_text()
    grouped = table.assign(near_copy_group=[f"g{i // 2}" for i in range(2 * n)] * 2)
    copies = render_report(evaluate_predictions(grouped, n_boot=50), tmp_path / "copies")["md"].read_text()
    assert "DeLong's test for two correlated AUROCs" in plain and "cluster-robust" not in plain
    assert "DeLong's variance is cluster-robust over those units (Obuchowski 1997)" in copies


def test_a_regression_report_warns_that_its_paired_t_test_ignores_near_copies(tmp_path):
    """The paired t-test takes cases as independent: the report says so where the bootstrap joined
    near-copies, and only there."""
    from medtl.evaluation.evaluate import evaluate_predictions
    from medtl.evaluation.report import render_report

    rng = np.random.default_rng(1)
    y = rng.normal(50, 10, 40)
    table = pd.concat([pd.DataFrame({"case_id": [f"c{i}" for i in range(40)], "label": y,
                                     "prediction": y + rng.normal(0, s, 40), "strategy": name, "seed": 0})
                       for name, s in (("a", 3.0), ("b", 5.0))], ignore_index=True)
    warning = "the paired t-test takes the test cases as independent"
    plain = render_report(evaluate_predictions(table, n_boot=50), tmp_path / "plain")["md"].read_text()
    grouped = table.assign(near_copy_group=[f"g{i // 2}" for i in range(40)] * 2)
    evaluated = evaluate_predictions(grouped, n_boot=50)
    copies = render_report(evaluated, tmp_path / "copies")["md"].read_text()
    assert warning not in plain and warning in copies
    for entry in evaluated["tasks"]["default"]["strategies"].values():  # a report.json from before the flag
        for run in entry["runs"]:
            del run["bootstrap"]["near_copy_groups"]
    assert warning in render_report(evaluated, tmp_path / "older")["md"].read_text()


def test_with_a_small_class_an_auroc_interval_is_at_least_newcombes():
    """5 positives among 100, one discordant pair: the bootstrap said AUROC 0.998 (0.987-1.000), 15 times narrower
    than the 0.800-1.000 it gave one pair earlier at AUROC 1, and covered 73% of true AUROCs in a review's
    simulation at this size. With fewer than 50 cases in a class the interval is the wider of it and Newcombe's."""
    from medtl.evaluation.evaluate import auroc_score_interval

    def report(n_pos, n_neg, swap):
        p = np.r_[np.linspace(0.05, 0.5, n_neg), np.linspace(0.55, 0.95, n_pos)]
        if swap:  # the highest negative just above the lowest positive
            p[n_neg - 1] = 0.56
        y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
        df = predictions_from_arrays([f"c{i}" for i in range(len(y))], y, np.c_[1 - p, p], class_names=["neg", "pos"])
        return evaluate_predictions(df, n_boot=300)["tasks"]["default"]["strategies"]["default"]["runs"][0]["metrics"]

    auroc = report(5, 95, True)["auroc"]
    expected = roc_auc_score(np.r_[np.zeros(95), np.ones(5)], np.r_[np.linspace(0.05, 0.5, 95)[:-1], 0.56,
                                                                      np.linspace(0.55, 0.95, 5)])
    assert auroc["value"] == pytest.approx(expected) and auroc["value"] < 1
    assert auroc["ci_low"] == pytest.approx(auroc_score_interval(auroc["value"], 5, 95, 0.95)[0])
    assert auroc["ci_low"] < 0.85
    assert auroc["ci_method"].startswith("the wider of the bootstrap's and Newcombe's")
    assert "ci_method" not in report(60, 60, True)["auroc"]  # enough cases: the bootstrap's own


def test_ppv_interval_covers_the_sampling_of_the_prevalence():
    """PPV moves with the test set's prevalence; a bootstrap stratified by class held it fixed, and its 95%
    interval covered 83% at 1% prevalence (a review). PPV and NPV are resampled as the cases came, sensitivity
    within its class: each interval against a numpy bootstrap of that kind."""
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(30, int), np.zeros(570, int)]
    s = 1 / (1 + np.exp(-rng.normal(2.0 * y - 1.0, 1.0)))
    df = predictions_from_arrays([f"c{i}" for i in range(len(y))], y, np.c_[1 - s, s], class_names=["neg", "pos"])
    got = evaluate_predictions(df, n_boot=2000)["tasks"]["default"]["strategies"]["default"]["runs"][0]["metrics"]
    called = s >= 0.5  # no val rows: the threshold is 0.5
    draws = {"unstratified": [], "stratified": []}
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    for _ in range(2000):
        for kind, idx in (("unstratified", rng.integers(0, len(y), len(y))),
                          ("stratified", np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])):
            yy, cc = y[idx], called[idx]
            draws[kind].append(((yy & cc).sum() / max(cc.sum(), 1), (yy & cc).sum() / yy.sum()))
    ppv_free, sens_strat = (np.percentile(np.array(draws[k])[:, j], [2.5, 97.5])
                            for k, j in (("unstratified", 0), ("stratified", 1)))
    assert (got["ppv"]["ci_low"], got["ppv"]["ci_high"]) == pytest.approx(tuple(ppv_free), abs=0.015)
    assert (got["sensitivity"]["ci_low"], got["sensitivity"]["ci_high"]) == pytest.approx(tuple(sens_strat), abs=0.04)  # steps of 1/30
    ppv_fixed = np.percentile(np.array(draws["stratified"])[:, 0], [2.5, 97.5])
    assert np.ptp(ppv_free) > 1.2 * np.ptp(ppv_fixed)  # the distinction the test draws is real at this size


def test_the_printed_summary_says_which_interval_it_shows(table):
    """With several seeds the printed '95% CI' was the t-interval over seeds (training randomness, about a third of
    a run's interval over the test cases here), unlabelled."""
    from medtl.cli.evaluate import summary_lines

    one = summary_lines(evaluate_predictions(table, n_boot=50))
    assert "95% CI over the test cases: auroc" in one[0]
    seeds = pd.concat([table.assign(run_id=f"r{k}", seed=k) for k in range(3)], ignore_index=True)
    assert "95% t-interval over 3 seeds: auroc" in summary_lines(evaluate_predictions(seeds, n_boot=50))[0]
    # the seeds all scored the same, so the interval shown is a run's over the test cases, and says so
    assert "(every seed scored the same: a run's interval over the test cases)" in summary_lines(
        evaluate_predictions(seeds, n_boot=50))[0]
    assert "no intervals (n_boot 0): auroc" in summary_lines(evaluate_predictions(table, n_boot=0))[0]


def test_the_printed_summary_names_score_intervals():
    """The console line said "95% CI over the test cases" for every metric while the report marked a perfect
    sensitivity's interval as Wilson's (W) and a perfect AUROC's as Newcombe's (N): the marks were dropped."""
    from medtl.cli.evaluate import summary_lines
    from scipy.stats import norm

    y = np.r_[np.zeros(20, int), np.ones(10, int)]
    p = np.r_[np.linspace(0.05, 0.45, 20), np.linspace(0.55, 0.95, 10)]  # every positive above every negative
    perfect = predictions_from_arrays([f"c{i}" for i in range(30)], y, np.c_[1 - p, p], class_names=["no", "yes"], split="test",
                                      run_id="r", strategy="s", task="t", seed=0)
    report = evaluate_predictions(perfect, n_boot=50)
    line = summary_lines(report)[0]
    assert "auroc 1.000 [" in line and "(Newcombe's score interval: the bootstrap cannot vary an AUROC of 0 or 1)" in line
    z = norm.ppf(0.975)  # Wilson (1927) for 10 of 10: (1 + z^2/2n -+ z sqrt(z^2/4n^2)) / (1 + z^2/n)
    low = (1 + z**2 / 20 - z * np.sqrt(z**2 / 400)) / (1 + z**2 / 10)
    assert f"sensitivity 1.000 [{low:.3f}, 1.000] (Wilson's score interval" in line
    from medtl.cli.evaluate import fmt_metric  # the report's D: an AUPRC of 1 over every resample

    assert fmt_metric({"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}).endswith("(no width at the decimals shown, "
                                                                             "which is no certainty)")
    assert "(" not in fmt_metric({"value": 0.9, "ci_low": 0.85, "ci_high": 0.95})
