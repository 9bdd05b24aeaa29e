"""``medtl run``: a pipeline's stages, each resumable, into one run folder.

Stages, in order (each writes into ``<out>/<stage>/`` and is skipped when already complete)::

    prepare     check manifests and data files, write config.yaml and environment.json
    pretrain    source pretraining (or the checkpoint the config names)
    similarity  source/target feature distances, transferability, the strategy recommendation
    transfer    every task x label fraction x seed x strategy: train, then predict val + test
    report      predictions.csv -> report.json / .md / .html, recommendation vs outcome

``<out>/stages.json`` records each finished stage with the config it ran with. Resuming with a
changed config refuses to mix results and names the stage (and keys) that differ. Inside
``transfer`` every job is its own trainer run folder, so a killed job resumes from its last epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from medtl.data.check import wrong_root_hint
from medtl.data.datasets import build_dataset, make_loader
from medtl.data.io import ARRAY_MEMBER
from medtl.data.manifest import Manifest, stratified_sample
from medtl.data.transforms import Preset
from medtl.engine.evaluate import precision_dtype, predict
from medtl.engine.pretrain import pretrain
from medtl.engine.probe import fit_linear_probe
from medtl.engine.run_folder import RunFolder
from medtl.engine.selection import SELECTOR_MONITORS, SelectorScores
from medtl.engine.trainer import fit, resolve_device, seed_everything
from medtl.errors import MedtlError
from medtl.evaluation.evaluate import EvalSettings, evaluate_predictions
from medtl.evaluation.predictions import predictions_from_arrays, write_predictions
from medtl.evaluation.report import Report, render_report
from medtl.evaluation.report.schema import Recommendation
from medtl.evaluation.thresholds import checkpoint_threshold
from medtl.models import Head, encoder_for, task_for
from medtl.models.checkpoint import update_checkpoint_meta
from medtl.paths import resolve_inside
from medtl.pipeline.config import DataSpec, PipelineConfig, StrategySpec, TaskSpec, closest, load_pipeline
from medtl.plain import plain
from medtl.progress import bar, format_seconds, in_notebook, logs_above_bars
from medtl.similarity.assess import to_table
from medtl.similarity.images import compare_manifests
from medtl.similarity.recommend import compare_outcome, recommend
from medtl.strategies.registry import STRATEGIES, get_strategy

log = logging.getLogger(__name__)
STAGES = ("prepare", "pretrain", "similarity", "transfer", "report")


# ----------------------------------------------------------------------------- stage bookkeeping


DATASET_MEMO_SIZE = 16


class StageBook:
    """``stages.json``: per stage, the config slice it ran with; refuses a different one."""

    def __init__(self, out: Path):
        self.path = out / "stages.json"
        self.done: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    @staticmethod
    def digest(payload: Any) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def check(self, stage: str, payload: dict, legacy: dict | None = None) -> bool:
        """True when ``stage`` finished with this payload; error when it ran with another. ``legacy``: the
        same config as run folders before 2026-11-30 recorded it (defaults included), accepted as equal."""
        entry = self.done.get(stage)
        if entry is None:
            return False
        same = entry["digest"] == self.digest(payload) or (
            legacy is not None and _same_but_new_defaults(entry.get("payload"), legacy, payload))
        if not same:
            old = entry.get("payload", {})
            keys = sorted(k for k in set(old) | set(payload) if json.dumps(old.get(k), sort_keys=True, default=str)
                          != json.dumps(payload.get(k), sort_keys=True, default=str))
            raise MedtlError(
                f"stage {stage!r} already ran with a different config (differs in: {', '.join(keys) or 'values'}); "
                "results would mix: use a new --out folder, or delete that stage's folder and its entry in stages.json",
                self.path,
            )
        return entry.get("status") == "done"

    def finish(self, stage: str, payload: dict, **info) -> None:
        self.done[stage] = {"digest": self.digest(payload), "payload": json.loads(json.dumps(payload, default=str)),
                            "status": "done", "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        self.path.write_text(json.dumps(self.done, indent=2) + "\n")

    def start(self, stage: str, payload: dict) -> float:
        """Mark ``stage`` running; returns the seconds it already ran in earlier, interrupted sessions."""
        if stage not in self.done:  # a started stage is tied to its config too, so a resume cannot mix
            self.done[stage] = {"digest": self.digest(payload), "payload": json.loads(json.dumps(payload, default=str)),
                                "status": "running"}
            self.path.write_text(json.dumps(self.done, indent=2) + "\n")
        return 0.0 if self.done[stage].get("status") == "done" else float(self.done[stage].get("seconds") or 0)

    def tick(self, stage: str, seconds: float) -> None:
        """Record a running stage's time so far, so a killed and resumed run still reports its whole wall time."""
        if self.done.get(stage, {}).get("status") == "running":
            self.done[stage]["seconds"] = round(seconds, 1)
            self.path.write_text(json.dumps(self.done, indent=2) + "\n")


