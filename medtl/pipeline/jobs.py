"""One transfer job of ``medtl run`` (a task x label fraction x seed x strategy): train, then predict val +
test into the job's run folder; and the training-mean baseline every regression table carries."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtl.data.datasets import make_loader
from medtl.data.manifest import Manifest, stratified_sample
from medtl.data.transforms import Preset
from medtl.engine.evaluate import precision_dtype, predict
from medtl.engine.probe import fit_linear_probe
from medtl.engine.run_folder import RunFolder
from medtl.engine.selection import SELECTOR_MONITORS, SelectorScores
from medtl.engine.trainer import fit, resolve_device, seed_everything
from medtl.errors import MedtlError
from medtl.evaluation.predictions import TRAINING_MEAN, predictions_from_arrays, write_predictions
from medtl.evaluation.thresholds import checkpoint_threshold
from medtl.models import Head, task_for
from medtl.models.checkpoint import update_checkpoint_meta
from medtl.pipeline.config import StrategySpec, TaskSpec
from medtl.pipeline.context import Context, apply_task, dataset, heterogeneous, modality_of, start_encoder
from medtl.progress import in_notebook
from medtl.strategies.registry import get_strategy

_INNER_BARS = True  # run_pipeline turns them off with progress=False


def _interactive() -> bool:
    """Per-epoch bars inside a transfer job only on a terminal (not a notebook, not a log), below the job bar."""
    return _INNER_BARS and sys.stderr.isatty() and not in_notebook()


@dataclass(frozen=True)
class LabelBudget:
    """How many of the target's labelled training rows a job may use: a fraction, or an exact count
    (``label_counts``; its fraction is then count / training rows, as the reports record it)."""

    fraction: float
    count: int | None = None

    @property
    def name(self) -> str:  # the job folder and run id: n10 or frac0.05
        return f"n{self.count}" if self.count is not None else f"frac{self.fraction:g}"


def label_budgets(ctx: Context, task: TaskSpec) -> list[LabelBudget]:
    """The label budgets a task's jobs run at: ``label_counts`` when given, else ``label_fractions``."""
    cfg = ctx.config
    if not cfg.label_counts:
        return [LabelBudget(f) for f in cfg.label_fractions]
    n = len(ctx.load(cfg.target, "target", task).select(split="train"))
    too_many = [c for c in cfg.label_counts if c > n]
    if too_many:
        raise MedtlError(f"label_counts {too_many} exceed the {n} labelled training rows of task {task.name!r}",
                         f"{ctx.config_path}: label_counts")
    return [LabelBudget(c / n, c) for c in cfg.label_counts]


def labelled_rows(train_rows: list, budget: LabelBudget, seed: int, task: TaskSpec) -> list:
    """The labelled training rows of a job: the same for every strategy of a budget and seed."""
    if budget.count is None and budget.fraction >= 1:
        return list(train_rows)
    return stratified_sample(train_rows, budget.fraction, np.random.default_rng(seed), count=budget.count,
                             by_label=task.kind == "classification")


