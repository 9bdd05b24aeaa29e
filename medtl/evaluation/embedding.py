"""2-D embeddings (PCA or t-SNE) of encoder features, coloured by domain: is the target where the source is?

Computed here, once, before a report is rendered; the report only draws the coordinates it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medtl.errors import MedtlError

METHODS = ("pca", "tsne")
TSNE_MAX = 2000  # t-SNE is quadratic: above this many rows a seeded subsample keeps it quick


@dataclass
class Embedding:
    """2-D coordinates ``xy`` (n, 2), one domain per row, and what was done (recorded in report.json)."""

    xy: np.ndarray
    domains: np.ndarray
    method: str
    info: dict = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.method.upper()} of standardised features"

    @property
    def axis_labels(self) -> tuple[str, str]:
        """``PC1 (41%)``, ``PC2 (12%)`` for PCA (the variance each explains); the method's axes otherwise."""
        ratio = self.info.get("explained_variance_ratio")
        if ratio:
            return f"PC1 ({ratio[0]:.0%} of the variance)", f"PC2 ({ratio[1]:.0%})"
        return f"{self.method} 1", f"{self.method} 2"

    @property
    def detail(self) -> str:
        """What a caption adds: PCA's explained variance."""
        ratio = self.info.get("explained_variance_ratio")
        return f"; PC1/PC2 explain {ratio[0]:.0%}/{ratio[1]:.0%}" if ratio else ""


def read_features(features) -> tuple[np.ndarray, np.ndarray]:
    """Features and domains from ``(array, domains)``, a dict, a ``.npz`` (``features``, ``domain``) or a CSV
    with a ``domain`` column and numeric feature columns."""
    if isinstance(features, (tuple, list)) and len(features) == 2:
        return np.asarray(features[0], dtype=float), np.asarray(features[1]).astype(str)
    if isinstance(features, dict):
        return np.asarray(features["features"], dtype=float), np.asarray(features["domain"]).astype(str)
    path = Path(features)
    if not path.exists():
        raise MedtlError("features file not found", path)
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "features" not in z or "domain" not in z:
                raise MedtlError("a features .npz needs arrays 'features' (n, d) and 'domain' (n,)", path)
            return z["features"].astype(float), z["domain"].astype(str)
    df = pd.read_csv(path)
    if "domain" not in df:
        raise MedtlError("a features CSV needs a 'domain' column and numeric feature columns", path)
    num = df.drop(columns=["domain"]).select_dtypes("number")
    return num.to_numpy(float), df["domain"].astype(str).to_numpy()


def embed_features(features, method: str = "pca", seed: int = 0) -> Embedding:
    """Standardise the features and project them to 2-D by PCA or t-SNE (seeded)."""
    X, dom = read_features(features)
    if X.ndim != 2 or len(X) != len(dom) or len(X) < 3:
        raise MedtlError(f"features must be (n, d) with one domain per row, n >= 3; got {X.shape}, {len(dom)}",
                         "features")  # fmt: skip
    if not np.isfinite(X).all():
        raise MedtlError("features contain NaN or infinite values", "features")
    rng = np.random.default_rng(seed)
    if method == "tsne" and len(X) > TSNE_MAX:
        keep = np.sort(rng.permutation(len(X))[:TSNE_MAX])
        X, dom = X[keep], dom[keep]
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-12)
    info = {"method": method, "n": int(len(X)), "dim": int(X.shape[1]),
            "domains": {d: int((dom == d).sum()) for d in sorted(set(dom))}}  # fmt: skip
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        xy = pca.fit_transform(X)
        info["explained_variance_ratio"] = [float(v) for v in pca.explained_variance_ratio_]
    elif method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, perplexity=min(30.0, (len(X) - 1) / 3), random_state=seed, init="pca").fit_transform(X)
    else:
        raise MedtlError(f"unknown embedding {method!r}: use {' or '.join(METHODS)}", "embedding")
    return Embedding(xy=xy, domains=dom, method=method, info=info)