# ----------------------------------------------------------------------------- data helpers


class Context:
    def __init__(self, config: PipelineConfig, config_path: Path, data_root: Path, out: Path, profile: str | None):
        self.config, self.config_path, self.data_root, self.out, self.profile = config, config_path, data_root, out, profile
        self.base = config_path.parent
        self.datasets: dict[tuple, Any] = {}  # see _dataset
        self.manifests: dict[Path, Manifest] = {}  # see load
        self.tick: Callable[[], None] = lambda: None  # records the running stage's time so far (run_pipeline sets it)
        self.progress = True  # one progress bar per long stage (run_pipeline's progress argument)

    def manifest_path(self, spec: DataSpec, key: str) -> Path:
        path = Path(spec.manifest)
        path = path if path.is_absolute() else (self.base / path).resolve()
        if not path.exists():
            raise MedtlError(f"manifest {spec.manifest} not found (resolved to {path})", f"{self.config_path}: {key}.manifest")
        return path

    def manifest(self, spec: DataSpec, key: str) -> Manifest:
        """The manifest as its CSV says, read once per run (every job asks again); do not modify it."""
        path = self.manifest_path(spec, key)
        if path not in self.manifests:
            self.manifests[path] = Manifest.load(path)
        return self.manifests[path]

    def load(self, spec: DataSpec, key: str, task: TaskSpec | None = None) -> Manifest:
        """A copy of the manifest, relabelled for ``task`` and capped as the profile says."""
        m = self.manifest(spec, key)
        m = Manifest(list(m.rows), list(m.label_names), dict(m.meta), m.source)  # callers may change their copy
        if task is not None:
            m = apply_task(m, task)
        if spec.max_per_split:
            m = m.sample(spec.max_per_split)
        return m


def apply_task(m: Manifest, task: TaskSpec) -> Manifest:
    """Relabel rows for ``task``: a label column other than ``label`` and/or a label map."""
    rows = []
    for r in m:
        value = r.label if task.label_column == "label" else r.extras.get(task.label_column, "")
        if task.label_map:
            value = task.label_map.get(value, value)
        rows.append(replace(r, label=str(value)))
    if task.kind == "regression":
        return Manifest(rows, [], dict(m.meta), m.source)
    labels = sorted({r.label for r in rows} - {"unlabelled"})
    return Manifest(rows, labels, dict(m.meta), m.source)


def modality_of(m: Manifest, spec: DataSpec) -> str:
    """The config's preset for this data, else the manifest's one modality."""
    return spec.preset or m.modality


# ----------------------------------------------------------------------------- stages


