"""Exact label budgets (``label_counts``), regression sampling, 3D self-supervised sources, and the
shipped 3D scarce-label pipeline run end to end on real IXI volumes (then ``medtl predict`` on its model)."""

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from medtl.cli import main
from medtl.data.manifest import Manifest, ManifestRow, _share, stratified_sample
from medtl.errors import MedtlError
from medtl.models import build_encoder
from medtl.models.checkpoint import encoder_config
from medtl.models.transfer import encoder_for
from medtl.pipeline import run_pipeline
from medtl.pipeline.config import load_pipeline
from medtl.similarity.recommend import recommend


REPO = Path(__file__).resolve().parents[2]


def _rows(counts: dict[str, int]) -> list[ManifestRow]:
    return [ManifestRow(f"{label}_{i}.png", label, f"P{label}{i}", "d", "train", "cxr")
            for label, n in counts.items() for i in range(n)]


@pytest.mark.parametrize("sizes, count, want", [
    ([41, 42], 10, [5, 5]),  # IXI sex, 10 volumes
    ([41, 42], 20, [10, 10]),
    ([90, 5, 5], 10, [8, 1, 1]),  # at least one per label, the rest in proportion
    ([3, 3, 3], 3, [1, 1, 1]),
    ([7, 2], 9, [7, 2]),  # every row
])
def test_share_follows_the_largest_remainder_rule(sizes, count, want):
    assert _share(count, sizes) == want and sum(want) == count


@pytest.mark.parametrize("count", [1, 10])
def test_share_refuses_impossible_counts(count):
    with pytest.raises(MedtlError, match="cannot draw"):
        _share(count, [2, 3] if count == 10 else [4, 4])


def test_exact_count_is_stratified_and_reproducible():
    rows = _rows({"F": 41, "M": 42})
    picked = stratified_sample(rows, 20 / 83, np.random.default_rng(3), count=20)
    assert len(picked) == 20 and Counter(r.label for r in picked) == {"F": 10, "M": 10}
    again = stratified_sample(rows, 20 / 83, np.random.default_rng(3), count=20)
    assert [r.path for r in again] == [r.path for r in picked]
    # without a count the fraction rounds up per label (the label_fractions rule, unchanged)
    assert len(stratified_sample(rows, 20 / 83, np.random.default_rng(3))) == 10 + 11


def test_regression_rows_are_drawn_uniformly_not_one_per_value():
    # every age is its own value: stratifying by it would keep every row
    rows = [ManifestRow(f"v{i}.nii.gz", f"{20 + i * 0.7:.2f}", f"P{i}", "d", "train", "mri3d") for i in range(83)]
    assert len(stratified_sample(rows, 0.1, np.random.default_rng(0))) == 83  # the trap
    assert len(stratified_sample(rows, 0.1, np.random.default_rng(0), by_label=False)) == 9  # ceil(8.3)
    assert len(stratified_sample(rows, 0.1, np.random.default_rng(0), count=10, by_label=False)) == 10
    capped = Manifest(rows, []).sample(12)  # a profile's max_per_split on a regression task
    assert len(capped) == 12


def test_label_counts_and_fractions_are_exclusive(tmp_path):
    text = (REPO / "pipelines" / "mri3d_scarce_labels.yaml").read_text()
    bad = tmp_path / "both.yaml"
    bad.write_text(text.replace("label_counts: [10, 20, 40]", "label_counts: [10, 20, 40]\nlabel_fractions: [0.5]"))
    with pytest.raises(Exception, match="not both"):
        load_pipeline(bad)
    assert load_pipeline(REPO / "pipelines" / "mri3d_scarce_labels.yaml").label_counts == [10, 20, 40]


def test_a_3d_checkpoint_is_used_as_is_and_refuses_a_lift(tmp_path):
    from medtl.models import Head, Model
    from medtl.models.checkpoint import save_checkpoint

    enc = build_encoder("resnet10", spatial_dims=3)
    path = tmp_path / "enc3d.pt"
    save_checkpoint(path, Model(enc, Head(enc.out_features, "binary", 2)))
    assert encoder_config(path)["spatial_dims"] == 3
    loaded = encoder_for(path, 3, "none", arch="resnet10")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), enc.state_dict().values()))
    with pytest.raises(MedtlError, match="3D encoder"):
        encoder_for(path, 3, "i3d", arch="resnet10")
    with pytest.raises(MedtlError, match="3D encoder"):
        encoder_for(path, 2, "none", arch="resnet10")


def test_an_unmeasured_option_counts_as_the_middle_rank():
    measured = [{"source": "s", "encoder": e, "strategy": "full", "scores": {"logme": v, "mmd2": d}}
                for e, v, d in (("a", 1.0, 0.1), ("b", 0.5, 0.2), ("c", 0.2, 0.3))]
    unmeasured = {"source": "s", "encoder": "x3d", "strategy": "full", "scores": {}}
    rec = recommend({}, measured + [unmeasured], weights={"logme": 1.0, "mmd2": 1.0})
    rows = {r["encoder"]: r for r in rec["ranking"]}
    assert rows["x3d"]["composite"] == pytest.approx(0.5)  # not 0, and not the best by default
    assert rows["a"]["composite"] == pytest.approx(1.0) and rec["recommended"].split("/")[1] == "a"
    assert rows["x3d"]["missing_metrics"] == ["logme", "mmd2"]