def run_job(ctx: Context, task: TaskSpec, budget: LabelBudget, seed: int, spec: StrategySpec, job_dir: Path) -> Path:
    cfg = ctx.config
    seed_everything(seed)
    target = ctx.load(cfg.target, "target", task)
    t_mod = modality_of(target, cfg.target)
    cls = get_strategy(spec.name)
    uda = cfg.unlabelled_target
    fraction = budget.fraction
    train_rows = target.select(split="train").rows
    labelled = labelled_rows(train_rows, budget, seed, task)
    labelled_paths = {r.path for r in labelled}
    val_part = _validation_rows(target, fraction, seed, cfg.train.val_fraction, task)
    head_task = task_for(target.label_names, regression=task.kind == "regression")
    encoder = start_encoder(ctx, Preset(t_mod).spatial_dims, spec)
    if head_task == "regression":  # the head learns the target standardised on the labelled training rows
        mean, std = target_statistics(labelled, ctx.config_path)
        head = Head(encoder.out_features, "regression", 1, target_mean=mean, target_std=std)
    else:
        head = Head(encoder.out_features, head_task, max(2, len(target.label_names)))
    tc = cfg.train
    kwargs: dict[str, Any] = {}
    val_loader = None
    from_source = cls.needs_source_labels or uda
    if from_source:
        # labelled batches come from the source; the target batches carry labels only where allowed
        source = ctx.load(cfg.source, "source")
        if uda:
            source = apply_task(source, task)
        if heterogeneous(ctx) and not uda:
            kwargs["source_head"] = Head(encoder.out_features, task_for(source.label_names),
                                         max(2, len(source.label_names)))
        train_ds = dataset(ctx, source.select(split="train"), cfg.source, True)
        # UDA chooses on the source's validation rows (and the label-free selectors); a semi-supervised job on the
        # target's labelled validation rows, as fine-tuning does (it chose by training loss before 2026-12-02)
        val_ds = (dataset(ctx, source.select(split="val"), cfg.source, False) if uda
                  else dataset(ctx, val_part, cfg.target, False, task) if len(val_part) else None)
        hidden = [replace(r, label="unlabelled") if (uda or r.path not in labelled_paths) else r for r in train_rows]
        target_train = Manifest(hidden, list(target.label_names), {}, target.source)
        weights = None if uda else labelled_share_weights(hidden, tc.labelled_target_share)
        target_loader = make_loader(dataset(ctx, target_train, cfg.target, True, task), tc.batch_size, True, seed,
                                    weights=weights)
    else:
        train_ds = dataset(ctx, Manifest(labelled, list(target.label_names), {}, target.source), cfg.target, True, task)
        val_ds = dataset(ctx, val_part, cfg.target, False, task) if len(val_part) else None  # no val rows: no early stop
        target_loader = None
    if val_ds is not None and len(val_ds):
        val_loader = make_loader(val_ds, tc.batch_size, False, seed)
    # "task" is the head's (what predict and export-bundle need); the pipeline's name for it is task_name
    meta = {"label_names": list(target.label_names), "task": head_task, "task_name": task.name,
            "strategy": spec.display, "precision": tc.amp, "seed": seed, "label_fraction": fraction,
            "intensity": {"preset": t_mod, **Preset(t_mod).resolved(Preset(t_mod).options(cfg.target.preset_options()))}}
    if task.label_column == "label" and not task.label_map:  # its labels are the manifest's: medtl predict on the
        meta["manifest"] = str(ctx.manifest_path(cfg.target, "target"))  # training folder points evaluate at it
    epochs, patience = _budget(tc, len(train_ds))
    common = dict(epochs=epochs, seed=seed, device=tc.device, amp=tc.amp, deterministic=tc.deterministic,
                  patience=patience if val_loader is not None else None, progress=_interactive())
    hparams = dict(spec.hparams or {})
    # the strategy says whether a linear probe, fitted to convergence on cached features, primes it
    probe = cls.probe_first(hparams) if tc.feature_cache and not from_source else None
    if probe:
        # the frozen encoder sees each image once, through the deterministic chain
        plain_train = dataset(ctx, Manifest(labelled, list(target.label_names), {}, target.source), cfg.target,
                               False, task)
        probe_val = val_ds if val_loader is not None else None
    if probe and probe[0] == "whole":
        strategy, _ = fit_linear_probe(encoder, head, plain_train, probe_val, batch_size=tc.batch_size,
                                       hparams=probe[1] or None, run_dir=job_dir, cache_dir=RunFolder(job_dir).features,
                                       checkpoint_meta=meta, **common)
    else:
        if probe:  # the probe primes the head, then the method trains as its hyper-parameters say
            fit_linear_probe(encoder, head, plain_train, probe_val, batch_size=tc.batch_size,
                             cache_dir=RunFolder(job_dir).features, device=tc.device)
            hparams = probe[1]
        strategy = cls(encoder, head, hparams or None, **kwargs)  # kwargs: only for strategies that need the target
        train_loader = make_loader(train_ds, tc.batch_size, True, seed, num_workers=tc.num_workers)
        selection: dict[str, Any] = {}
        if uda and val_loader is not None:
            selection = _label_free_selection(ctx, task, target, target_train, val_loader, seed)
            meta["selector"] = tc.selector
        fit(strategy, train_loader, val_loader, target_loader=target_loader if cls.needs_target else None,
            run_dir=job_dir, checkpoint_meta=meta, **common, **selection)
    tables = []
    model = strategy
    device = resolve_device(tc.device)
    for split in ("val", "test"):
        part = val_part if split == "val" and not uda else target.select(split=split)
        if not len(part):
            continue
        # the checkpoint's precision policy, as medtl predict will apply it to the same weights
        out = predict(model, make_loader(dataset(ctx, part, cfg.target, False, task), tc.batch_size, False, seed),
                      device=device, amp_dtype=precision_dtype(tc.amp, device))
        common = dict(patient_ids=out.get("patient_id"), domain=out.get("domain", ""), split=split,
                      run_id=f"{task.name}/{spec.display}/{budget.name}/seed{seed}", strategy=spec.display,
                      task=task.name, seed=seed, label_fraction=fraction)
        if head_task == "regression":
            # the manifest's targets, not their float32 copies from the batches: the training-mean baseline
            # writes the same cases' targets, and the paired tests compare the two tables case by case
            truth = {r.path: float(r.label) for r in part.rows}
            labels = np.array([truth[c] for c in out["case_id"]])
            tables.append(predictions_from_arrays(out["case_id"], labels, prediction=out["prob"], **common))
        else:
            tables.append(predictions_from_arrays(out["case_id"], out["label"], out["prob"],
                                                  class_names=target.label_names, logits=out["logits"], **common))
            if split == "val" and head_task == "binary":
                _store_threshold(RunFolder(job_dir).best, out, cfg.evaluation.threshold_rule)
    path = RunFolder(job_dir).predictions
    write_predictions(pd.concat(tables, ignore_index=True), path.with_suffix(".tmp.csv"))
    path.with_suffix(".tmp.csv").replace(path)  # the job counts as done only once its table is whole
    # a finished job is never resumed: its optimiser state (3x the weights; 170 MB for a 3D ResNet-10) goes,
    # best.pt (what medtl predict loads) stays
    RunFolder(job_dir).last.unlink(missing_ok=True)
    return path


