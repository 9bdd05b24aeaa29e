import copy
import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from medtl.engine import fit
from medtl.engine.feature_cache import (
    FeatureSet,
    extract_features,
    feature_loader,
    fit_linear_probe,
    train_head,
)
from medtl.errors import MedtlError
from medtl.models import Head, build_encoder, read_checkpoint
from medtl.strategies.registry import get_strategy


class Images(Dataset):
    """Deterministic in-memory items shaped like the data layer's (no augmentation)."""

    def __init__(self, n=22, size=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2
        self.images = torch.randn((n, 1, size, size), generator=g) + 0.8 * self.labels.view(-1, 1, 1, 1).float()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "case_id": f"case{i}", "patient_id": f"p{i}",
                "domain": "d"}


def _model(seed=0):
    torch.manual_seed(seed)
    enc = build_encoder("resnet10")
    return enc, Head(enc.out_features, "binary")


def _image_loader(ds, batch_size, shuffle, seed):
    from medtl.pipeline.runner import _loader  # the pipeline's own loaders

    return _loader(ds, batch_size, shuffle, seed)


def test_cached_logits_equal_the_frozen_encoder_and_head():
    enc, head = _model()
    ds = Images(10)
    cached = extract_features(enc, ds, batch_size=4)
    assert cached.features.shape == (10, enc.out_features)
    assert cached.labels.tolist() == ds.labels.tolist()
    assert cached.fields["case_id"] == [f"case{i}" for i in range(10)]
    enc.eval(), head.eval()
    with torch.no_grad():
        direct = head(enc(ds.images))
        from_cache = head(cached.features)
    torch.testing.assert_close(from_cache, direct, rtol=1e-5, atol=1e-5)


def test_extraction_restores_the_encoder_mode_and_layout():
    enc, _ = _model()
    enc.train()
    plain = extract_features(enc, Images(6), batch_size=3)
    fast = extract_features(enc, Images(6), batch_size=6, channels_last=True)
    assert enc.training
    assert enc.conv1.weight.is_contiguous()
    torch.testing.assert_close(fast.features, plain.features, rtol=1e-4, atol=1e-5)


def test_channels_last_extraction_of_lifted_encoders():
    # a 2.5D encoder keeps 4D kernels inside a 5D model: each parameter gets its own channels-last format
    from medtl.models import lift

    vols = torch.randn(3, 1, 8, 16, 16)
    batches = [{"image": v[None], "label": torch.tensor([i % 2])} for i, v in enumerate(vols)]  # a loader's batches
    for method in ("2.5d", "i3d"):
        torch.manual_seed(0)
        enc = lift(build_encoder("resnet10"), method)
        ref = extract_features(enc, batches)
        fast = extract_features(enc, [{"image": vols, "label": torch.tensor([0, 1, 0])}], channels_last=True)
        torch.testing.assert_close(fast.features, ref.features, rtol=1e-4, atol=1e-5)
        assert all(p.is_contiguous() for p in enc.parameters())


def test_head_trains_on_cached_features():
    enc, head = _model()
    train = extract_features(enc, Images(24))
    before = copy.deepcopy(head.state_dict())
    result = train_head(head, train, batch_size=8, epochs=8, device="cpu", hparams={"lr": 1e-2},
                        scheduler="constant", restore_best=False)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]
    assert not torch.equal(head.fc.weight, before["fc.weight"])
    assert all(p.requires_grad for p in head.parameters())