@pytest.mark.real_data
def test_mri3d_scarce_quick_profile_then_predict(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    run_pipeline(REPO / "pipelines" / "mri3d_scarce_labels.yaml", data_root, out, profile="quick", progress=False)
    # the 3D source: MoCo on IXI training volumes at the target's grid, a 3D encoder
    ssl = out / "pretrain" / "sources" / "ixi_ssl" / "model.pt"
    assert encoder_config(ssl)["spatial_dims"] == 3
    meta = torch.load(ssl, weights_only=True)["meta"]
    assert meta["mode"] == "moco" and tuple(meta["intensity"]["spacing"]) == (8.0, 8.0, 8.0)
    assert "Not measured" in (out / "similarity" / "ixi_ssl.md").read_text()
    # only the encoders the strategies start from are measured (not a random one, not the unused default), the
    # 3D encoder's option says why it has no measurement, and the lifts are said to share one encoder's
    assert set(json.loads((out / "similarity" / "similarity.json").read_text())) == {"cxr_ssl"}
    rec = json.loads((out / "similarity" / "recommendation.json").read_text())
    ssl_3d = next(r for r in rec["ranking"] if r["strategy"] == "ssl_3d_ixi")
    assert any("ixi_ssl is a 3D encoder and the source images are 2D" in reason for reason in ssl_3d["reasons"])
    assert "The options lifted from cxr_ssl (2.5d, acs, i3d) share its measurements" in rec["explanation"]
    assert all(r["method"] in ("full", "scratch") for r in rec["ranking"])  # a row is a candidate again
    # exact budgets: 4 and 8 labelled volumes per job, for both tasks; the fraction is count / training rows
    with open(out / "predictions.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    fractions = {(p["task"], p["run_id"].split("/")[2]): float(p["label_fraction"]) for p in preds}
    n_train = {"sex": 13, "age": 12}  # max_per_split 12: per label rounded up (7 + 6); the regression task too
    assert fractions == {(t, f"n{n}"): pytest.approx(n / n_train[t]) for t in ("sex", "age") for n in (4, 8)}
    for n in (4, 8):
        base = json.loads((out / "transfer" / "age" / f"n{n}" / "training_mean" / "seed0" / "baseline.json").read_text())
        assert base["n_labelled"] == n
    job = out / "transfer" / "sex" / "n4" / "ssl_3d_ixi" / "seed0"
    assert (job / "best.pt").exists() and not (job / "last.pt").exists()  # a finished job keeps no resume state
    # the chain: the job's model predicts the test volumes with medtl predict, the same as the pipeline did
    test_rows = [p for p in preds if p["run_id"] == "sex/ssl_3d_ixi/n4/seed0" and p["split"] == "test"]
    manifest = tmp_path / "test.csv"
    src = REPO / "data_manifests" / "mri3d_ixi.csv"
    with open(src, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["path"] in {p["case_id"] for p in test_rows}]
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["predict", "--model", str(job / "best.pt"), "--input", str(manifest), "--data-root", str(data_root),
                 "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    with open(tmp_path / "pred" / "results.csv", newline="") as f:
        got = {r["case_id"]: float(r["prob_M"]) for r in csv.DictReader(f)}
    want = {p["case_id"]: float(p["prob_M"]) for p in test_rows}
    assert set(got) == set(want) and len(want) > 0
    assert max(abs(got[k] - want[k]) for k in want) < 1e-4


@pytest.mark.parametrize("extra, why", [
    ("label_counts: [4]\nseeds_per_fraction: {0.5: 1}", "seeds_per_fraction"),
    ("label_counts: [0, 4]", "at least 1"),
])
def test_label_counts_config_mistakes_are_named(tiny, make_config, extra, why):
    path = tiny / "lc_bad.yaml"
    path.write_text(make_config.config.replace("EPOCHS", "1").replace("label_fractions: [0.5, 1.0]", extra))
    with pytest.raises(Exception, match=why):
        load_pipeline(path)


def test_hparams_only_for_the_self_supervised_mode(tiny, make_config):
    path = tiny / "hp_bad.yaml"
    path.write_text(make_config.config.replace("EPOCHS", "1").replace(
        "pretrain: {epochs: 1, batch_size: 8}", "pretrain: {mode: supervised, hparams: {queue_size: 8}}"))
    with pytest.raises(Exception, match="only the self-supervised mode"):
        load_pipeline(path)


@pytest.mark.parametrize("counts, why", [("[5, 500]", "exceed"), ("[1, 4]", "one per label")])
def test_impossible_label_counts_stop_the_run_before_any_training(tiny, make_config, counts, why):
    path = tiny / "lc_big.yaml"
    path.write_text(make_config.config.replace("EPOCHS", "1").replace("label_fractions: [0.5, 1.0]",
                                                                      f"label_counts: {counts}"))
    out = tiny / f"lc_big_{why[:3]}"
    with pytest.raises(MedtlError, match=why):
        run_pipeline(path, tiny / "data", out, progress=False)
    assert not (out / "pretrain").exists()


def test_label_counts_run_end_to_end_on_the_tiny_pipeline(tiny, make_config):
    path = tiny / "lc.yaml"
    path.write_text(make_config.config.replace("EPOCHS", "1").replace("label_fractions: [0.5, 1.0]",
                                                                      "label_counts: [3, 6]")
                    .replace("strategies: [feature_extraction, full, dann]", "strategies: [scratch, full]"))
    out = tiny / "lc_run"
    run_pipeline(path, tiny / "data", out, progress=False)
    assert sorted(p.name for p in (out / "transfer" / "tumor").iterdir()) == ["n3", "n6"]
    cfg = json.loads((out / "transfer" / "tumor" / "n3" / "full" / "seed0" / "config.json").read_text())
    assert cfg  # the trainer's record of the job
    from medtl.pipeline.results import pipeline_section

    page = pipeline_section(out)
    assert "labelled training rows [3, 6]" in page and "3 labelled" in page and "6 labelled" in page