def labelled_share_weights(rows, share: float | None) -> list[float] | None:
    """Draw weights that give the labelled rows ``share`` of the draws (each labelled row alike, each other row
    alike); None without a share, or when every row or none is labelled (nothing to rebalance)."""
    n_labelled = sum(r.label != "unlabelled" for r in rows)
    if not share or n_labelled in (0, len(rows)):
        return None
    other = (1 - share) / (len(rows) - n_labelled)
    return [share / n_labelled if r.label != "unlabelled" else other for r in rows]


def _validation_rows(target: Manifest, fraction: float, seed: int, rule: str, task: TaskSpec) -> Manifest:
    """The target's validation rows a job may use: all of them, or (``train.val_fraction: same``) the job's
    label fraction of them, stratified, drawn apart from the labelled training rows."""
    val = target.select(split="val")
    if rule == "all" or fraction >= 1:
        return val
    rows = stratified_sample(val.rows, fraction, np.random.default_rng([seed, 1]),
                             by_label=task.kind == "classification")
    return Manifest(rows, list(val.label_names), dict(val.meta), val.source)


def _budget(tc, n_train: int) -> tuple[int, int | None]:
    """(epochs, patience) of a job with ``n_train`` training items: ``train.min_steps`` stretches both alike."""
    if not tc.min_steps or n_train == 0:
        return tc.epochs, tc.patience
    steps_per_epoch = max(1, math.ceil(n_train / tc.batch_size))
    epochs = max(tc.epochs, math.ceil(tc.min_steps / steps_per_epoch))
    scale = epochs / tc.epochs
    return epochs, None if tc.patience is None else math.ceil(tc.patience * scale)


