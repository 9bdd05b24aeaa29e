"""Every checkpoint a pipeline job writes is a deployable model: `medtl predict` and `export-bundle`
accept it, decide with the validation-chosen threshold, and reproduce the job's own probabilities."""

import json

import numpy as np
import pandas as pd
import pytest

from medtl.cli import main
from medtl.deploy.batch import predict_batch
from medtl.deploy.model import load_model
from medtl.models.checkpoint import read_checkpoint
from medtl.pipeline import run_pipeline


@pytest.fixture(scope="module")
def finished(tiny, make_config):
    out = tiny / "run_ckpt"
    run_pipeline(make_config(tiny, name="ckpt.yaml"), tiny / "data", out)
    return out


def test_pipeline_checkpoints_carry_head_task_threshold_and_precision(finished):
    report = json.loads((finished / "report.json").read_text())
    jobs = sorted((finished / "transfer").glob("*/*/*/seed0/best.pt"))
    assert len(jobs) == 6  # 3 strategies x 2 label fractions
    for ckpt in jobs:
        meta = read_checkpoint(ckpt)["meta"]
        assert meta["task"] == "binary" and meta["task_name"] == "tumor"
        assert meta["precision"] == "auto" and meta["intensity"]["preset"] == "mri2d"
        assert meta["threshold_rule"]["rule"] in ("youden", "default")
        # the report chose this run's threshold on the same validation probabilities
        strategy, frac = ckpt.parts[-3], float(ckpt.parts[-4].removeprefix("frac"))
        entries = report["tasks"]["tumor"]["strategies"][strategy].get("by_label_fraction") or []
        entry = next(e for e in entries if e["label_fraction"] == frac)
        per_run = entry["threshold"].get("per_run") or {}
        values = list(per_run.values()) or [entry["threshold"]["value"]]
        assert meta["threshold"] == pytest.approx(values[0], abs=1e-9)


def test_predict_on_a_job_checkpoint_reproduces_the_jobs_probabilities(finished, tiny, tmp_path):
    for ckpt in sorted((finished / "transfer").glob("*/frac1/*/seed0/best.pt")):
        job = pd.read_csv(ckpt.parent / "predictions.csv")
        test = job[job["split"] == "test"].set_index("case_id")
        logit_cols = [c for c in test.columns if c.startswith("logit_")]
        assert len(logit_cols) == 2  # stored for temperature scaling; their softmax is the probabilities
        z = test[logit_cols].to_numpy(float)
        soft = np.exp(z - z.max(1, keepdims=True))
        np.testing.assert_allclose(soft / soft.sum(1, keepdims=True),
                                   test[[c.replace("logit_", "prob_") for c in logit_cols]].to_numpy(float), atol=1e-5)
        result = predict_batch(ckpt, tiny / "manifests" / "tgt.csv", tmp_path / ckpt.parts[-3], data_root=tiny / "data",
                               split="test", progress=False)
        rows = pd.read_csv(result.csv)
        assert (rows["status"] == "ok").all() and len(rows) == len(test)
        rows = rows.set_index("case_id").loc[test.index]
        for col in [c for c in test.columns if c.startswith("prob_")]:
            np.testing.assert_allclose(rows[col].to_numpy(float), test[col].to_numpy(float), atol=1e-4)
        thr = read_checkpoint(ckpt)["meta"]["threshold"]
        labels = test.columns[test.columns.str.startswith("prob_")].str.removeprefix("prob_").tolist()
        expected = np.where(test[f"prob_{labels[1]}"] >= thr, labels[1], labels[0])
        assert (rows["predicted_label"].to_numpy() == expected).all()


def test_export_bundle_from_a_job_checkpoint(finished, tmp_path):
    ckpt = next((finished / "transfer").glob("*/frac1/full/seed0/best.pt"))
    assert main(["export-bundle", "--model", str(ckpt), "--out", str(tmp_path / "bundle")]) == 0
    bundle, direct = load_model(tmp_path / "bundle"), load_model(ckpt)
    assert bundle.label_names == direct.label_names and bundle.threshold == pytest.approx(direct.threshold)


@pytest.fixture(scope="module")
def regression_run(tiny, make_config):
    import shutil

    src = tiny / "manifests" / "tgt.csv"
    df = pd.read_csv(src, dtype=str)
    rng = np.random.default_rng(0)
    df["score"] = [f"{40 + 20 * (lab != df['label'].iloc[0]) + rng.normal(0, 3):.2f}" for lab in df["label"]]
    df.to_csv(tiny / "manifests" / "tgt_reg.csv", index=False)
    shutil.copyfile(src.with_suffix(".meta.json"), tiny / "manifests" / "tgt_reg.meta.json")
    cfg = make_config(tiny, epochs=2, name="reg.yaml").read_text()
    cfg = (cfg.replace("manifests/tgt.csv", "manifests/tgt_reg.csv")
           .replace("tasks: [{name: tumor}]", "tasks: [{name: score, kind: regression, label_column: score}]")
           .replace("strategies: [feature_extraction, full, dann]", "strategies: [full]")
           .replace("label_fractions: [0.5, 1.0]", "label_fractions: [1.0]"))
    (tiny / "reg.yaml").write_text(cfg)
    out = tiny / "run_reg"
    run_pipeline(tiny / "reg.yaml", tiny / "data", out)
    return out, df


