"""Cached frozen-encoder features: the fast path of the ``feature_extraction`` strategy (linear probe).

A linear probe trains only the head; its encoder is frozen and in eval mode, so the encoder's output
for an image never changes during training. Running the encoder every epoch recomputes the same
features again and again; here they are computed once (the inference core: eval mode, no gradients,
batched) and kept in a :class:`FeatureSet`, which saves to and loads from one ``torch.save`` file.

In one call, :func:`fit_linear_probe` extracts (or reloads) the features, fits the head with one of the
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": "medtl-features", "features": self.features, "labels": self.labels,
                    "fields": {k: list(v) for k, v in self.fields.items()}}, path)
        return path

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
    channels_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    progress: bool = False,
) -> FeatureSet:
    """The encoder's features for every item of ``data``, in order, once.

    ``data`` is a dataset of ``{"image", "label"?, "case_id"?, ...}`` dicts (batched here, in order) or
    an iterable of such batches (a loader: used as it is; do not shuffle it if the order matters).
    The encoder runs through the inference core (:func:`medtl.engine.inference.run_model`): eval mode,
    no gradients, autocast to ``amp_dtype``, channels-last memory if asked; its mode and device are
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


def _has_dataset_randomness(data) -> bool:
    transform = getattr(getattr(data, "dataset", data), "transform", None)
    return transform is not None and len(getattr(transform, "transforms", [transform])) > 0


def fit_linear_probe(
    encoder: nn.Module,
    head: nn.Module,
    train_data,
    val_data=None,
    *,
    batch_size: int = 32,
    seed: int = 0,
    hparams: dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
    checkpoint_meta: dict[str, Any] | None = None,
    extract_batch_size: int = 64,
    channels_last: bool = False,
    amp_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    callbacks=(),
    solver: str = "lbfgs",
    **train_options,
):
    """Cached-feature linear probe in one call: extract, fit the head, return the trained strategy.

    Returns ``(strategy, result)``: ``strategy`` is a ``feature_extraction`` strategy on ``encoder`` and
    the fitted ``head`` (frozen encoder), ready for ``medtl.engine.predict`` on images. ``solver``:

    - ``"lbfgs"`` (default): the converged L2-penalised fit of :func:`medtl.engine.probe.fit_head_lbfgs`,
      the penalty picked on ``val_data`` (the strategy's ``weight_decay`` without it); ``result`` is the
      per-penalty records. Of the training options it uses only ``device``: ``batch_size``, ``seed``,
      ``callbacks`` and the trainer's options (``epochs``, ``patience``, ...) do not apply to it.
    - ``"trainer"``: :func:`medtl.engine.probe.train_head`, the strategy's optimiser and schedule for
      ``epochs`` through the trainer, as on images; ``result`` is the trainer's ``TrainResult``.

    With ``run_dir``, writes the run folder: ``best.pt`` (medtl checkpoint with ``checkpoint_meta``),
    ``metrics.jsonl`` (the records) and ``config.json`` (the options the solver used). With ``cache_dir``,
    features are saved there (``train.pt``/``val.pt``) and reused on a rerun. ``train_data``/``val_data``:
    datasets (prefer ``train=False`` ones: see the module docstring) or ordered loaders.
    """
    from medtl.engine.probe import PROBE_PENALTIES, LBFGS_MAX_ITER, fit_head_lbfgs, train_head
    from medtl.engine.run_folder import RunFolder
    from medtl.engine.trainer import resolve_device
    from medtl.models.checkpoint import Model, save_checkpoint
    from medtl.strategies.registry import get_strategy

    if solver not in ("lbfgs", "trainer"):
        raise MedtlError(f"solver must be 'lbfgs' or 'trainer', got {solver!r}", "solver")
    if _has_dataset_randomness(train_data):
        import logging

        logging.getLogger(__name__).warning(
            "the training dataset has random transforms: they are drawn once and frozen into the feature cache")
    device = resolve_device(train_options.get("device", "auto"))
    train_options["device"] = str(device)

    def features(data, name: str) -> FeatureSet | None:
        if data is None:
            return None
        path = Path(cache_dir) / f"{name}.pt" if cache_dir is not None else None
        if path is not None and path.exists():
            return FeatureSet.load(path)
        fs = extract_features(encoder, data, batch_size=extract_batch_size, device=device, amp_dtype=amp_dtype,
                              channels_last=channels_last, num_workers=num_workers,
                              pin_memory=device.type == "cuda")
        if path is not None:
            fs.save(path)
        return fs

    train = features(train_data, "train")
    val = features(val_data, "val")
    strategy = get_strategy("feature_extraction")(encoder, head, hparams)
    if solver == "lbfgs":
        head.to(device)
        has_val = val is not None and val.labels is not None and len(val) > 0
        penalties = PROBE_PENALTIES if has_val else (float(strategy.hparams["weight_decay"]),)
        result = history = fit_head_lbfgs(head, train, val, penalties=penalties)
        options = {"penalties": list(penalties), "max_iter": LBFGS_MAX_ITER, "device": train_options["device"]}
    else:
        result = train_head(head, train, val, batch_size=batch_size, seed=seed, hparams=hparams,
                            callbacks=callbacks, **train_options)
        history = result.history
        options = {"batch_size": batch_size, "seed": seed, **train_options}
    if run_dir is not None:
        folder = RunFolder(run_dir).create()
        folder.write_log(history)
        folder.write_config({
            "strategy": "feature_extraction", "feature_cache": True, "solver": solver, "hparams": strategy.hparams,
            "train": options, "n_train": len(train), "n_val": len(val) if val is not None else 0,
            "feature_dim": train.dim,
            "extract": {"batch_size": extract_batch_size, "amp_dtype": str(amp_dtype) if amp_dtype else None,
                        "channels_last": channels_last}})
        save_checkpoint(folder.best, Model(encoder, head), **(checkpoint_meta or {}))
    return strategy, result


__all__ = ["STRING_FIELDS", "FeatureDataset", "FeatureSet", "Precomputed", "extract_features", "feature_loader",
           "fit_linear_probe"]
