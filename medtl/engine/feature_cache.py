"""Cached frozen-encoder features: the fast path of the ``feature_extraction`` strategy (linear probe).

A linear probe trains only the head; its encoder is frozen and in eval mode, so the encoder's output
for an image never changes during training. Running the encoder every epoch recomputes the same
features again and again; here they are computed once (the inference core: eval mode, no gradients,
batched) and kept in a :class:`FeatureSet`, which saves to and loads from one ``torch.save`` file.

In one call, :func:`medtl.engine.probe.fit_linear_probe` extracts (or reloads) the features, fits the head with one of the
two solvers of :mod:`medtl.engine.probe` and writes the run folder (:class:`~medtl.engine.run_folder.RunFolder`)::

    strategy, records = fit_linear_probe(encoder, head, train_dataset, val_dataset, run_dir=..., cache_dir=...)

The default solver, ``"lbfgs"``, fits the probe to convergence (L2-penalised logistic or least-squares
regression on standardised features, the penalty picked on the validation features); ``"trainer"``
trains the head with the project's trainer, as training ``feature_extraction`` on the images would.

Features are computed once, so each item is seen through one fixed view: give the deterministic
(``train=False``) dataset; random augmentations, if the dataset has any, are drawn once and frozen
into the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from medtl.errors import MedtlError

STRING_FIELDS = ("case_id", "patient_id", "domain")


@dataclass
class FeatureSet:
    """Features ``(N, F)`` (float32, CPU), labels ``(N,)`` (or None) and the items' string fields."""

    features: torch.Tensor
    labels: torch.Tensor | None = None
    fields: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        if self.features.ndim != 2:
            raise MedtlError(f"features must be (N, F), got shape {tuple(self.features.shape)}", "features")
        n = self.features.shape[0]
        if self.labels is not None and self.labels.shape[0] != n:
            raise MedtlError(f"{self.labels.shape[0]} labels for {n} feature rows", "labels")
        for k, v in self.fields.items():
            if len(v) != n:
                raise MedtlError(f"{len(v)} values of {k!r} for {n} feature rows", k)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def dataset(self) -> FeatureDataset:
        return FeatureDataset(self)

    def save(self, path: str | Path) -> Path:
        """Write the set to one ``torch.save`` file (readable with ``weights_only=True``)."""
        from medtl.models.checkpoint import save_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_atomic({"format": "medtl-features", "features": self.features, "labels": self.labels,
                            "fields": {k: list(v) for k, v in self.fields.items()}}, path)

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise MedtlError(f"cannot read cached features: {str(err)[:200]}", path) from None
        if not isinstance(d, dict) or d.get("format") != "medtl-features":
            raise MedtlError("not a medtl feature cache", path)
        return cls(d["features"], d["labels"], dict(d["fields"]))


class FeatureDataset(Dataset):
    """Items shaped like the data layer's, with the feature vector in ``"image"`` (what the head reads)."""

    def __init__(self, features: FeatureSet):
        self.features = features.features
        self.labels = features.labels
        self.fields = {k: list(v) for k, v in features.fields.items()}

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"image": self.features[i]}
        if self.labels is not None:
            item["label"] = self.labels[i]
        for k, v in self.fields.items():
            item[k] = v[i]
        return item


class Precomputed(nn.Module):
    """Stand-in encoder for cached features: passes its input through (``out_features`` kept)."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = int(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.out_features:
            raise MedtlError(f"expected cached features (B, {self.out_features}), got {tuple(x.shape)}", "features")
        return x


def _batches(data, batch_size: int, num_workers: int, pin_memory: bool):
    """``data`` as an iterable of batch dicts: a loader is used as it is; a dataset gets an ordered one."""
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        from monai.data import DataLoader

        # Its own generator: MONAI's loader would otherwise draw from (and rewind) torch's global one.
        return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
                          generator=torch.Generator().manual_seed(0))
    return data


def extract_features(
    encoder: nn.Module,
    data,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    progress: bool = False,
) -> FeatureSet:
    """The encoder's features for every item of ``data``, in order, once.

    ``data`` is a dataset of ``{"image", "label"?, "case_id"?, ...}`` dicts (batched here, in order) or
    an iterable of such batches (a loader: used as it is; do not shuffle it if the order matters).
    The encoder runs through the inference core (:func:`medtl.engine.inference.run_model`): eval mode,
    no gradients, autocast to ``amp_dtype``, channels-last memory if asked (None: with autocast); its mode and device are
    restored afterwards. Features come back as float32 on the CPU.
    """
    from medtl.engine.inference import run_model

    if batch_size < 1:
        raise MedtlError(f"batch_size must be at least 1, got {batch_size}", "batch_size")
    out = run_model(encoder, _batches(data, batch_size, num_workers, pin_memory), ("features",), device=device,
                    amp_dtype=amp_dtype, channels_last=channels_last, progress=progress, desc="features")
    if not out.n_batches:
        raise MedtlError("no items to extract features from", "data")
    features = out.cat("features")
    labels = out.cat("labels")
    fields = {k: [str(s) for s in v] for k, v in out.fields.items() if k in STRING_FIELDS and len(v) == len(features)}
    return FeatureSet(features, labels if labels is not None and len(labels) == len(features) else None, fields)


def feature_loader(features: FeatureSet, batch_size: int, shuffle: bool, seed: int = 0):
    """A loader over cached features, built as the pipeline builds its image loaders (same seeded
    shuffle, and the same drop of a final batch of one), so a head trained on it sees the items in the
    same order as ``feature_extraction`` trained on the images."""
    from monai.data import DataLoader

    ds = features.dataset()
    drop_last = shuffle and len(ds) > batch_size and len(ds) % batch_size == 1
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed))


__all__ = ["STRING_FIELDS", "FeatureDataset", "FeatureSet", "Precomputed", "extract_features", "feature_loader"]