def test_regression_jobs_learn_standardised_targets_and_carry_the_training_mean_baseline(regression_run):
    """A numeric column as the task: the head stores the labelled rows' mean/std, and the report gains
    a training_mean strategy that predicts exactly that mean for every case."""
    out, df = regression_run
    train = df[df["split"] == "train"]["score"].astype(float)
    baseline = pd.read_csv(out / "transfer" / "score" / "frac1" / "training_mean" / "seed0" / "predictions.csv")
    assert set(baseline["split"]) == {"val", "test"}
    np.testing.assert_allclose(baseline["prediction"], train.mean(), rtol=1e-9)
    head = read_checkpoint(out / "transfer" / "score" / "frac1" / "full" / "seed0" / "best.pt")["meta"]["model"]["head"]
    assert head["target_mean"] == pytest.approx(train.mean()) and head["target_std"] == pytest.approx(train.std(ddof=0))
    report = json.loads((out / "report.json").read_text())
    assert set(report["tasks"]["score"]["strategies"]) == {"full", "training_mean"}
    full = pd.read_csv(out / "transfer" / "score" / "frac1" / "full" / "seed0" / "predictions.csv")
    assert full["prediction"].between(0, 100).all()  # in the target's units, not standard deviations
    # both tables carry the manifest's targets as written, so the model is tested against the baseline case by case
    truth = dict(zip(df["path"], df["score"].astype(float)))
    for table in (full, baseline):
        assert table["label"].tolist() == [truth[c] for c in table["case_id"]]
    pair = [c for c in report["tasks"]["score"]["comparisons"] if {c["strategy_a"], c["strategy_b"]} == {"full",
                                                                                                       "training_mean"}]
    assert len(pair) == 1 and pair[0]["test"].startswith("paired t-test") and pair[0]["p_value"] is not None


def test_predict_on_a_regression_checkpoint_gives_values_in_the_targets_units(regression_run, tiny, tmp_path):
    """The regression job, deployed: medtl predict answers in the target's units and reproduces the job's
    own predictions."""
    from medtl.errors import MedtlError

    out, _ = regression_run
    ckpt = out / "transfer" / "score" / "frac1" / "full" / "seed0" / "best.pt"
    job = pd.read_csv(ckpt.parent / "predictions.csv")
    test = job[job["split"] == "test"].set_index("case_id")
    result = predict_batch(ckpt, tiny / "manifests" / "tgt_reg.csv", tmp_path / "out", data_root=tiny / "data",
                           split="test", progress=False)
    rows = pd.read_csv(result.csv).set_index("case_id").loc[test.index]
    assert "predicted_score" in rows.columns and not any(c.startswith("prob_") for c in rows.columns)
    np.testing.assert_allclose(rows["predicted_score"].to_numpy(float), test["prediction"].to_numpy(float), atol=1e-4)
    with pytest.raises(MedtlError, match="--sr"):
        predict_batch(ckpt, tiny / "manifests" / "tgt_reg.csv", tmp_path / "sr", data_root=tiny / "data",
                      split="test", write_sr=True, progress=False)


def test_predict_on_the_folder_a_job_trained_on_points_evaluate_at_the_jobs_manifest(finished, tiny, tmp_path, capsys):
    """A review: predict on the folder a pipeline job trained on suggested building LABELS.csv from it with every
    image as test (177 of 253 were training images); the job's checkpoint did not know its manifest. It does now,
    and the printed evaluate uses it, so only the job's test images are scored."""
    ckpt = sorted((finished / "transfer").glob("*/frac1/*/seed0/best.pt"))[0]
    manifest = tiny / "manifests" / "tgt.csv"
    assert read_checkpoint(ckpt)["meta"]["manifest"] == str(manifest.resolve())
    assert main(["predict", "--model", str(ckpt), "--input", str(tiny / "data"), "--out", str(tmp_path / "p"),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"--labels {manifest.resolve()}" in printed and "these are the model's training images" in printed
    evaluate = next(line.strip() for line in printed.splitlines() if line.strip().startswith("medtl evaluate"))
    import shlex

    assert main([*shlex.split(evaluate)[1:]]) == 0
    report = json.loads((tmp_path / "p" / "report" / "report.json").read_text())
    job = pd.read_csv(ckpt.parent / "predictions.csv")
    n_test = int((job["split"] == "test").sum())
    scored = next(iter(next(iter(report["tasks"].values()))["strategies"].values()))["n_test"]
    assert scored == n_test < len(job)  # the job's test images, not the whole folder
