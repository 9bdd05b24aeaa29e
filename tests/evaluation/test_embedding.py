"""Feature embeddings: PCA checked against scikit-learn, t-SNE subsampled, bad inputs refused."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from medtl.errors import MedtlError
from medtl.evaluation.embedding import TSNE_MAX, embed_features, read_features


def _features(n=40, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(0, 1, (n, d)), rng.normal(2, 1, (n, d))], np.array(["cxr"] * n + ["mri"] * n)


def test_pca_matches_scikit_learn_on_standardised_features():
    X, dom = _features()
    emb = embed_features((X, dom), "pca", seed=0)
    Z = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-12)
    ref = PCA(n_components=2, random_state=0).fit(Z)
    np.testing.assert_allclose(emb.xy, ref.transform(Z), atol=1e-8)
    assert emb.info == {"method": "pca", "n": 80, "dim": 6, "domains": {"cxr": 40, "mri": 40},
                        "explained_variance_ratio": [float(v) for v in ref.explained_variance_ratio_]}
    assert emb.title == "PCA of standardised features" and emb.detail.startswith("; PC1/PC2 explain ")


def test_tsne_is_seeded_and_subsamples_large_inputs():
    X, dom = _features(n=TSNE_MAX // 2 + 50, d=3)
    emb = embed_features((X, dom), "tsne", seed=1)
    assert emb.xy.shape == (TSNE_MAX, 2) and len(emb.domains) == TSNE_MAX and emb.detail == ""
    assert sum(emb.info["domains"].values()) == TSNE_MAX


def test_feature_files(tmp_path):
    X, dom = _features(n=5)
    np.savez(tmp_path / "f.npz", features=X, domain=dom)
    got, got_dom = read_features(tmp_path / "f.npz")
    np.testing.assert_array_equal(got, X) and np.testing.assert_array_equal(got_dom, dom)
    np.savez(tmp_path / "bad.npz", features=X)
    with pytest.raises(MedtlError, match="needs arrays"):
        read_features(tmp_path / "bad.npz")


def test_bad_inputs_are_refused():
    X, dom = _features(n=5)
    with pytest.raises(MedtlError, match="unknown embedding 'umap': use pca or tsne"):
        embed_features((X, dom), "umap")
    with pytest.raises(MedtlError, match="one domain per row"):
        embed_features((X, dom[:3]))
    X[0, 0] = np.nan
    with pytest.raises(MedtlError, match="NaN"):
        embed_features((X, dom))