def check_before_run(ctx: Context) -> None:
    """Every cheap check of a run, made before anything is written or trained: the output folder, the
    manifests and their files, strategy names and hyper-parameters, task columns, label sets and lifts."""
    cfg, where = ctx.config, ctx.config_path
    if ctx.out.exists() and not ctx.out.is_dir():
        raise MedtlError("--out must be a folder (the run folder), not a file", ctx.out)
    if ctx.out.is_dir() and any(ctx.out.iterdir()) and not (ctx.out / "stages.json").exists():
        raise MedtlError("--out is a folder with other files and no stages.json (not a medtl run folder): "
                         "choose a new or empty folder", ctx.out)
    for i, spec in enumerate(cfg.strategies):
        try:
            cls = get_strategy(spec.name)
        except MedtlError:
            guess = closest(spec.name, STRATEGIES)
            raise MedtlError(f"unknown strategy {spec.name!r}" + (f"; did you mean {guess!r}?" if guess else "")
                             + f" (known: {', '.join(sorted(STRATEGIES))})", f"{where}: strategies[{spec.display}]") from None
        for key in sorted(set(spec.hparams) - set(cls.DEFAULTS)):
            guess = closest(key, cls.DEFAULTS)
            raise MedtlError(f"unknown hyper-parameter {key!r} for {spec.name}"
                             + (f"; did you mean {guess!r}?" if guess else "")
                             + f" (known: {', '.join(sorted(cls.DEFAULTS))})", f"{where}: strategies[{i}].hparams")
    if cfg.pretrain.checkpoint:
        src = Path(cfg.pretrain.checkpoint)
        if not (src if src.is_absolute() else ctx.base / src).exists():
            raise MedtlError(f"pretrained checkpoint {src} not found", f"{where}: pretrain.checkpoint")
    missing, total = [], 0
    for key, spec in (("source", cfg.source), ("target", cfg.target)):
        m = ctx.manifest(spec, key)
        total += len(m)
        for r in m:
            try:
                p = resolve_inside(ctx.data_root, r.path, f"{m.source}")
            except MedtlError as err:
                missing.append(f"{r.path} ({err.reason})")
                continue
            if not Path(str(p).split(ARRAY_MEMBER)[0]).exists():  # an .npz member: its archive
                missing.append(r.path)
    hint = wrong_root_hint(len(missing), total, ctx.data_root)
    if hint:
        raise MedtlError(hint, f"{where}: data root")
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  (+{len(missing) - 20} more)" if len(missing) > 20 else "")
        raise MedtlError(f"{len(missing)} file(s) named by the manifests are missing under the data root:\n  {shown}",
                         ctx.data_root)
    target = ctx.manifest(cfg.target, "target")
    for i, task in enumerate(cfg.tasks):
        if task.label_column != "label" and target.rows and task.label_column not in target.rows[0].extras:
            columns = ["label", *target.rows[0].extras]
            guess = closest(task.label_column, columns)
            raise MedtlError(f"the target manifest has no column {task.label_column!r}"
                             + (f"; did you mean {guess!r}?" if guess else "") + f" (columns: {', '.join(columns)})",
                             f"{where}: tasks[{i}].label_column")
    _heterogeneous(ctx)  # refuses a UDA task whose target labels the source lacks
    if Preset(modality_of(target, cfg.target)).spatial_dims == 3:
        for spec in cfg.strategies:
            if spec.pretrained and (spec.lift or cfg.encoder.lift or "none") == "none":
                raise MedtlError("a 3D target needs a lift (i3d, acs or 2.5d) to use the 2D pretrained encoder; set "
                                 "encoder.lift or the strategy's lift, or pretrained: false for a 3D network from "
                                 "scratch", f"{where}: strategies[{spec.display}]")


