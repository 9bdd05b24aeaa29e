"""The probe solvers on cached features (medtl.engine.probe)."""

import copy

import numpy as np
import pytest
import torch

from medtl.engine.feature_cache import FeatureSet, extract_features
from medtl.engine.probe import PROBE_PENALTIES, fit_head_lbfgs, train_head
from medtl.errors import MedtlError
from medtl.models import Head, build_encoder


def _model(seed=0):
    torch.manual_seed(seed)
    enc = build_encoder("resnet10")
    return enc, Head(enc.out_features, "binary")


def _images(n, size=16):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = torch.randn((n, 1, size, size), generator=g) + 0.8 * labels.view(-1, 1, 1, 1).float()
    return [{"image": images[i:i + 8], "label": labels[i:i + 8]} for i in range(0, n, 8)]  # a loader's batches


def test_head_trains_on_cached_features():
    enc, head = _model()
    train = extract_features(enc, _images(24))
    before = copy.deepcopy(head.state_dict())
    result = train_head(head, train, batch_size=8, epochs=8, device="cpu", hparams={"lr": 1e-2},
                        scheduler="constant", restore_best=False)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]
    assert not torch.equal(head.fc.weight, before["fc.weight"])
    assert all(p.requires_grad for p in head.parameters())


def test_train_head_needs_labels():
    with pytest.raises(MedtlError, match="labelled"):
        train_head(Head(2, "binary"), FeatureSet(torch.zeros(4, 2)), epochs=1)


def test_lbfgs_probe_matches_scikit_learn_logistic_regression_and_folds_the_scaling():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

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


def test_a_nearly_constant_feature_gets_no_outsized_weight_in_raw_units():
    """A feature all but constant on the probe's images (a dead unit of a barely trained encoder) would get
    a raw-unit weight of W / sd: when LP-FT then fine-tunes the encoder and that unit moves a little, the
    logits explode. Its spread counts as at least a tenth of the typical one, so its weight stays of the order
    of the others'."""
    rng = np.random.default_rng(0)
    n = 80
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 8)) + 0.5 * y[:, None]
    x[:, 0] = 3.0 + 1e-5 * (y - 0.5) + 1e-6 * rng.normal(size=n)  # separates the classes, on a spread of 1e-5
    head = Head(8, "binary")
    fit_head_lbfgs(head, FeatureSet(torch.tensor(x, dtype=torch.float32), torch.tensor(y)), penalties=(0.1,))
    weight = head.fc.weight.detach().abs()
    assert weight[:, 0].max() < 20 * weight[:, 1:].max()  # without the floor: about 1e4 times the others


def test_a_cut_off_feature_cache_is_extracted_again(tmp_path, caplog):
    """A kill or a full disk while the cache was written left a file every rerun failed on ('cannot read
    cached features'); writes are atomic now, and a damaged file from before is extracted again."""
    from medtl.engine.probe import fit_linear_probe

    enc, head = _model()
    fit_linear_probe(enc, head, _images(24), cache_dir=tmp_path, device="cpu")
    whole = FeatureSet.load(tmp_path / "train.pt").features
    data = (tmp_path / "train.pt").read_bytes()
    (tmp_path / "train.pt").write_bytes(data[: len(data) // 3])
    with caplog.at_level("WARNING", logger="medtl.engine.probe"):
        fit_linear_probe(enc, Head(enc.out_features, "binary"), _images(24), cache_dir=tmp_path, device="cpu")
    assert "cannot read cached features" in caplog.text and "extracting the features again" in caplog.text
    assert torch.equal(FeatureSet.load(tmp_path / "train.pt").features, whole)
    assert not list(tmp_path.glob("*.tmp"))
