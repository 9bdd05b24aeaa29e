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


def _case_column(df: pd.DataFrame) -> str:
    return "case_id" if "case_id" in df.columns else "key"


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
        result = predict_batch(ckpt, tiny / "manifests" / "tgt.csv", tmp_path / ckpt.parts[-3], data_root=tiny / "data",
                               split="test", progress=False)
        rows = pd.read_csv(result.csv)
        assert (rows["status"] == "ok").all() and len(rows) == len(test)
        rows = rows.set_index(_case_column(rows)).loc[test.index]
        for col in [c for c in test.columns if c.startswith("prob_")]:
            np.testing.assert_allclose(rows[col].to_numpy(float), test[col].to_numpy(float), atol=1e-4)
        thr = read_checkpoint(ckpt)["meta"]["threshold"]
        labels = test.columns[test.columns.str.startswith("prob_")].str.removeprefix("prob_").tolist()
        expected = np.where(test[f"prob_{labels[1]}"] >= thr, labels[1], labels[0])
        decided = "predicted_label" if "predicted_label" in rows.columns else "prediction"
        assert (rows[decided].to_numpy() == expected).all()


def test_export_bundle_from_a_job_checkpoint(finished, tmp_path):
    ckpt = next((finished / "transfer").glob("*/frac1/full/seed0/best.pt"))
    assert main(["export-bundle", "--model", str(ckpt), "--out", str(tmp_path / "bundle")]) == 0
    bundle, direct = load_model(tmp_path / "bundle"), load_model(ckpt)
    assert bundle.label_names == direct.label_names and bundle.threshold == pytest.approx(direct.threshold)
