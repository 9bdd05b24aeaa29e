"""render_report / make_report end to end: report.json layout, threshold discipline, undefined values,
extras and the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from medtl.cli import main
from medtl.evaluation.delong import delong_test
from medtl.evaluation.evaluate import evaluate_predictions, load_report
from medtl.evaluation.metrics import BINARY_METRICS, classification_metrics
from medtl.evaluation.predictions import predictions_from_arrays, write_predictions
from medtl.evaluation.report import make_report, render_report
from medtl.evaluation.synthetic import synthetic_predictions
from medtl.evaluation.thresholds import choose_threshold

FAST = {"n_boot": 60, "seed": 1}


@pytest.fixture(scope="module")
def full_report(tmp_path_factory, binary_table, multiclass_table, regression_table):
    """One rendered report with every section: 3 tasks, seeds, DeLong, learning curves, embedding, Grad-CAM."""
    out = tmp_path_factory.mktemp("report")
    log = out / "log.csv"
    pd.DataFrame({"epoch": [1, 2, 3] * 2, "run_id": ["a"] * 3 + ["b"] * 3, "train_loss": [1.0, 0.7, 0.5] * 2,
                  "val_auroc": [0.6, 0.7, 0.75, 0.62, 0.71, 0.8]}).to_csv(log, index=False)  # fmt: skip
    rng = np.random.default_rng(0)
    feats = out / "feats.npz"
    np.savez(feats, features=np.r_[rng.normal(0, 1, (40, 8)), rng.normal(1, 1, (40, 8))],
             domain=np.array(["cxr"] * 40 + ["mri"] * 40))  # fmt: skip
    from medtl.evaluation.figures import confusion_figure

    cam = out / "case0001.png"
    cam.write_bytes(confusion_figure([{"label": "x", "classes": ["a", "b"], "counts": [[1, 2], [3, 4]]}], "stand-in"))
    table = pd.concat([binary_table, multiclass_table, regression_table], ignore_index=True)
    paths = make_report(table, out / "rep", metrics_log=log, features=feats, gradcam=[cam], **FAST)
    return paths, json.loads(paths["json"].read_text())


def test_report_json_layout(full_report):
    paths, rep = full_report
    assert rep["schema"] == "medtl.evaluation.report" and rep["schema_version"] == "1.0"
    assert rep["settings"]["n_boot"] == 60 and "percentile bootstrap" in rep["settings"]["ci_method"]
    tumor = rep["tasks"]["tumor"]
    assert tumor["kind"] == "binary" and tumor["positive_class"] == "tumor"
    for strategy in ("scratch", "finetune"):
        entry = tumor["strategies"][strategy]
        for m in (*BINARY_METRICS, "brier", "ece", "mce"):
            assert set(entry["metrics"][m]) >= {"value", "ci_low", "ci_high"}, m
        assert entry["threshold"]["rule"] == "youden"
        for run in entry["runs"]:  # every run: bootstrap CIs and its own validation-picked threshold
            assert run["threshold"]["rule"] == "youden" and run["threshold"]["chosen_on"] == "val"
            for name, m in run["metrics"].items():
                if name not in ("ece", "mce"):  # binned calibration errors are biased under resampling
                    assert m["ci_low"] <= m["value"] <= m["ci_high"], name
                    assert "outside_interval" not in m
            assert run["bootstrap"]["unit"] == "patient"
    assert set(rep["tasks"]["tumor3"]["strategies"]["finetune"]["per_class"]) == {"glioma", "meningioma", "none"}
    assert set(rep["tasks"]["age"]["strategies"]["finetune"]["metrics"]) == {"mae", "rmse", "r2", "pearson_r"}


def test_seeds_are_summarised(full_report):
    _, rep = full_report
    entry = rep["tasks"]["tumor"]["strategies"]["finetune"]
    values = [r["metrics"]["auroc"]["value"] for r in entry["runs"]]
    auc = entry["metrics"]["auroc"]
    assert entry["n_runs"] == 2 and auc["n_runs"] == 2
    assert auc["value"] == pytest.approx(np.mean(values)) and auc["std"] == pytest.approx(np.std(values, ddof=1))
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]


def test_delong_comparisons_match_direct_test(full_report, binary_table):
    _, rep = full_report
    comps = rep["tasks"]["tumor"]["comparisons"]
    assert len(comps) == 2  # one per seed
    c = comps[0]
    test = binary_table[binary_table["split"] == "test"]
    a = test[test["run_id"] == c["run_a"]].set_index("case_id")
    b = test[test["run_id"] == c["run_b"]].set_index("case_id").loc[a.index]
    # several images per patient: the variance is cluster-robust over patients
    assert a["patient_id"].duplicated().any() and c["n_clusters"] == a["patient_id"].nunique()
    ref = delong_test(a["label"] == "tumor", a["prob_tumor"], b["prob_tumor"], clusters=a["patient_id"])
    assert c["p_value"] == pytest.approx(ref.p_value) and c["auc_a"] == pytest.approx(ref.auc_a)


def test_html_is_self_contained_and_md_links_exist(full_report):
    paths, rep = full_report
    html = paths["html"].read_text()
    assert not re.search(r'src="(?!data:)', html)  # every image inline
    assert html.count("data:image/png;base64,") == len(rep["figures"]) >= 10
    for needed in ("Learning curves", "Feature embedding", "Grad-CAM", "Methods", "DeLong", "Youden"):
        assert needed in html, needed
    md = paths["md"].read_text()
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (paths["md"].parent / link).is_file()
    assert rep["extras"]["embedding"]["domains"] == {"cxr": 40, "mri": 40}
    assert rep["extras"]["learning_curves"]["metrics"] == ["train_loss", "val_auroc"]


def test_report_json_rerenders(full_report, tmp_path):
    paths, _ = full_report
    out = render_report(load_report(paths["json"]), tmp_path)
    assert "AUROC" in out["md"].read_text()


def _shifted_table():
    """Validation scores run higher than test scores, so Youden on test would pick another cut."""
    rng = np.random.default_rng(4)
    frames = []
    for split, shift, n in (("val", 1.5, 120), ("test", 0.0, 200)):
        y = rng.integers(0, 2, n)
        p = 1 / (1 + np.exp(-(rng.normal(2.0 * y, 1.0) - 1 + shift)))
        frames.append(predictions_from_arrays([f"{split}{i}" for i in range(n)], y, np.c_[1 - p, p],
                                              class_names=["neg", "pos"], split=split, run_id="r", strategy="s"))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def test_threshold_picked_on_validation_is_applied_to_test():
    df = _shifted_table()
    run = evaluate_predictions(df, **FAST)["tasks"]["default"]["strategies"]["s"]["runs"][0]
    val, test = df[df["split"] == "val"], df[df["split"] == "test"]
    t_val = choose_threshold(val["label"] == "pos", val["prob_pos"], "youden").value
    t_test = choose_threshold(test["label"] == "pos", test["prob_pos"], "youden").value
    assert run["threshold"]["value"] == pytest.approx(t_val) and abs(t_val - t_test) > 0.05
    y = (test["label"] == "pos").to_numpy(int)
    expected = classification_metrics(y, test[["prob_neg", "prob_pos"]].to_numpy(), threshold=t_val)
    assert run["confusion_matrix"]["counts"] == expected["confusion_matrix"].astype(int).tolist()
    assert run["metrics"]["sensitivity"]["value"] == pytest.approx(expected["metrics"]["sensitivity"])


def test_no_validation_rows_uses_half_and_says_so(tmp_path):
    df = _shifted_table()
    df = df[df["split"] == "test"]
    rep = evaluate_predictions(df, **FAST)
    run = rep["tasks"]["default"]["strategies"]["s"]["runs"][0]
    assert run["threshold"]["value"] == 0.5 and run["threshold"]["rule"] == "default"
    assert "no validation rows" in run["threshold"]["note"]
    assert run["calibration"]["temperature"] is None
    assert any("no validation rows" in n for n in rep["tasks"]["default"]["notes"])


def test_single_class_test_set_is_undefined_not_a_number():
    df = _shifted_table()
    df = df[(df["split"] == "val") | (df["label"] == "neg")]
    run = evaluate_predictions(df, **FAST)["tasks"]["default"]["strategies"]["s"]["runs"][0]
    auc = run["metrics"]["auroc"]
    assert auc["value"] is None and auc["ci_low"] is None and "both" in auc["reason"]
    assert run["metrics"]["sensitivity"]["value"] is None and "no 'pos' cases" in run["metrics"]["sensitivity"]["reason"]
    assert run["metrics"]["specificity"]["value"] is not None


def test_label_fraction_curve(tmp_path):
    df = synthetic_predictions(40, strategies={"ft": (1.5, 1.0)}, label_fractions=(0.1, 0.5, 1.0), seeds=(0, 1))
    paths = make_report(df, tmp_path, **FAST)
    rep = json.loads(paths["json"].read_text())
    entry = rep["tasks"]["tumor"]["strategies"]["ft"]
    assert [g["label_fraction"] for g in entry["by_label_fraction"]] == [0.1, 0.5, 1.0]
    assert entry["label_fraction"] == 1.0 and entry["n_runs"] == 2  # headline: all labels
    assert (tmp_path / "figures" / "tumor_label_fraction.png").is_file()


def test_cli_evaluate_and_report(tmp_path, binary_table, capsys):
    a = binary_table[binary_table["strategy"] == "scratch"]
    b = binary_table[binary_table["strategy"] == "finetune"]
    write_predictions(a, tmp_path / "a.csv")
    write_predictions(b, tmp_path / "b.csv")
    assert main(["evaluate", "--predictions", str(tmp_path / "a.csv"), "--out", str(tmp_path / "ea"),
                 "--n-boot", "30", "--threshold-rule", "sensitivity", "--target", "0.9"]) == 0  # fmt: skip
    rep = json.loads((tmp_path / "ea" / "report.json").read_text())
    thr = rep["tasks"]["tumor"]["strategies"]["scratch"]["runs"][0]["threshold"]
    assert thr["rule"] == "sensitivity" and thr["sensitivity"] >= 0.9
    # Combined: a report.json, plus a predictions file evaluated on its own.
    assert main(["report", str(tmp_path / "ea" / "report.json"), str(tmp_path / "b.csv"),
                 "--out", str(tmp_path / "cmp"), "--n-boot", "30"]) == 0  # fmt: skip
    both = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert set(both["tasks"]["tumor"]["strategies"]) == {"scratch", "finetune"}
    # Bad input: a clear error, exit status 2.
    bad = a.copy()
    bad.loc[bad.index[0], "prob_tumor"] = 0.99
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert main(["evaluate", "--predictions", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "do not sum to 1" in capsys.readouterr().err


def test_class_absent_from_test_is_explained_per_class(tmp_path, multiclass_table):
    df = multiclass_table[~((multiclass_table["split"] == "test") & (multiclass_table["label"] == "none"))]
    paths = make_report(df, tmp_path, **FAST)
    entry = json.loads(paths["json"].read_text())["tasks"]["tumor3"]["strategies"]["finetune"]
    assert entry["per_class"]["none"]["auroc"]["value"] is None
    assert "no 'none' cases" in entry["per_class"]["none"]["auroc"]["reason"]
    assert entry["metrics"]["auroc"]["value"] is None and "macro mean undefined" in entry["metrics"]["auroc"]["reason"]
    assert entry["per_class"]["glioma"]["auroc"]["value"] is not None
    md = paths["md"].read_text()
    assert "undefined [1]" in md and "no 'none' cases in the test set" in md


def test_report_opens_with_what_was_run_and_warns_on_a_small_test_set(tmp_path):
    import yaml

    from medtl.pipeline.config import PipelineConfig

    config = PipelineConfig.model_validate({
        "name": "demo", "synthetic": True, "source": {"manifest": "m/cxr_synthetic.csv", "image_size": 64},
        "target": {"manifest": "m/mri2d_synthetic.csv", "image_size": 64}, "encoder": {"arch": "resnet10"},
        "pretrain": {"epochs": 4}, "train": {"epochs": 3}, "strategies": ["full", "dann"], "seeds": [0, 1]})
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))  # as a pipeline run folder holds
    small = synthetic_predictions(8, strategies={"full": (1.5, 1.0)}, images_per_patient=2)
    paths = make_report(small, out, **FAST)
    md = paths["md"].read_text()
    head = md[:md.index("## Task")]
    for needed in ("## What was run", "**synthetic** images", "`cxr_synthetic` -> `mri2d_synthetic`",
                   "resnet10; pretrained on the source (supervised, 4 epochs)", "3 epochs per run",
                   "64x64 px", "seeds 0, 1"):
        assert needed in head, needed
    n = json.loads(paths["json"].read_text())["tasks"]["tumor"]["strategies"]["full"]["n_test"]
    assert f"**Test set:** n = {n}" in head and n < 50
    assert "> **Warning.** The test set of task tumor is small" in head
    assert '<p class="warn">' in paths["html"].read_text()
    rep = json.loads(paths["json"].read_text())
    assert rep["extras"]["what_was_run"]["warnings"]


def test_no_run_config_and_a_large_test_set_give_test_lines_and_no_warning(tmp_path):
    big = synthetic_predictions(150, strategies={"full": (2.0, 1.0)}, prevalence=(0.5, 0.5))
    md = make_report(big, tmp_path, **FAST)["md"].read_text()
    head = md[:md.index("## Task")]
    assert "**Test set:** n = " in head and "Warning" not in head and "**Data:**" not in head


def test_delong_table_fits_the_page(full_report):
    paths, rep = full_report
    md = paths["md"].read_text()
    table = md[md.index("### Pairwise comparison (DeLong)"):].split("\n\n")[1]
    assert table.splitlines()[0] == "| A | B | Seed | AUROC A vs B | Difference ± SE | p | p (Holm) |"  # no run ids, no empty Note
    assert rep["tasks"]["tumor"]["comparisons"][0]["run_a"]  # the run ids stay in report.json


def test_multiclass_strategies_are_compared_by_macro_delong_per_seed():
    from medtl.evaluation import evaluate_predictions
    from medtl.evaluation.delong import delong_macro_test
    from medtl.evaluation.synthetic import synthetic_predictions

    classes = ("glioma", "meningioma", "none", "pituitary")
    table = synthetic_predictions(60, strategies={"scratch": (0.8, 1.0), "finetune": (1.8, 1.5)}, classes=classes,
                                  task="tumor4", seeds=(0, 1))
    comps = evaluate_predictions(table, n_boot=50)["tasks"]["tumor4"]["comparisons"]
    assert len(comps) == 2 and all("macro one-vs-rest" in c["test"] for c in comps)
    c = comps[0]
    test = table[table["split"] == "test"]
    a = test[test["run_id"] == c["run_a"]].set_index("case_id")
    b = test[test["run_id"] == c["run_b"]].set_index("case_id").loc[a.index]
    cols = [f"prob_{k}" for k in classes]
    clustered = a["patient_id"].duplicated().any()  # several images per patient: cluster-robust over patients
    assert c["n_clusters"] == (a["patient_id"].nunique() if clustered else None)
    ref = delong_macro_test(a["label"].map({k: i for i, k in enumerate(classes)}).to_numpy(),
                            a[cols].to_numpy(float), b[cols].to_numpy(float), a["patient_id"] if clustered else None)
    assert c["p_value"] == pytest.approx(ref.p_value) and c["auc_a"] == pytest.approx(ref.auc_a)
    assert not any("binary tasks only" in n for n in evaluate_predictions(table, n_boot=50)["tasks"]["tumor4"]["notes"])


def test_regression_strategies_are_compared_by_a_paired_test_of_absolute_errors(tmp_path):
    """Two regressors on the same cases: one comparison per seed, equal to scipy's paired t-test of the absolute
    errors, and the rendered report names that test."""
    from scipy import stats

    from medtl.evaluation.synthetic import synthetic_regression

    good = synthetic_regression(80, strategy="finetune")
    rng = np.random.default_rng(5)
    base = good.assign(strategy="training_mean", run_id="training_mean-age",
                       prediction=good["label"].mean() + rng.normal(0, 0.5, len(good)))
    table = pd.concat([good, base], ignore_index=True)
    paths = make_report(table, tmp_path / "rep", **FAST)
    comps = json.loads(paths["json"].read_text())["tasks"]["age"]["comparisons"]
    assert len(comps) == 1 and comps[0]["test"].startswith("paired t-test of absolute errors")
    c = comps[0]
    test = table[table["split"] == "test"]
    a = test[test["run_id"] == c["run_a"]].set_index("case_id")
    b = test[test["run_id"] == c["run_b"]].set_index("case_id").loc[a.index]
    y = pd.to_numeric(a["label"]).to_numpy(float)
    ea, eb = np.abs(a["prediction"].to_numpy(float) - y), np.abs(b["prediction"].to_numpy(float) - y)
    ref = stats.ttest_rel(ea, eb)
    assert c["p_value"] == pytest.approx(ref.pvalue) and c["difference"] == pytest.approx(ea.mean() - eb.mean())
    assert c["mae_a"] == pytest.approx(ea.mean()) and c["difference"] < 0 and c["p_value"] < 0.05
    md = paths["md"].read_text()
    assert "### Pairwise comparison (paired t-test of absolute errors)" in md and "| MAE A vs B |" in md
    # the baseline is explained, and each strategy read against it (here the model beats it)
    base_mae = np.abs(test[test["strategy"] == "training_mean"]["prediction"] - test[test["strategy"] ==
                      "training_mean"]["label"].astype(float)).mean()
    assert (f"`training_mean` predicts the mean of the labelled training targets for every test case (MAE "
            f"{base_mae:.3g})") in md and "Here every strategy (1) has a lower MAE." in md
    worse = pd.concat([good.assign(prediction=good["prediction"] + 40), base], ignore_index=True)
    assert "Here 1 of 1 strategies are worse than it: finetune." in make_report(worse, tmp_path / "w", **FAST)[
        "md"].read_text()


def _methods_threshold_paragraph(md: str) -> str:
    return next(line for line in md.splitlines() if line.startswith("**Threshold (binary).**"))


def test_methods_and_caption_describe_the_threshold_actually_used(tmp_path):
    df = _shifted_table()
    # validation rows: the rule chosen on val
    md = make_report(df, tmp_path / "val", **FAST)["md"].read_text()
    assert "Youden's J" in _methods_threshold_paragraph(md) and "0.5" not in _methods_threshold_paragraph(md)
    run = json.loads((tmp_path / "val" / "report.json").read_text())["tasks"]["default"]["strategies"]["s"]["runs"][0]
    assert f"Confusion matrices on test, at s: threshold {run['threshold']['value']:.4g} (youden on val)" in md
    # no validation rows, the threshold predict applied: no Youden, no 0.5, "medtl predict's" in the caption
    test = df[df["split"] == "test"]
    md = make_report(test, tmp_path / "predict", model_threshold=0.3, **FAST)["md"].read_text()
    para = _methods_threshold_paragraph(md)
    assert "Youden" not in para and "0.5" not in para and "the threshold medtl predict applied" in para
    assert "Confusion matrices on test, at s: threshold 0.3 (medtl predict's)" in md
    assert "validation-chosen" not in md and "model's own" not in md
    # neither: the default, said as such
    md = make_report(test, tmp_path / "default", **FAST)["md"].read_text()
    assert "the default 0.5" in _methods_threshold_paragraph(md) and "Youden" not in _methods_threshold_paragraph(md)
    assert "at s: threshold 0.5 (default)" in md


def test_no_skill_references_are_computed_from_the_test_labels(tmp_path):
    df = _shifted_table()
    paths = make_report(df, tmp_path, **FAST)
    run = json.loads(paths["json"].read_text())["tasks"]["default"]["strategies"]["s"]["runs"][0]
    y = (df[df["split"] == "test"]["label"] == "pos").to_numpy()
    p = y.mean()
    assert run["no_skill"]["accuracy"] == pytest.approx(max(p, 1 - p))
    assert run["no_skill"]["brier"] == pytest.approx(np.mean((y - p) ** 2))
    assert run["no_skill"]["auprc"] == pytest.approx(p) and run["no_skill"]["auroc"] == 0.5
    md = paths["md"].read_text()
    assert (f"accuracy {max(p, 1 - p):.3f} (always the majority class), Brier {p * (1 - p):.3f} (always the "
            f"prevalence {p:.3f}), AUPRC {p:.3f} (the prevalence), AUROC 0.5") in md


def test_report_figures_leave_the_users_matplotlib_backend_alone(tmp_path):
    """A notebook imports pyplot after medtl has drawn a report: its inline backend must still be the one
    pyplot picks (medtl had switched an untouched matplotlib to Agg, and the user's own plots vanished)."""
    import subprocess
    import sys

    script = f"""
import sys, matplotlib
from medtl.evaluation.report import make_report
from medtl.evaluation.synthetic import synthetic_predictions
make_report(synthetic_predictions(30, seeds=(0,)), {str(tmp_path / "rep")!r}, n_boot=20)
assert "matplotlib.pyplot" not in sys.modules, "the report imported pyplot"
import matplotlib.pyplot as plt
print(matplotlib.get_backend())
"""
    env = {**__import__("os").environ, "MPLBACKEND": "svg"}  # a backend other than Agg that needs no display
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "svg"
    assert any((tmp_path / "rep" / "figures").glob("*.png"))