def stage_prepare(ctx: Context) -> dict:
    cfg = ctx.config
    (ctx.out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    env = {
        "medtl": __import__("medtl").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": __import__("monai").__version__,
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "profile": ctx.profile or "default",
        "data_root": str(ctx.data_root),
        "manifests": {key: str(ctx.manifest_path(spec, key)) for key, spec in (("source", cfg.source), ("target", cfg.target))},
    }
    (ctx.out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    return {}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stage_pretrain(ctx: Context) -> dict:
    cfg, out = ctx.config, ctx.out / "pretrain"
    if cfg.pretrain.checkpoint:
        src = Path(cfg.pretrain.checkpoint)
        src = src if src.is_absolute() else (ctx.base / src).resolve()
        if not src.exists():
            raise MedtlError("pretrained checkpoint not found", f"{ctx.config_path}: pretrain.checkpoint")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / "model.pt")
        return {"checkpoint": str(out / "model.pt"), "copied_from": str(src)}
    m = ctx.load(cfg.source, "source")
    modality = modality_of(m, cfg.source)
    size = cfg.source.image_size or 128
    result = pretrain(
        m, ctx.data_root, out, mode=cfg.pretrain.mode, preset=modality, image_size=size, arch=cfg.encoder.arch,
        stem_stride=cfg.encoder.stem_stride, epochs=cfg.pretrain.epochs, batch_size=cfg.pretrain.batch_size,
        lr=cfg.pretrain.lr, kl_weight=cfg.pretrain.kl_weight, seed=cfg.seeds[0], num_workers=cfg.train.num_workers,
        device=cfg.train.device, progress=ctx.progress,
    )
    record = {"checkpoint": str(result.path), "metrics": result.metrics}
    if cfg.sources:
        record["sources"] = {name: str(pretrain_source(ctx, name)) for name in cfg.sources}
    return record


def source_checkpoint(ctx: Context, name: str | None) -> Path:
    """The model.pt a strategy starts from: the default pretraining, or the named source's."""
    return ctx.out / "pretrain" / ("model.pt" if name is None else f"sources/{name}/model.pt")


def pretrain_source(ctx: Context, name: str) -> Path:
    """Self-supervised pretraining of ``sources.<name>`` on its manifests' rows (resumable, like the default)."""
    cfg, src = ctx.config, ctx.config.sources[name]
    parts = []
    for i, entry in enumerate(src.data):
        m = ctx.manifest(DataSpec(manifest=entry.manifest), f"sources.{name}.data[{i}]")
        rows = [r for r in m if r.split in entry.splits]
        if entry.max_rows and len(rows) > entry.max_rows:
            rows = [rows[i] for i in np.linspace(0, len(rows) - 1, entry.max_rows).round().astype(int)]
        if not rows:
            raise MedtlError(f"no rows in split(s) {entry.splits}", f"{ctx.config_path}: sources.{name}.data[{i}]")
        # one split name for the kept rows: each entry chose its own splits
        parts.append(Manifest([replace(r, split="train") for r in rows], list(m.label_names), dict(m.meta), m.source))
    size = src.image_size or cfg.target.image_size or 128
    p = src.pretrain
    result = pretrain(parts, ctx.data_root, source_checkpoint(ctx, name).parent, mode=p.mode, image_size=size,
                      arch=cfg.encoder.arch, stem_stride=cfg.encoder.stem_stride, epochs=p.epochs,
                      batch_size=p.batch_size, lr=p.lr, seed=cfg.seeds[0], num_workers=cfg.train.num_workers,
                      device=cfg.train.device, amp=cfg.train.amp, progress=ctx.progress)
    return result.path


_INNER_BARS = True  # run_pipeline turns them off with progress=False


def _interactive() -> bool:
    """Per-epoch bars inside a transfer job only on a terminal (not a notebook, not a log), below the job bar."""
    return _INNER_BARS and sys.stderr.isatty() and not in_notebook()


def _encoder(ctx: Context, dims: int, spec: StrategySpec):
    """The encoder a job starts from: the pretrained 2D one (lifted for 3D) or a random one."""
    enc = ctx.config.encoder
    checkpoint = source_checkpoint(ctx, spec.source) if spec.pretrained else None
    return encoder_for(checkpoint, dims, spec.lift or enc.lift or "none", arch=enc.arch, stem_stride=enc.stem_stride)


def _dataset(ctx: Context, m: Manifest, spec: DataSpec, train: bool, task: TaskSpec | None = None):
    """A dataset over ``m``; the same rows with the same options are decoded once per pipeline run.

    Jobs share most of their data (every strategy of a seed sees the same split), and decoding is the
    slow part on CPU. Sharing is safe: the deterministic chain's output is fixed, and each job's
    DataLoader reseeds the random part from the job's seed.
    """
    modality = modality_of(m, spec)
    kind = task.kind if task else "classification"
    key = (spec.model_dump_json(), modality, train, kind, tuple(m.label_names),
           tuple((r.path, r.label, r.patient_id, r.domain) for r in m))
    if key not in ctx.datasets:
        while len(ctx.datasets) >= DATASET_MEMO_SIZE:  # bounded: 3D volumes are large
            ctx.datasets.pop(next(iter(ctx.datasets)))
        ctx.datasets[key] = build_dataset(m, ctx.data_root, modality, train, task=kind,
                                          **Preset(modality).options(spec.preset_options()))
    return ctx.datasets[key]


def stage_similarity(ctx: Context) -> dict:
    """What ``medtl similarity`` measures (the same sample, sizes and encoder) for the pretrained and a
    random encoder, and what ``medtl recommend`` ranks from it (the same weights and strategy priors)."""
    cfg, out = ctx.config, ctx.out / "similarity"
    out.mkdir(parents=True, exist_ok=True)
    task = cfg.tasks[0]
    source = ctx.load(cfg.source, "source")
    target = ctx.load(cfg.target, "target", task)
    results, feats = {}, {}
    encoders = {"pretrained": source_checkpoint(ctx, None), "random_init": None,
                **{name: source_checkpoint(ctx, name) for name in cfg.sources}}
    for enc_name, checkpoint in encoders.items():
        result = compare_manifests(
            source, target, ctx.data_root, checkpoint, split="train", max_cases=cfg.similarity.max_images, seed=0,
            arch=cfg.encoder.arch, stem_stride=cfg.encoder.stem_stride, progress=ctx.progress, return_features=True,
            target_labels=task.kind == "classification" and not cfg.unlabelled_target)
        feats[enc_name] = result.pop("features")
        results[enc_name] = result
        (out / f"{enc_name}.md").write_text(to_table(result, markdown=True) + "\n")
    src_f, tgt_f = feats["pretrained"]["source"], feats["pretrained"]["target"]
    np.savez_compressed(out / "features.npz", features=np.concatenate([src_f, tgt_f]),
                        domain=np.array(["source"] * len(src_f) + ["target"] * len(tgt_f)))
    n_labelled = 0 if cfg.unlabelled_target else len(target.select(split="train"))
    candidates = [{"source": spec.source or Path(cfg.source.manifest).stem, "encoder": enc_name, "strategy": spec.display,
                   "method": spec.name, "scores": _flat_scores(results[enc_name])}
                  for spec in cfg.strategies for enc_name in [_encoder_name(spec)]]
    record = recommend({"n_labelled": n_labelled, "shared_labels": not _heterogeneous(ctx)}, candidates)
    (out / "similarity.json").write_text(json.dumps(plain(results, "similarity"), indent=2) + "\n")
    (out / "recommendation.json").write_text(json.dumps(record, indent=2) + "\n")
    print(record["explanation"])
    return {"recommended": record["recommended"]}


def _encoder_name(spec: StrategySpec) -> str:
    """The similarity stage's name for the encoder a strategy starts from."""
    if not spec.pretrained or not get_strategy(spec.name).uses_pretrained:
        return "random_init"
    return spec.source or "pretrained"


def _flat_scores(result: dict) -> dict[str, float]:
    flat = {}
    for section in ("distances", "transferability"):
        for k, v in (result.get(section) or {}).items():
            value = v.get("value") if isinstance(v, dict) else v
            if isinstance(value, (int, float)) and value is not None and np.isfinite(value):
                flat[k] = float(value)
    return flat


def _heterogeneous(ctx: Context) -> bool:
    """Source and target label sets differ (chest X-ray findings vs brain MRI classes)."""
    cfg = ctx.config
    tgt = ctx.load(cfg.target, "target", cfg.tasks[0]).label_names
    if cfg.unlabelled_target:
        # UDA: the source, relabelled by the task, must cover the target's classes
        src = apply_task(ctx.manifest(cfg.source, "source"), cfg.tasks[0]).label_names
        if not set(tgt) <= set(src):
            raise MedtlError(f"target labels {sorted(set(tgt) - set(src))} are not in the source label set {src}: "
                             "unsupervised adaptation needs a shared label set", f"{ctx.config_path}: tasks")
        return False
    src = ctx.manifest(cfg.source, "source").label_names
    return sorted(src) != sorted(tgt)


def stage_transfer(ctx: Context) -> dict:
    cfg = ctx.config
    jobs = [(task, fraction, seed, spec) for task in cfg.tasks for fraction in cfg.label_fractions
            for seed in cfg.seeds_at(fraction) for spec in cfg.strategies]
    done = 0
    for task, fraction, seed, spec in bar(jobs, desc="transfer", unit="job", enabled=ctx.progress):
        job_dir = ctx.out / "transfer" / task.name / f"frac{fraction:g}" / spec.display / f"seed{seed}"
        if RunFolder(job_dir).predictions.exists():
            done += 1
            continue
        run_job(ctx, task, fraction, seed, spec, job_dir)
        ctx.tick()
    for task in cfg.tasks:  # regression tables carry the trivial baseline (seconds: no model)
        if task.kind != "regression":
            continue
        for fraction in cfg.label_fractions:
            for seed in cfg.seeds_at(fraction):
                job_dir = ctx.out / "transfer" / task.name / f"frac{fraction:g}" / TRAINING_MEAN / f"seed{seed}"
                if not RunFolder(job_dir).predictions.exists():
                    run_training_mean(ctx, task, fraction, seed, job_dir)
    return {"jobs": len(jobs), "already_done": done}


def run_job(ctx: Context, task: TaskSpec, fraction: float, seed: int, spec: StrategySpec, job_dir: Path) -> Path:
    cfg = ctx.config
    seed_everything(seed)
    target = ctx.load(cfg.target, "target", task)
    t_mod = modality_of(target, cfg.target)
    cls = get_strategy(spec.name)
    uda = cfg.unlabelled_target
    rng = np.random.default_rng(seed)
    train_rows = target.select(split="train").rows
    labelled = stratified_sample(train_rows, fraction, rng) if fraction < 1 else list(train_rows)
    labelled_paths = {r.path for r in labelled}
    val_part = _validation_rows(target, fraction, seed, cfg.train.val_fraction)
    head_task = task_for(target.label_names, regression=task.kind == "regression")
    encoder = _encoder(ctx, Preset(t_mod).spatial_dims, spec)
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
        if _heterogeneous(ctx) and not uda:
            kwargs["source_head"] = Head(encoder.out_features, task_for(source.label_names),
                                         max(2, len(source.label_names)))
        train_ds = _dataset(ctx, source.select(split="train"), cfg.source, True)
        val_ds = _dataset(ctx, source.select(split="val"), cfg.source, False) if uda else None
        hidden = [replace(r, label="unlabelled") if (uda or r.path not in labelled_paths) else r for r in train_rows]
        target_train = Manifest(hidden, list(target.label_names), {}, target.source)
        target_loader = make_loader(_dataset(ctx, target_train, cfg.target, True, task), tc.batch_size, True, seed)
    else:
        train_ds = _dataset(ctx, Manifest(labelled, list(target.label_names), {}, target.source), cfg.target, True, task)
        val_ds = _dataset(ctx, val_part, cfg.target, False, task)
        target_loader = None
    if val_ds is not None and len(val_ds):
        val_loader = make_loader(val_ds, tc.batch_size, False, seed)
    # "task" is the head's (what predict and export-bundle need); the pipeline's name for it is task_name
    meta = {"label_names": list(target.label_names), "task": head_task, "task_name": task.name,
            "strategy": spec.display, "precision": tc.amp, "seed": seed, "label_fraction": fraction,
            "intensity": {"preset": t_mod, **Preset(t_mod).options(cfg.target.preset_options())}}
    epochs, patience = _budget(tc, len(train_ds))
    common = dict(epochs=epochs, seed=seed, device=tc.device, amp=tc.amp, deterministic=tc.deterministic,
                  patience=patience if val_loader is not None else None, progress=_interactive())
    hparams = dict(spec.hparams or {})
    # the strategy says whether a linear probe, fitted to convergence on cached features, primes it
    probe = cls.probe_first(hparams) if tc.feature_cache and not from_source else None
    if probe:
        # the frozen encoder sees each image once, through the deterministic chain
        plain_train = _dataset(ctx, Manifest(labelled, list(target.label_names), {}, target.source), cfg.target,
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
        part = val_part if split == "val" and not from_source else target.select(split=split)
        if not len(part):
            continue
        # the checkpoint's precision policy, as medtl predict will apply it to the same weights
        out = predict(model, make_loader(_dataset(ctx, part, cfg.target, False, task), tc.batch_size, False, seed),
                      device=device, amp_dtype=precision_dtype(tc.amp, device))
        common = dict(patient_ids=out.get("patient_id"), domain=out.get("domain", ""), split=split,
                      run_id=f"{task.name}/{spec.display}/frac{fraction:g}/seed{seed}", strategy=spec.display,
                      task=task.name, seed=seed, label_fraction=fraction)
        if head_task == "regression":
            tables.append(predictions_from_arrays(out["case_id"], out["label"], prediction=out["prob"], **common))
        else:
            tables.append(predictions_from_arrays(out["case_id"], out["label"], out["prob"],
                                                  class_names=target.label_names, logits=out["logits"], **common))
            if split == "val" and head_task == "binary":
                _store_threshold(RunFolder(job_dir).best, out, cfg.evaluation.threshold_rule)
    path = RunFolder(job_dir).predictions
    write_predictions(pd.concat(tables, ignore_index=True), path.with_suffix(".tmp.csv"))
    path.with_suffix(".tmp.csv").replace(path)  # the job counts as done only once its table is whole
    return path


def _validation_rows(target: Manifest, fraction: float, seed: int, rule: str) -> Manifest:
    """The target's validation rows a job may use: all of them, or (``train.val_fraction: same``) the job's
    label fraction of them, stratified, drawn apart from the labelled training rows."""
    val = target.select(split="val")
    if rule == "all" or fraction >= 1:
        return val
    rows = stratified_sample(val.rows, fraction, np.random.default_rng([seed, 1]))
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
        return make_loader(_dataset(ctx, m, cfg.target, False, task), tc.batch_size, False, seed)

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


def run_training_mean(ctx: Context, task: TaskSpec, fraction: float, seed: int, job_dir: Path) -> Path:
    """The trivial regression baseline: every case predicted as the mean of the labelled training targets
    (the same labelled rows the strategies of this fraction and seed train on). Every regression table
    carries it, so a model worse than the mean shows as such."""
    target = ctx.load(ctx.config.target, "target", task)
    train_rows = target.select(split="train").rows
    rng = np.random.default_rng(seed)
    labelled = stratified_sample(train_rows, fraction, rng) if fraction < 1 else list(train_rows)
    mean, _ = target_statistics(labelled, ctx.config_path)
    tables = []
    for split in ("val", "test"):
        rows = target.select(split=split).rows
        if not rows:
            continue
        tables.append(predictions_from_arrays(
            [r.path for r in rows], np.array([float(r.label) for r in rows]), prediction=np.full(len(rows), mean),
            patient_ids=[r.patient_id for r in rows], domain=[r.domain for r in rows], split=split,
            run_id=f"{task.name}/{TRAINING_MEAN}/frac{fraction:g}/seed{seed}", strategy=TRAINING_MEAN, task=task.name,
            seed=seed, label_fraction=fraction))
    job_dir.mkdir(parents=True, exist_ok=True)
    path = RunFolder(job_dir).predictions
    write_predictions(pd.concat(tables, ignore_index=True), path.with_suffix(".tmp.csv"))
    path.with_suffix(".tmp.csv").replace(path)
    RunFolder(job_dir).baseline.write_text(json.dumps({"training_mean": mean, "n_labelled": len(labelled)}) + "\n")
    return path


TRAINING_MEAN = "training_mean"


def stage_report(ctx: Context) -> dict:
    out = ctx.out
    tables = RunFolder.predictions_under(out / "transfer")
    if not tables:
        raise MedtlError("no predictions to report", out / "transfer")
    preds = pd.concat([pd.read_csv(p, dtype={"case_id": str, "patient_id": str}) for p in tables], ignore_index=True)
    preds.to_csv(out / "predictions.csv", index=False)
    logs = []
    for p in RunFolder.logs_under(out / "transfer"):
        job = p.parent.relative_to(out / "transfer")  # <task>/frac<f>/<strategy>/seed<n>
        for record in RunFolder.read_log_file(p):
            logs.append({**record, "run_id": job.as_posix(), "strategy": job.parts[-2]})
    log_path = None
    if logs:
        log_path = out / "metrics_log.csv"
        pd.DataFrame(logs).to_csv(log_path, index=False)
    settings = EvalSettings(n_boot=ctx.config.evaluation.bootstrap, threshold_rule=ctx.config.evaluation.threshold_rule)
    report = Report.from_dict(evaluate_predictions(out / "predictions.csv", settings))  # the path: its source
    rec_path = out / "similarity" / "recommendation.json"
    if rec_path.exists():
        record = json.loads(rec_path.read_text())
        outcomes = _outcomes(report, ctx.config)
        if outcomes:
            by_key = {r["key"]: outcomes.get(r["strategy"]) for r in record["ranking"]}
            comparison = compare_outcome(record, {k: v for k, v in by_key.items() if v is not None})
            report.recommendation = Recommendation(explanation=record["explanation"], outcome=comparison)
            report.notes.append(
                ("Recommendation: tie between " + ", ".join(record["tie"]) if record.get("tie") else
                 f"Recommendation: {record['recommended']}") + f". Best observed ({_outcome_metric(ctx.config)} on the "
                f"first task, largest label fraction, mean over seeds): {comparison['best_observed']}; "
                f"top pick was best: {comparison['top1_is_best']}; regret {_rounded(comparison['regret'])}.")
    if ctx.config.unlabelled_target:
        report.notes.append(
            "Unsupervised adaptation: training saw no target label; each run's checkpoint was selected by the "
            f"selector `{ctx.config.train.selector}` (source_loss: the source validation loss). Target labels were "
            "used only in evaluation: the operating threshold of each run is picked on the labelled target "
            "validation split, AUROC needs none; the target AUROC logged each epoch only measures selector regret.")
    features = out / "similarity" / "features.npz"
    paths = render_report(report, out, metrics_log=log_path, features=features if features.exists() else None,
                          title=f"medtl pipeline {ctx.config.name}")
    return {"report": str(paths.get("html", out / "report.html"))}


def _rounded(value, digits: int = 3):
    return round(value, digits) if isinstance(value, float) else value


def _outcome_metric(cfg: PipelineConfig) -> str:
    return "mae" if cfg.tasks[0].kind == "regression" else "auroc"



def _outcomes(report: Report, cfg: PipelineConfig) -> dict[str, float]:
    """Mean test metric per strategy for the first task at the largest label fraction (higher = better)."""
    task = report.tasks.get(cfg.tasks[0].name)
    metric = _outcome_metric(cfg)
    frac = max(cfg.label_fractions)
    found: dict[str, float] = {}
    for name, strategy in (task.strategies if task else {}).items():
        for entry in strategy.entries():
            if entry.label_fraction not in (None, frac):
                continue
            m = entry.metrics.get(metric)
            if m is not None and m.value is not None:
                found[name] = -m.value if metric == "mae" else m.value
    return found


STAGE_FUNCS = {"prepare": stage_prepare, "pretrain": stage_pretrain, "similarity": stage_similarity,
               "transfer": stage_transfer, "report": stage_report}


def _same_but_new_defaults(stored: Any, full: Any, minimal: Any) -> bool:
    """An older run folder's recorded payload (every value, as recorded before) equals this config's ``full``
    payload, except for keys the older medtl did not have, which must be at their defaults (absent from
    ``minimal``, the payload without defaults), and keys this medtl no longer has, which must have held
    nothing (``similarity.compare: []``)."""
    if isinstance(stored, dict) and isinstance(full, dict):
        minimal = minimal if isinstance(minimal, dict) else {}
        removed = set(stored) - set(full)
        if any(k in minimal for k in set(full) - set(stored)) or any(stored[k] not in (None, [], {}) for k in removed):
            return False
        return all(_same_but_new_defaults(stored[k], full[k], minimal.get(k)) for k in stored if k not in removed)
    if isinstance(stored, list) and isinstance(full, list):
        minimal = minimal if isinstance(minimal, list) and len(minimal) == len(full) else [None] * len(full)
        return len(stored) == len(full) and all(map(_same_but_new_defaults, stored, full, minimal))
    return json.dumps(stored, sort_keys=True, default=str) == json.dumps(full, sort_keys=True, default=str)


def _payloads(cfg: PipelineConfig, data_root: Path, with_defaults: bool = False) -> dict[str, dict]:
    # Only values that differ from the defaults: a field added to the config later (with a default) leaves a
    # finished run's stages valid, so a run folder resumes and --redo-report works after upgrading medtl.
    # (with_defaults: the earlier form, every value, still accepted when reading older run folders.)
    c = cfg.model_dump(mode="json", exclude_defaults=not with_defaults)
    return {
        "prepare": {"source": c.get("source"), "target": c.get("target"), "data_root": str(data_root)},
        "pretrain": {"source": c.get("source"), "pretrain": c.get("pretrain"), "encoder": c.get("encoder"),
                     "seed": cfg.seeds[0], **({"sources": c["sources"]} if c.get("sources") else {})},
        "similarity": {"target": c.get("target"), "tasks": c["tasks"][:1], "similarity": c.get("similarity"),
                       "strategies": c.get("strategies")},
        "transfer": {k: c.get(k) for k in ("target", "tasks", "encoder", "train", "strategies", "label_fractions",
                                           "seeds", "unlabelled_target", "seeds_per_fraction") if k in c or k != "seeds_per_fraction"},
        "report": {"evaluation": c.get("evaluation")},
    }


def run_pipeline(config_path: str | Path, data_root: str | Path, out: str | Path, profile: str | None = None,
                 stages: tuple[str, ...] = STAGES, redo_report: bool = False, progress: bool = True) -> Path:
    """Run (or resume) a pipeline; returns the path of its HTML report.

    Everything cheap is checked first (config, data root, output folder, manifests and files, strategy
    names): a refused run writes nothing. ``redo_report``: render the report again from the finished
    predictions even though that stage is complete (after upgrading medtl, say); no training stage is
    touched. ``progress``: one bar per long stage (pretrain, similarity, transfer); False shows none.
    """
    global _INNER_BARS
    started_run = time.perf_counter()
    config_path = Path(config_path).resolve()
    config = load_pipeline(config_path, profile)
    data_root, out = Path(data_root).resolve(), Path(out)
    if not data_root.is_dir():
        raise MedtlError("data root is not a folder (pass --data-root DIR or set MEDTL_DATA_ROOT)", data_root)
    ctx = Context(config, config_path, data_root, out, profile)
    ctx.progress = progress
    check_before_run(ctx)
    out.mkdir(parents=True, exist_ok=True)
    book = StageBook(out)
    payloads, legacy = _payloads(config, data_root), _payloads(config, data_root, with_defaults=True)
    _INNER_BARS = progress
    try:
        with logs_above_bars():  # log lines print above the stage's bar, and the weights-loaded line once
            for stage in STAGES:
                payload = payloads[stage]
                if stage not in stages or (stage == "similarity" and not config.similarity.enabled):
                    continue
                if book.check(stage, payload, legacy[stage]) and not (redo_report and stage == "report"):
                    print(f"[{stage}] already complete: skipped")
                    continue
                before = book.start(stage, payload)
                started = time.perf_counter()
                ctx.tick = lambda: book.tick(stage, before + time.perf_counter() - started)  # noqa: B023 (called within this stage)
                print(f"[{stage}] running" + (f" (resumed; {format_seconds(before)} spent before)" if before else ""))
                info = STAGE_FUNCS[stage](ctx)
                seconds = time.perf_counter() - started
                book.finish(stage, payload, seconds=round(before + seconds, 1), **plain(info, stage))
                print(f"[{stage}] done in {format_seconds(seconds)}")
    finally:
        _INNER_BARS = True
    html = out / "report.html"
    print(f"report: {html}")
    print(f"medtl run finished in {format_seconds(time.perf_counter() - started_run)}")
    return html
