"""The two solvers of a linear probe on cached features (:class:`medtl.engine.feature_cache.FeatureSet`).

- :func:`fit_head_lbfgs` (the default of ``fit_linear_probe``) fits the probe the way a linear probe is
  usually fitted: an L2-penalised logistic (or least-squares) regression on standardised features,
  solved to convergence by full-batch L-BFGS, the penalty picked on the validation features from
  ``PROBE_PENALTIES``; the standardisation is then folded into the linear layer, so the head reads raw
  features like any other. A handful of SGD epochs leaves a probe far from its optimum (measured on the
  cxr_to_mri2d pipeline: validation AUROC 0.41-0.73 after 4 epochs, 0.976 for the converged fit).
- :func:`train_head` trains the head with the project's trainer (``medtl.engine.fit``) and a
  ``feature_extraction`` strategy whose encoder is a pass-through: the optimiser (head parameters only,
  ``lr`` and ``weight_decay`` from the strategy's hyper-parameters), the per-step schedule, the per-epoch
  reseeding, validation, early stopping and best-epoch restore are exactly those of training
  ``feature_extraction`` on the images. Given the same items, batch size and seed (loaders built as
  ``feature_loader`` builds them, which is how the pipeline builds its own), the head ends with the same
  weights, up to floating-point rounding of the features (tested).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medtl.engine.feature_cache import FeatureSet, Precomputed, extract_features, feature_loader
from medtl.errors import MedtlError

PROBE_PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # L2 strengths tried on standardised features
LBFGS_MAX_ITER = 500


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
    False). No run folder is written here (see :func:`medtl.engine.feature_cache.fit_linear_probe`).
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


def fit_head_lbfgs(
    head: nn.Module,
    train: FeatureSet,
    val: FeatureSet | None = None,
    *,
    penalties: tuple[float, ...] = PROBE_PENALTIES,
    max_iter: int = LBFGS_MAX_ITER,
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
    sd = x.std(0).nan_to_num(1.0) if len(x) > 1 else torch.ones_like(mu)
    # a feature nearly constant on these images would get a weight of W / sd in raw units: once fine-tuning
    # (LP-FT) moves the encoder, its small shifts would swamp the logits; its spread counts as at least a
    # tenth of the typical one
    sd = sd.clamp_min(max(1e-6, 0.1 * float(sd.median())))
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
    channels_last: bool | None = None,
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
    from medtl.engine.run_folder import RunFolder
    from medtl.engine.trainer import resolve_device
    from medtl.models.checkpoint import Model, save_checkpoint
    from medtl.strategies.registry import get_strategy

    if solver not in ("lbfgs", "trainer"):
        raise MedtlError(f"solver must be 'lbfgs' or 'trainer', got {solver!r}", "solver")
    if _has_dataset_randomness(train_data):
        logging.getLogger(__name__).warning(
            "the training dataset has random transforms: they are drawn once and frozen into the feature cache")
    device = resolve_device(train_options.get("device", "auto"))
    train_options["device"] = str(device)

    def features(data, name: str) -> FeatureSet | None:
        if data is None:
            return None
        path = Path(cache_dir) / f"{name}.pt" if cache_dir is not None else None
        if path is not None and path.exists():
            try:
                return FeatureSet.load(path)
            except MedtlError as err:  # cut short by a kill or a full disk (before writes were atomic): redo it
                logging.getLogger(__name__).warning("%s; extracting the features again", err)
                path.unlink()
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


__all__ = ["LBFGS_MAX_ITER", "PROBE_PENALTIES", "fit_head_lbfgs", "fit_linear_probe", "probe_strategy", "train_head"]
