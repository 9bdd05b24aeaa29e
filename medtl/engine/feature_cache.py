"""Cached frozen-encoder features: the fast path of the ``feature_extraction`` strategy (linear probe).

A linear probe trains only the head; its encoder is frozen and in eval mode, so the encoder's output
for an image never changes during training. Running the encoder every epoch (what training
``feature_extraction`` through the trainer does) recomputes the same features again and again. Here
they are computed once (eval mode, no gradients, batched) and the head trains on them:

    train = extract_features(encoder, train_dataset)          # FeatureSet: (N, F) features + labels
    val = extract_features(encoder, val_dataset)
    result = train_head(head, train, val, batch_size=32, seed=0, epochs=10)
    model = FeatureExtraction(encoder, head)                   # the trained probe, ready to predict

or in one call, which also writes ``best.pt`` and ``metrics.jsonl`` into ``run_dir``::

    strategy, result = fit_linear_probe(encoder, head, train_dataset, val_dataset, run_dir=..., epochs=10)

The head is trained by the project's own trainer (``medtl.engine.fit``) with a ``feature_extraction``
strategy whose encoder is a pass-through: the optimiser (head parameters only, ``lr`` and
``weight_decay`` from the strategy's hyper-parameters), the per-step schedule, the per-epoch reseeding,
validation, early stopping and best-epoch restore are exactly those of training ``feature_extraction``
on the images. Given the same items, batch size and seed (loaders built as :func:`feature_loader`
builds them, which is how the pipeline builds its own), the head ends with the same weights, up to
floating-point rounding of the features (tested).

``fit_linear_probe`` has two solvers. ``"lbfgs"`` (the default) fits the probe the way a linear probe
is usually fitted: an L2-penalised logistic (or least-squares) regression on standardised features,
solved to convergence by full-batch L-BFGS, with the penalty picked on the validation features from
``PROBE_PENALTIES`` (the strategy's ``weight_decay`` when there is no validation set); the
standardisation is then folded into the linear layer, so the head reads raw features like any other.
A handful of SGD epochs leaves a probe far from its optimum (measured on the cxr_to_mri2d pipeline:
validation AUROC 0.41-0.73 after 4 epochs, 0.976 for the converged fit on the same features).
``"trainer"`` trains the head with the trainer instead, which the next paragraph describes.

The one difference from training ``feature_extraction`` on an augmenting (``train=True``) dataset:
features are computed once, so each item is seen through one fixed view. Give the deterministic
(``train=False``) dataset; random augmentations, if the dataset has any, are drawn once and frozen
into the cache.
"""

from __future__ import annotations

import json
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


def _to_channels_last(module: nn.Module) -> list[nn.Parameter]:
    """Channels-last memory for every 4D (channels_last) and 5D (channels_last_3d) parameter, whatever the
    input's rank (a 2.5D or ACS encoder keeps 2D kernels inside a 3D model); returns those changed."""
    changed = []
    for p in module.parameters():
        fmt = torch.channels_last if p.dim() == 4 else torch.channels_last_3d if p.dim() == 5 else None
        if fmt is not None and not p.is_contiguous(memory_format=fmt) and p.is_contiguous():
            p.data = p.data.contiguous(memory_format=fmt)
            changed.append(p)
    return changed


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if hasattr(t, "as_tensor") else t  # MONAI MetaTensor -> Tensor


def _batches(data, batch_size: int, num_workers: int, pin_memory: bool):
    """``data`` as an iterable of batch dicts: a loader is used as it is; a dataset gets an ordered one."""
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        from monai.data import DataLoader

        # Its own generator: MONAI's loader would otherwise draw from (and rewind) torch's global one.
        return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
                          generator=torch.Generator().manual_seed(0))
    return data


