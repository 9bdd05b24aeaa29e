import json

import pytest
import torch
from torch.utils.data import Dataset

from medtl.engine import fit
from medtl.engine.feature_cache import (
    FeatureSet,
    extract_features,
    feature_loader,
)
from medtl.engine.probe import fit_linear_probe
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
    from medtl.data.datasets import make_loader  # the pipeline's own loaders

    return make_loader(ds, batch_size, shuffle, seed)


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


def test_cached_probe_equals_feature_extraction_on_the_images(tmp_path):
    # The feature_extraction strategy through the trainer on images, and the cached path, end with the
    # same head: same optimiser, schedule, reseeding, batch order and validation-picked best epoch.
    ds, val = Images(22), Images(8, seed=1)
    opts = {"epochs": 4, "device": "cpu", "progress": False, "seed": 3, "amp": "off"}  # the two paths, in fp32
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
    with pytest.raises(MedtlError, match="no items"):
        extract_features(build_encoder("resnet10"), [])