def test_cached_probe_equals_feature_extraction_on_the_images(tmp_path):
    # The feature_extraction strategy through the trainer on images, and the cached path, end with the
    # same head: same optimiser, schedule, reseeding, batch order and validation-picked best epoch.
    ds, val = Images(22), Images(8, seed=1)
    opts = {"epochs": 4, "device": "cpu", "progress": False, "seed": 3}
    enc_a, head_a = _model()
    strategy = get_strategy("feature_extraction")(enc_a, head_a, {"lr": 5e-3})
    ref = fit(strategy, _image_loader(ds, 8, True, 3), _image_loader(val, 8, False, 3), **opts)

    enc_b, head_b = _model()
    probe, result = fit_linear_probe(enc_b, head_b, ds, val, batch_size=8, hparams={"lr": 5e-3}, solver="trainer",
                                     run_dir=tmp_path / "run", checkpoint_meta={"label_names": ["a", "b"]},
                                     cache_dir=tmp_path / "cache", **opts)
    assert result.best_epoch == ref.best_epoch
    for a, b in zip(ref.history, result.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-6)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4, abs=1e-6)
    torch.testing.assert_close(head_b.fc.weight, head_a.fc.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head_b.fc.bias, head_a.fc.bias, rtol=1e-4, atol=1e-5)
    # the returned strategy predicts on images with the trained head and the untouched encoder
    probe.eval()
    with torch.no_grad():
        torch.testing.assert_close(probe(val.images), strategy.eval()(val.images), rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in probe.encoder.parameters())
    # run folder as the trainer writes it; cached features reused on a rerun
    ckpt = read_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["meta"]["label_names"] == ["a", "b"]
    assert ckpt["meta"]["model"]["encoder"]["arch"] == "resnet10"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(4))
    cached = FeatureSet.load(tmp_path / "cache" / "train.pt")
    assert len(cached) == 22 and cached.fields["case_id"][0] == "case0"


def test_feature_loader_matches_the_pipeline_loader_order():
    feats = FeatureSet(torch.arange(23.0).view(-1, 1), torch.zeros(23, dtype=torch.long))
    order = [b["image"].view(-1).long().tolist() for b in feature_loader(feats, 4, True, 5)]
    ref = [b["label"].tolist() for b in _image_loader(Images(23), 4, True, 5)]
    assert [len(b) for b in order] == [len(b) for b in ref]
    images = Images(23)
    ref_idx = []
    for b in _image_loader(images, 4, True, 5):
        ref_idx.append([int(next(i for i in range(23) if torch.equal(images.images[i], x))) for x in b["image"]])
    assert order == ref_idx


def test_errors():
    with pytest.raises(MedtlError, match="features must be"):
        FeatureSet(torch.zeros(3))
    with pytest.raises(MedtlError, match="labels"):
        FeatureSet(torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(MedtlError, match="labelled"):
        train_head(Head(2, "binary"), FeatureSet(torch.zeros(4, 2)), epochs=1)
    with pytest.raises(MedtlError, match="no items"):
        extract_features(build_encoder("resnet10"), [])


def test_lbfgs_probe_matches_scikit_learn_logistic_regression_and_folds_the_scaling():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from medtl.engine.feature_cache import fit_head_lbfgs

    rng = np.random.default_rng(0)
    n, d, k = 90, 6, 3
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)) * np.array([1, 5, 20, 0.1, 2, 1]) + 3.0 + y[:, None] * 0.8  # unequal scales
    c = 0.5
    # scikit-learn minimises C * sum(CE) + ||W||^2 / 2, i.e. mean(CE) + ||W||^2 / (2 C n)
    scaler = StandardScaler().fit(x)
    ref = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(scaler.transform(x), y)
    head = Head(d, "multiclass", k)
    history = fit_head_lbfgs(head, FeatureSet(torch.tensor(x, dtype=torch.float32), torch.tensor(y)),
                             penalties=(1.0 / (c * n),))
    with torch.no_grad():  # the head takes raw features: the standardisation is folded in
        probs = torch.softmax(head(torch.tensor(x, dtype=torch.float32)), 1).numpy()
    np.testing.assert_allclose(probs, ref.predict_proba(scaler.transform(x)), atol=2e-3)
    assert len(history) == 1 and history[0]["chosen"]


def test_lbfgs_probe_picks_the_penalty_with_the_lowest_validation_loss():
    from medtl.engine.feature_cache import PROBE_PENALTIES, fit_head_lbfgs

    rng = np.random.default_rng(1)
    def data(n):  # few, noisy, high-dimensional: an unpenalised fit overfits
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 40))
        x[:, 0] += 1.0 * y
        return FeatureSet(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    train, val = data(30), data(200)
    head = Head(40, "binary")
    history = fit_head_lbfgs(head, train, val)
    assert [r["weight_decay"] for r in history] == list(PROBE_PENALTIES)
    chosen = [r for r in history if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["val_loss"] == min(r["val_loss"] for r in history)
    assert chosen[0]["weight_decay"] > PROBE_PENALTIES[0]  # the weakest penalty is not the best here
    with pytest.raises(MedtlError, match="one penalty"):
        fit_head_lbfgs(Head(40, "binary"), train)