@torch.no_grad()
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
    The encoder runs in eval mode without gradients (its mode is restored afterwards); ``amp_dtype``
    runs it under autocast; ``channels_last`` uses channels-last memory (4D and 5D inputs), which
    is faster on many CPUs and GPUs. Features come back as float32 on the CPU.
    """
    from medtl.progress import bar

    from medtl.engine.evaluate import autocast

    if batch_size < 1:
        raise MedtlError(f"batch_size must be at least 1, got {batch_size}", "batch_size")
    device = torch.device(device)
    was_training = encoder.training
    params = list(encoder.parameters())
    home = params[0].device if params else device
    encoder.eval().to(device)
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    fields: dict[str, list[str]] = {}
    changed: list[nn.Parameter] | None = None
    try:
        for batch in bar(_batches(data, batch_size, num_workers, pin_memory), desc="features", leave=False,
                         enabled=progress):
            if not isinstance(batch, dict) or "image" not in batch:
                raise MedtlError("feature extraction needs batches of dicts with an 'image'", "data")
            x = _plain(batch["image"]).to(device, non_blocking=True)
            if channels_last and x.ndim in (4, 5):
                if changed is None:
                    changed = _to_channels_last(encoder)
                x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
            with autocast(device, amp_dtype):
                f = encoder(x)
            if f.ndim != 2:
                raise MedtlError(f"the encoder gave outputs of shape {tuple(f.shape)}; expected (B, F)", "encoder")
            feats.append(f.float().cpu())
            if "label" in batch:
                labels.append(_plain(torch.as_tensor(batch["label"])).cpu())
            for k in STRING_FIELDS:
                v = batch.get(k)
                if isinstance(v, (list, tuple)):
                    fields.setdefault(k, []).extend(str(s) for s in v)
    finally:
        for p in changed or ():
            p.data = p.data.contiguous()
        encoder.to(home).train(was_training)
    if not feats:
        raise MedtlError("no items to extract features from", "data")
    out = torch.cat(feats)
    lab = torch.cat(labels) if labels and sum(len(t) for t in labels) == len(out) else None
    fields = {k: v for k, v in fields.items() if len(v) == len(out)}
    return FeatureSet(out, lab, fields)


def feature_loader(features: FeatureSet, batch_size: int, shuffle: bool, seed: int = 0):
    """A loader over cached features, built as the pipeline builds its image loaders (same seeded
    shuffle, and the same drop of a final batch of one), so a head trained on it sees the items in the
    same order as ``feature_extraction`` trained on the images."""
    from monai.data import DataLoader

    ds = features.dataset()
    drop_last = shuffle and len(ds) > batch_size and len(ds) % batch_size == 1
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed))


def probe_strategy(head: nn.Module, in_features: int, hparams: dict[str, Any] | None = None):
    """The ``feature_extraction`` strategy on cached features: a pass-through encoder and ``head``."""
    from medtl.strategies.registry import get_strategy

    return get_strategy("feature_extraction")(Precomputed(in_features), head, hparams)


def train_head(
    head: nn.Module,
    train: FeatureSet,
    val: FeatureSet | None = None,
    *,
    batch_size: int = 32,
    seed: int = 0,
    hparams: dict[str, Any] | None = None,
    callbacks=(),
    **train_options,
):
    """Train ``head`` (in place) on cached features with the project's trainer; returns its ``TrainResult``.

    ``hparams`` are the ``feature_extraction`` strategy's (``lr``, ``weight_decay``); ``train_options``
    are ``TrainConfig`` fields (``epochs``, ``patience``, ``device``, ...; ``progress`` defaults to
    False). No run folder is written here (see :func:`fit_linear_probe`).
    """
    from medtl.engine.trainer import fit

    if train.labels is None:
        raise MedtlError("training a head needs labelled features", "train")
    if "run_dir" in train_options:
        raise MedtlError("train_head writes no run folder; use fit_linear_probe(run_dir=...)", "run_dir")
    strategy = probe_strategy(head, train.dim, hparams)
    train_loader = feature_loader(train, batch_size, True, seed)
    val_loader = feature_loader(val, batch_size, False, seed) if val is not None and len(val) else None
    train_options.setdefault("progress", False)
    return fit(strategy, train_loader, val_loader, seed=seed, callbacks=callbacks, **train_options)


PROBE_PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # L2 strengths tried on standardised features


def fit_head_lbfgs(
    head: nn.Module,
    train: FeatureSet,
    val: FeatureSet | None = None,
    *,
    penalties: tuple[float, ...] = PROBE_PENALTIES,
    max_iter: int = 500,
) -> list[dict[str, Any]]:
    """Fit ``head.fc`` to convergence: loss ``head.loss(fc(z), y) + penalty / 2 * ||W||^2`` (bias free) on
    features ``z`` standardised with the training mean and standard deviation, by full-batch L-BFGS.

    Each penalty is fitted from the same start; the one with the lowest validation loss is kept (without
    labelled ``val``, give one penalty). The standardisation is then folded into ``fc``
    (``W' = W / sd``, ``b' = b - W' mu``), so the head takes raw features. Returns one record per
    penalty (``fit``, ``weight_decay``, ``train_loss``, ``val_loss``, ``val_accuracy``, ``chosen``).
    """
    if train.labels is None:
        raise MedtlError("training a head needs labelled features", "train")
    fc: nn.Linear = head.fc
    out = getattr(head, "output", lambda raw: raw)  # the head's own output from fc (original units for regression)
    device = fc.weight.device
    x, y = train.features.to(device), train.labels.to(device)
    mu = x.mean(0)
    sd = x.std(0).nan_to_num(1.0).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(mu)
    z = (x - mu) / sd
    has_val = val is not None and val.labels is not None and len(val) > 0
    if not has_val and len(penalties) != 1:
        raise MedtlError("without labelled validation features, give one penalty to fit", "penalties")
    zv, yv = ((val.features.to(device) - mu) / sd, val.labels.to(device)) if has_val else (None, None)
    start = {k: v.detach().clone() for k, v in fc.state_dict().items()}
    history, best = [], None
    for i, penalty in enumerate(penalties):
        fc.load_state_dict(start)
        opt = torch.optim.LBFGS(fc.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = head.loss(out(fc(z)), y) + 0.5 * penalty * fc.weight.pow(2).sum()  # noqa: B023 (used in this step)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        record: dict[str, Any] = {"fit": i, "weight_decay": penalty}  # not "epoch": no curve over epochs
        with torch.no_grad():
            record["train_loss"] = float(head.loss(out(fc(z)), y))
            if has_val:
                logits = out(fc(zv))
                record["val_loss"] = float(head.loss(logits, yv))
                if head.task != "regression":
                    record["val_accuracy"] = float((logits.argmax(1) == yv).float().mean())
        score = record["val_loss"] if has_val else 0.0
        if best is None or score < best[0]:
            best = (score, i, {k: v.detach().clone() for k, v in fc.state_dict().items()})
        history.append(record)
    fc.load_state_dict(best[2])
    for r in history:
        r["chosen"] = r["fit"] == best[1]
    with torch.no_grad():  # fold the standardisation in: fc(z) == fc'(x)
        weight = fc.weight / sd
        fc.bias.sub_(weight @ mu)
        fc.weight.copy_(weight)
    return history


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
    """Cached-feature linear probe in one call: extract, train the head, return the trained strategy.

    Returns ``(strategy, result)``: ``strategy`` is a ``feature_extraction`` strategy on ``encoder`` and
    the trained ``head`` (frozen encoder), ready for ``medtl.engine.predict`` on images. With
    ``run_dir``, writes ``best.pt`` (medtl checkpoint with ``checkpoint_meta``), ``metrics.jsonl`` and
    ``config.json`` as the trainer would. With ``cache_dir``, features are saved there
    (``train.pt``/``val.pt``) and reused on a rerun. ``train_data``/``val_data``: datasets (prefer
    ``train=False`` ones: see the module docstring) or ordered loaders. ``solver``: ``"lbfgs"`` (converged
    L2-penalised fit, penalty picked on ``val_data``; see :func:`fit_head_lbfgs`) or ``"trainer"`` (the
    strategy's optimiser and schedule for ``epochs``, as on images). Returns ``result`` = the trainer's
    ``TrainResult`` for ``"trainer"``, the per-penalty records for ``"lbfgs"``.
    """
    from medtl.engine.trainer import resolve_device
    from medtl.models.checkpoint import Model, save_checkpoint
    from medtl.plain import plain
    from medtl.strategies.registry import get_strategy

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

    if solver not in ("lbfgs", "trainer"):
        raise MedtlError(f"solver must be 'lbfgs' or 'trainer', got {solver!r}", "solver")
    train = features(train_data, "train")
    val = features(val_data, "val")
    strategy = get_strategy("feature_extraction")(encoder, head, hparams)
    if solver == "lbfgs":
        head.to(device)
        has_val = val is not None and val.labels is not None and len(val) > 0
        penalties = PROBE_PENALTIES if has_val else (float(strategy.hparams["weight_decay"]),)
        result = fit_head_lbfgs(head, train, val, penalties=penalties)
        history = result
    else:
        result = train_head(head, train, val, batch_size=batch_size, seed=seed, hparams=hparams,
                            callbacks=callbacks, **train_options)
        history = result.history
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(plain(record)) + "\n" for record in history)
        cfg = {"strategy": "feature_extraction", "feature_cache": True, "solver": solver, "hparams": strategy.hparams,
               "train": {"batch_size": batch_size, "seed": seed, **train_options}, "n_train": len(train),
               "n_val": len(val) if val is not None else 0, "feature_dim": train.dim}
        (run_dir / "config.json").write_text(json.dumps(plain(cfg), indent=2, default=str) + "\n")
        save_checkpoint(run_dir / "best.pt", Model(encoder, head), **(checkpoint_meta or {}))
    return strategy, result


__all__ = ["PROBE_PENALTIES", "FeatureDataset", "FeatureSet", "Precomputed", "extract_features", "feature_loader",
           "fit_head_lbfgs", "fit_linear_probe", "probe_strategy", "train_head"]
