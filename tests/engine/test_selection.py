"""Label-free checkpoint selection during training (medtl.engine.selection), and in a UDA pipeline."""

import json

import numpy as np
import pytest
import torch

from medtl.adapt import selection as S
from medtl.engine.selection import SELECTOR_MONITORS, SelectorScores, features_and_probs, selector_regret
from medtl.models.checkpoint import Model
from medtl.models.heads import Head


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.out_features = 3

    def forward(self, x):
        return torch.tanh(self.fc(x.flatten(1)))


def _loader(n, seed, labelled=True):
    g = torch.Generator().manual_seed(seed)
    items = [{"image": torch.randn(1, 2, 2, generator=g) + (i % 2), "label": torch.tensor(i % 2)} for i in range(n)]
    if not labelled:
        items = [{"image": d["image"]} for d in items]
    return torch.utils.data.DataLoader(items, batch_size=5)


def test_every_selector_is_logged_and_equals_the_pure_function_on_the_same_outputs():
    torch.manual_seed(0)
    model = Model(_Encoder(), Head(3, "binary"))
    src, tgt, val, test = _loader(12, 0), _loader(10, 1, labelled=False), _loader(8, 2), _loader(8, 3)
    rec = SelectorScores(src, tgt, oracle={"val": val, "test": test})(model)
    s, t = features_and_probs(model, src, torch.device("cpu"), None), features_and_probs(model, tgt, torch.device("cpu"), None)
    assert "labels" not in t
    assert rec["sel_source_accuracy"] == pytest.approx(S.source_accuracy(s["probs"], s["labels"]))
    assert rec["sel_dev"] == pytest.approx(S.dev_score(s["probs"], s["labels"], s["features"], t["features"], seed=0))
    # DEV's weights logged beside it: their mean and Kish's effective share, from the same weights by hand
    import numpy as np

    w = S.density_ratio(s["features"], t["features"], seed=0)
    assert rec["dev_mean_weight"] == pytest.approx(w.mean())
    assert rec["dev_effective_share"] == pytest.approx(w.sum() ** 2 / (len(w) * np.sum(w ** 2)))
    assert 0 < rec["dev_effective_share"] <= 1
    assert rec["sel_entropy"] == pytest.approx(S.prediction_entropy(t["probs"]))
    assert rec["sel_infomax"] == pytest.approx(S.information_maximization(t["probs"]))
    assert rec["sel_snd"] == pytest.approx(S.soft_neighborhood_density(t["probs"]))
    from sklearn.metrics import roc_auc_score

    v = features_and_probs(model, val, torch.device("cpu"), None)
    assert rec["oracle_val_auroc"] == pytest.approx(roc_auc_score(v["labels"], v["probs"][:, 1]))
    assert set(SELECTOR_MONITORS) == {"source_loss", *S.SELECTORS}


def test_regret_is_measured_against_the_epoch_target_labels_would_choose():
    history = [  # epoch 1 is best on target val; entropy prefers epoch 2, the source loss epoch 0
        {"epoch": 0, "val_loss": 0.1, "sel_entropy": 0.5, "oracle_val_auroc": 0.6, "oracle_test_auroc": 0.62},
        {"epoch": 1, "val_loss": 0.3, "sel_entropy": 0.4, "oracle_val_auroc": 0.9, "oracle_test_auroc": 0.85},
        {"epoch": 2, "val_loss": 0.2, "sel_entropy": 0.1, "oracle_val_auroc": 0.7, "oracle_test_auroc": 0.75},
    ]
    r = selector_regret(history)
    assert r["target_labels"] == {"epoch": 1, "test_auroc": 0.85, "regret": 0.0}
    assert r["source_loss"]["epoch"] == 0 and r["source_loss"]["regret"] == pytest.approx(0.23)
    assert r["entropy"]["epoch"] == 2 and r["entropy"]["regret"] == pytest.approx(0.10)
    assert "dev" not in r  # never logged in this history


def test_a_uda_pipeline_chooses_its_checkpoint_with_the_configured_selector(tmp_path):
    from medtl.data.build import build_manifest
    from medtl.data.synthetic import write_synthetic_source
    from medtl.pipeline import run_pipeline
    from medtl.pipeline.results import pipeline_section

    data = tmp_path / "data"
    for name, seed in (("src", 0), ("tgt", 1)):
        raw = write_synthetic_source(data / name, "mri2d", 30, seed=seed, shift=0.6 * seed, size=32)
        build_manifest(raw, data, seed=0, group_near_copies=False).save(tmp_path / f"{name}.csv")
    (tmp_path / "uda.yaml").write_text(
        "name: uda\nseeds: [0]\nsource: {manifest: src.csv, image_size: 32}\npretrain: {epochs: 1, batch_size: 8}\n"
        "target: {manifest: tgt.csv, image_size: 32}\ntasks: [{name: tumor}]\nencoder: {arch: resnet10}\n"
        "train: {epochs: 3, batch_size: 8, patience: null, device: cpu, selector: entropy}\n"
        "strategies: [dann]\nunlabelled_target: true\nsimilarity: {enabled: false}\nevaluation: {bootstrap: 50}\n")
    run_pipeline(tmp_path / "uda.yaml", data, tmp_path / "run")
    job = next((tmp_path / "run" / "transfer").glob("*/*/*/seed0"))
    history = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 3 and all("sel_dev" in r and "oracle_test_auroc" in r for r in history)
    best = [r["epoch"] for r in history if r["best"]][-1]
    assert best == min(history, key=lambda r: r["sel_entropy"])["epoch"]  # entropy chose the saved checkpoint
    section = pipeline_section(tmp_path / "run")
    assert "Checkpoint selection without target labels (1 runs)" in section and "| entropy (used) |" in section


def _checkpoints():
    """Two epochs' outputs: flat (unsure) predictions, then sharp and correct ones."""
    rng = np.random.default_rng(2)
    y = np.arange(20) % 2
    sharp = np.where(y[:, None] == 1, [0.1, 0.9], [0.9, 0.1])
    flat = np.full((20, 2), 0.5) + rng.normal(0, 0.02, size=(20, 1)) * [1, -1]
    feats_s, feats_t = rng.normal(size=(20, 3)), rng.normal(size=(25, 3)) + 0.3
    common = {"source_labels": y, "source_features": feats_s, "target_features": feats_t}
    return [{**common, "source_probs": flat, "target_probs": flat[:15]},
            {**common, "source_probs": sharp, "target_probs": sharp[:15]}]


@pytest.mark.parametrize("selector", ["source_accuracy", "dev", "entropy", "infomax"])
def test_each_selector_in_its_monitor_direction_chooses_the_confident_correct_epoch(selector):
    fn, keys, _, _ = S.SELECTORS[selector]
    key, _ = SELECTOR_MONITORS[selector]
    history = [{"epoch": e, key: fn(*(record[k] for k in keys)), "oracle_val_auroc": 0.5 + 0.4 * e,
                "oracle_test_auroc": 0.5 + 0.4 * e} for e, record in enumerate(_checkpoints())]
    assert selector_regret(history)[selector] == {"epoch": 1, "test_auroc": 0.9, "regret": 0.0}


def test_snd_in_its_monitor_direction_prefers_clustered_predictions():
    clustered = np.array([[0.95, 0.05]] * 5 + [[0.05, 0.95]] * 5)
    scattered = np.stack([np.linspace(0.05, 0.95, 10), 1 - np.linspace(0.05, 0.95, 10)], 1)
    assert SELECTOR_MONITORS["snd"] == ("sel_snd", "max")
    assert S.soft_neighborhood_density(clustered) > S.soft_neighborhood_density(scattered)