def _label_free_selection(ctx: Context, task: TaskSpec, target: Manifest, target_train: Manifest, source_val,
                          seed: int) -> dict[str, Any]:
    """Trainer options for an unsupervised-adaptation job: every label-free selector scored each epoch, the
    configured one (``train.selector``) choosing the checkpoint; the labelled target val/test AUROC is logged
    beside them for the regret analysis only (see medtl.engine.selection)."""
    cfg, tc = ctx.config, ctx.config.train
    device = resolve_device(tc.device)

    def plain(m: Manifest):
        return make_loader(dataset(ctx, m, cfg.target, False, task), tc.batch_size, False, seed)

    oracle = {split: plain(target.select(split=split)) for split in ("val", "test") if len(target.select(split=split))}
    scores = SelectorScores(source_val, plain(target_train), device, precision_dtype(tc.amp, device), oracle, seed)
    monitor, mode = SELECTOR_MONITORS[tc.selector]
    return {"epoch_metrics": [scores], "monitor": monitor, "mode": mode}


def target_statistics(rows, where) -> tuple[float, float]:
    """Mean and standard deviation (ddof 0) of the labelled rows' numeric targets; std 1 when constant."""
    try:
        values = np.array([float(r.label) for r in rows], dtype=float)
    except ValueError:
        raise MedtlError("a regression target must be numeric in every labelled training row", where) from None
    if not len(values) or not np.isfinite(values).all():
        raise MedtlError("regression targets must be finite numbers and at least one row labelled", where)
    std = float(values.std())
    return float(values.mean()), std if std > 0 else 1.0


def _store_threshold(checkpoint: Path, out: dict, rule: str) -> None:
    """The binary operating threshold chosen on validation, into the job's checkpoint, so medtl predict
    decides as the report's run did (the report picks it the same way, on the same probabilities)."""
    if checkpoint.exists():
        labels = np.asarray(out["label"]).astype(int)
        update_checkpoint_meta(checkpoint, **checkpoint_threshold(labels == 1, out["prob"][:, 1], rule))


def run_training_mean(ctx: Context, task: TaskSpec, budget: LabelBudget, seed: int, job_dir: Path) -> Path:
    """The trivial regression baseline: every case predicted as the mean of the labelled training targets
    (the same labelled rows the strategies of this fraction and seed train on). Every regression table
    carries it, so a model worse than the mean shows as such."""
    target = ctx.load(ctx.config.target, "target", task)
    labelled = labelled_rows(target.select(split="train").rows, budget, seed, task)
    mean, _ = target_statistics(labelled, ctx.config_path)
    tables = []
    for split in ("val", "test"):
        rows = target.select(split=split).rows
        if not rows:
            continue
        tables.append(predictions_from_arrays(
            [r.path for r in rows], np.array([float(r.label) for r in rows]), prediction=np.full(len(rows), mean),
            patient_ids=[r.patient_id for r in rows], domain=[r.domain for r in rows], split=split,
            run_id=f"{task.name}/{TRAINING_MEAN}/{budget.name}/seed{seed}", strategy=TRAINING_MEAN, task=task.name,
            seed=seed, label_fraction=budget.fraction))
    job_dir.mkdir(parents=True, exist_ok=True)
    path = RunFolder(job_dir).predictions
    write_predictions(pd.concat(tables, ignore_index=True), path.with_suffix(".tmp.csv"))
    path.with_suffix(".tmp.csv").replace(path)
    RunFolder(job_dir).baseline.write_text(json.dumps({"training_mean": mean, "n_labelled": len(labelled)}) + "\n")
    return path
