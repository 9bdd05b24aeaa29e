"""What a reader decides from: models that share a run id are still compared, the small-test warning follows
the paired tests, a regression is read against a constant, and an AUROC below chance says so."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtl.evaluation.delong import delong_test
from medtl.evaluation.evaluate import evaluate_predictions
from medtl.evaluation.report import make_report
from medtl.evaluation.synthetic import synthetic_predictions, synthetic_regression

FAST = {"n_boot": 60, "seed": 1}


def test_two_models_with_one_run_id_are_compared_on_their_shared_cases():
    """medtl train writes run_id seed0 for every model: a comparison keyed by run id alone mixed both models'
    rows and refused them as 'test cases differ' (220 vs 220, 110 shared)."""
    table = synthetic_predictions(60, strategies={"model_a": (0.8, 1.0), "model_b": (1.8, 1.5)}, images_per_patient=1)
    table["run_id"] = "seed0"
    (c,) = evaluate_predictions(table, n_boot=50)["tasks"]["tumor"]["comparisons"]
    assert c.get("note") is None and c["p_value"] is not None
    test = table[table["split"] == "test"]
    a = test[test["strategy"] == c["strategy_a"]].set_index("case_id")
    b = test[test["strategy"] == c["strategy_b"]].set_index("case_id").loc[a.index]
    ref = delong_test(a["label"] == "tumor", a["prob_tumor"], b["prob_tumor"])
    assert c["p_value"] == pytest.approx(ref.p_value) and c["auc_b"] == pytest.approx(ref.auc_b)


def _two_regressors(n: int, shrink_b: float) -> pd.DataFrame:
    good = synthetic_regression(n, strategy="good", seed=3)
    rng = np.random.default_rng(7)
    y = good["label"].astype(float)
    other = good.assign(strategy="other", run_id="other-age",
                        prediction=y.mean() + shrink_b * (y - y.mean()) + rng.normal(0, 6, len(good)))
    return pd.concat([good, other], ignore_index=True)


def test_the_small_test_warning_follows_the_paired_tests(tmp_path):
    resolved = make_report(_two_regressors(40, 0.1), tmp_path / "a", **FAST)
    md = resolved["md"].read_text()
    assert "is small (n = " in md
    assert "Compare strategies by the paired tests, not by their overlapping intervals: 1 of 1" in md
    assert "read the ranking as unsettled." not in md
    same = _two_regressors(40, 1.0)
    same.loc[same["strategy"] == "other", "prediction"] = same.loc[same["strategy"] == "good", "prediction"].to_numpy() + 1e-3
    md = make_report(same, tmp_path / "b", **FAST)["md"].read_text()
    assert "No paired test resolves a difference between strategies on this test set: read the ranking" in md


def test_a_regression_is_read_against_the_validation_mean(tmp_path):
    table = synthetic_regression(120, seed=2)
    paths = make_report(table, tmp_path / "r", **FAST)
    import json

    (run,) = json.loads(paths["json"].read_text())["tasks"]["age"]["strategies"]["finetune"]["runs"]
    y = table.loc[table["split"] == "test", "label"].astype(float).to_numpy()
    c = table.loc[table["split"] == "val", "label"].astype(float).mean()
    ns = run["no_skill"]
    assert ns["from"] == "val" and ns["constant"] == pytest.approx(c)
    assert ns["mae"] == pytest.approx(np.abs(y - c).mean()) and ns["rmse"] == pytest.approx(np.sqrt(((y - c) ** 2).mean()))
    assert f"MAE {ns['mae']:.3g}, RMSE {ns['rmse']:.3g} (always {c:.3g}, the validation mean)" in paths["md"].read_text()
    # the model beats the constant here; a constant would not
    assert run["metrics"]["mae"]["value"] < ns["mae"]
    test_only = table[table["split"] == "test"]
    (run,) = evaluate_predictions(test_only, n_boot=0)["tasks"]["age"]["strategies"]["finetune"]["runs"]
    assert run["no_skill"]["from"] == "test" and run["no_skill"]["constant"] == pytest.approx(y.mean())


def test_an_auroc_interval_below_chance_asks_to_check_the_positive_class():
    table = synthetic_predictions(80, strategies={"m": (1.8, 1.5)}, images_per_patient=1)
    rep = evaluate_predictions(table, n_boot=100)
    (run,) = rep["tasks"]["tumor"]["strategies"]["m"]["runs"]
    assert run["metrics"]["auroc"]["value"] > 0.5 and not any("below 0.5" in n for n in run["notes"])
    flipped = table.assign(prob_tumor=table["prob_normal"], prob_normal=table["prob_tumor"])
    (run,) = evaluate_predictions(flipped, n_boot=100)["tasks"]["tumor"]["strategies"]["m"]["runs"]
    assert run["metrics"]["auroc"]["ci_high"] < 0.5
    (note,) = [n for n in run["notes"] if "below 0.5" in n]
    assert "positive class (tumor)" in note
