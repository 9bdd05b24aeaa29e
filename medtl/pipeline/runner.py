"""``medtl run``: a pipeline's stages, each resumable, into one run folder.

Stages, in order (each writes into ``<out>/<stage>/`` and is skipped when already complete)::

    prepare     check manifests and data files, write config.yaml and environment.json
    pretrain    source pretraining (or the checkpoint the config names)
    similarity  source/target feature distances, transferability, the strategy recommendation
    transfer    every task x label fraction x seed x strategy: train, then predict val + test
    report      predictions.csv -> report.json / .md / .html, recommendation vs outcome

``<out>/stages.json`` records each stage with the config it ran with and its status: ``done``, ``running``
(or killed where nothing could write), ``interrupted`` (Ctrl-C) or ``failed`` (an error). Resuming with a
changed config refuses to mix results and names the stage (and keys) that differ, with one exception:
a study may grow. Strategies, seeds or label fractions added to the lists (none removed, nothing else
changed) run the new jobs only; the similarity stage ranks the longer candidate list again, and every
stage after one that ran is run again. Inside ``transfer`` every job is its own trainer run folder, so
a killed job resumes from its last epoch.

This module sequences and records the stages; what they share is in ``context``, the checks made before
a run in ``checks``, and one transfer job in ``jobs``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

import medtl
from medtl.data.manifest import Manifest
from medtl.data.transforms import DEFAULTS as PRESET_DEFAULTS
from medtl.data.transforms import Preset
from medtl.lock import OutputLock
from medtl.engine.distributed import require_single_process
from medtl.engine.pretrain import pretrain
from medtl.engine.run_folder import RunFolder
from medtl.errors import MedtlError
from medtl.evaluation.evaluate import EvalSettings, evaluate_predictions
from medtl.evaluation.predictions import NEAR_COPY_GROUP
from medtl.evaluation.report import Report, render_report
from medtl.evaluation.report.schema import Recommendation
from medtl.models.checkpoint import encoder_config
from medtl.pipeline import jobs as transfer_jobs
from medtl.pipeline.checks import check_before_run
from medtl.pipeline.config import DataSpec, PipelineConfig, StrategySpec, load_pipeline
from medtl.pipeline.context import Context, heterogeneous, modality_of, source_checkpoint
from medtl.pipeline.jobs import TRAINING_MEAN, label_budgets, labelled_rows, run_job, run_training_mean
from medtl.paths import write_text_atomic
from medtl.plain import differing_keys, plain
from medtl.progress import bar, format_seconds, logs_above_bars
from medtl.similarity.assess import flat_scores, resampled_scores, to_table
from medtl.similarity.images import compare_manifests
from medtl.similarity.recommend import compare_outcome, recommend
from medtl.strategies.registry import get_strategy

log = logging.getLogger(__name__)
STAGES = ("prepare", "pretrain", "similarity", "transfer", "report")


# ----------------------------------------------------------------------------- stage bookkeeping


class StageBook:
    """``stages.json``: per stage, the config slice it ran with; refuses a different one."""

    def __init__(self, out: Path, profile: str | None = None):
        self.path = out / "stages.json"
        self.done: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.profile = profile or "default"  # this run's, named when the folder was made with another
        self._lock = threading.RLock()  # the stage's clock (StageClock) ticks from its own thread

    def _write(self) -> None:
        # whole or not at all: a run killed mid-write must leave the previous stages.json readable
        with self._lock:
            write_text_atomic(self.path, json.dumps(self.done, indent=2) + "\n")

    @staticmethod
    def digest(payload: Any) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def check(self, stage: str, payload: dict, legacy: dict | None = None) -> str:
        """What ``stage`` needs under this payload, changing nothing: ``"done"`` (finished with it),
        ``"run"`` (never started, or started with it and interrupted) or ``"grown"`` (finished or started
        with a payload this one only adds to, see :func:`_grown`); an error when it ran with another.
        ``legacy``: the same config as run folders before 2026-11-30 recorded it (defaults included),
        accepted as equal."""
        entry = self.done.get(stage)
        if entry is None:
            return "run"
        if entry["digest"] == self.digest(payload) or _same_payload(entry.get("payload"), payload, legacy):
            return "done" if entry.get("status") == "done" else "run"
        if _grown(entry.get("payload") or {}, payload, legacy or payload):
            return "grown"
        keys = differing_keys(entry.get("payload", {}), json.loads(json.dumps(payload, default=str)))
        made_with = self._made_with()
        profile = (f"; this folder was made with --profile {made_with}, this run uses {self.profile}"
                   if made_with and made_with != self.profile else "")
        if stage == "report":  # only the report's settings changed: rendering it again is all it takes
            advice = ("run with --redo report to render the report again from the finished predictions under "
                      "the new settings (nothing is trained)")
        else:
            advice = ("results would mix: use a new --out folder, or delete that stage's outputs and its entry in "
                      f"stages.json (items added to {', '.join(GROWABLE)}, keeping every earlier one and the first "
                      "seed, are allowed: only the new jobs run)")
        raise MedtlError(f"stage {stage!r} already ran with a different config (differs in: "
                         f"{', '.join(keys) or 'values'}{profile}); {advice}", self.path)

    def _made_with(self) -> str | None:
        """The --profile the run folder was made with, as environment.json records it (None if it does not)."""
        env = self.path.with_name("environment.json")
        try:
            return json.loads(env.read_text()).get("profile") if env.exists() else None
        except (OSError, ValueError):
            return None

    def finish(self, stage: str, payload: dict, **info) -> None:
        self.done[stage] = {"digest": self.digest(payload), "payload": json.loads(json.dumps(payload, default=str)),
                            "status": "done", "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        self._write()

    def start(self, stage: str, payload: dict) -> float:
        """Mark ``stage`` running; returns the seconds it already ran in earlier, interrupted sessions."""
        entry = self.done.get(stage)
        if entry is None:  # a started stage is tied to its config too, so a resume cannot mix
            self.done[stage] = {"digest": self.digest(payload), "payload": json.loads(json.dumps(payload, default=str)),
                                "status": "running"}
            self._write()
        elif entry.get("status") != "done":  # resumed after it stopped
            entry.pop("stopped", None)
            entry["status"] = "running"
            self._write()
        return 0.0 if self.done[stage].get("status") == "done" else float(self.done[stage].get("seconds") or 0)

    def stop(self, stage: str, error: BaseException) -> None:
        """Mark a running stage that raised as ``interrupted`` (Ctrl-C) or ``failed``: not left saying running.
        Only the error's kind: its message may name a patient's file."""
        with self._lock:
            entry = self.done.get(stage)
            if entry is not None and entry.get("status") == "running":
                entry["status"] = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
                entry["stopped"] = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} ({type(error).__name__})"
                self._write()

    def reopen(self, stage: str, payload: dict) -> None:
        """Mark a stage whose inputs changed as running again under ``payload``. Only ``transfer`` keeps its
        earlier seconds (its finished jobs stay and count); other stages redo all their work, and their
        seconds are the redo's."""
        entry = self.done[stage]
        seconds = entry.get("seconds") if stage == "transfer" else 0.0
        self.done[stage] = {"digest": self.digest(payload), "payload": json.loads(json.dumps(payload, default=str)),
                            "status": "running", "seconds": seconds}
        self._write()

    def tick(self, stage: str, seconds: float) -> None:
        """Record a running stage's time so far, so a killed and resumed run still reports its whole wall time."""
        with self._lock:
            if self.done.get(stage, {}).get("status") == "running":
                self.done[stage]["seconds"] = round(seconds, 1)
                self._write()


TICK_SECONDS = 30.0  # how often a running stage's time is recorded: what a killed session can lose at most


class StageClock:
    """A running stage's time so far, written to stages.json every :data:`TICK_SECONDS` from a background
    thread and once more if the stage stops with an error, so an interrupted session's time counts in the
    stage's total: pretraining and the similarity measures have no step of their own to record it at."""

    def __init__(self, book: StageBook, stage: str, before: float):
        self.book, self.stage, self.before = book, stage, before
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"medtl-{stage}-clock", daemon=True)

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def tick(self) -> None:
        self.book.tick(self.stage, self.seconds())

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            self.tick()

    def __enter__(self) -> "StageClock":
        self._thread.start()
        return self

    def __exit__(self, exc_type, *_) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is not None:  # interrupted (Ctrl-C) or failed: the time spent still counts on resume
            self.tick()


# ----------------------------------------------------------------------------- stages


def write_config(ctx: Context) -> None:
    """``config.yaml``: the config the run folder's results were made with (profile applied)."""
    (ctx.out / "config.yaml").write_text(yaml.safe_dump(ctx.config.model_dump(mode="json"), sort_keys=False))


def stage_prepare(ctx: Context) -> dict:
    cfg = ctx.config
    read = _read_target_images(ctx)  # before the folder records its manifests: fixing one then starts afresh
    write_config(ctx)
    env = {
        "medtl": medtl.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": __import__("monai").__version__,
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "profile": ctx.profile or "default",
        "data_root": str(Path(ctx.data_root).resolve()),
        "manifests": {key: str(ctx.manifest_path(spec, key)) for key, spec in (("source", cfg.source), ("target", cfg.target))},
        "manifest_sha256": manifest_hashes(ctx),
        # the command as given (medtl results prints it): config file and output folder
        # resolved: a later --redo or `medtl results` from another folder must still name the same files
        "config_path": str(Path(ctx.config_path).resolve()), "out": str(Path(ctx.out).resolve()),
    }
    (ctx.out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    return {"target_images_read": read}


def _read_target_images(ctx: Context) -> int:
    """Read every target image once, as the run will: a broken one failed the run only at the transfer stage,
    after hours of pretraining. The source's are read by the pretraining, its first heavy step."""
    from medtl.data.check import read_row
    from medtl.pipeline.checks import listed

    cfg = ctx.config
    rows = {r.path: r for task in cfg.tasks for r in ctx.load(cfg.target, "target", task).rows}  # as the jobs take them
    m = ctx.manifest(cfg.target, "target")
    volumes = Preset(modality_of(m, cfg.target)).spatial_dims == 3
    bad = []
    for r in bar(list(rows.values()), desc="prepare: reading the target images", unit="image", leave=False,
                 enabled=ctx.progress):
        try:
            read_row(r, ctx.data_root, volumes)
        except MedtlError as err:
            bad.append(f"{r.path}: {err.reason}")
    if bad:
        raise MedtlError(f"{len(bad)} of {len(rows)} target image(s) cannot be read; repair them or remove their rows "
                         f"(medtl manifest check lists them too):\n  {listed(bad)}", f"{m.source} (target manifest)")
    return len(rows)


def _record_command(ctx: Context) -> None:
    """environment.json's config file and output folder: the command that reproduces the folder as it is."""
    path = ctx.out / "environment.json"
    if path.exists():
        env = json.loads(path.read_text())
        env.update(config_path=str(Path(ctx.config_path).resolve()), out=str(Path(ctx.out).resolve()),
                   profile=ctx.profile or "default",
                   data_root=str(Path(ctx.data_root).resolve()))
        path.write_text(json.dumps(env, indent=2) + "\n")


def manifest_hashes(ctx: Context) -> dict[str, str]:
    """The SHA-256 of the source and target manifest files: a run folder's splits are tied to them."""
    from medtl.paths import file_sha256

    cfg = ctx.config
    return {key: file_sha256(ctx.manifest_path(spec, key)) for key, spec in (("source", cfg.source), ("target", cfg.target))}


def check_manifests_unchanged(ctx: Context) -> None:
    """Refuse to go on in a run folder whose manifests were edited since it was made: finished jobs
    trained and scored on the old splits, new ones would use the new (folders from before the hashes
    were recorded cannot be checked)."""
    path = ctx.out / "environment.json"
    recorded = json.loads(path.read_text()).get("manifest_sha256") if path.exists() else None
    if not recorded:
        return
    now = manifest_hashes(ctx)
    changed = [k for k in recorded if k in now and recorded[k] != now[k]]
    if changed:
        cfg = ctx.config
        files = ", ".join(str(ctx.manifest_path(getattr(cfg, k), k)) for k in changed)
        reuse = ""
        if "source" not in changed and (ctx.out / "pretrain" / "model.pt").exists():  # often the hours of a run
            reuse = (f". Its pretraining read only the unchanged source: set pretrain.checkpoint: "
                     f"{(ctx.out / 'pretrain' / 'model.pt').resolve()} in the config to reuse it in the new --out")
        raise MedtlError(f"the {' and '.join(changed)} manifest changed since this run folder was made ({files}); "
                         "its finished jobs used the old splits and new ones would use the new: use a new --out"
                         + reuse, path)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _copy_checkpoint(ctx: Context, given: str, key: str, target: Path) -> Path:
    """A checkpoint the config gives (relative to the config file) copied into the run folder, as if trained
    there; the source path it came from is returned."""
    src = Path(given)
    src = src if src.is_absolute() else (ctx.base / src).resolve()
    if not src.exists():
        raise MedtlError("pretrained checkpoint not found", f"{ctx.config_path}: {key}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    return src


def stage_pretrain(ctx: Context) -> dict:
    cfg, out = ctx.config, ctx.out / "pretrain"
    if cfg.pretrain.checkpoint:
        src = _copy_checkpoint(ctx, cfg.pretrain.checkpoint, "pretrain.checkpoint", out / "model.pt")
        record = {"checkpoint": str(out / "model.pt"), "copied_from": str(src)}
    else:
        m = ctx.load(cfg.source, "source")
        modality = modality_of(m, cfg.source)
        size = cfg.source.image_size or 128
        result = pretrain(
            m, ctx.data_root, out, mode=cfg.pretrain.mode, preset=modality, image_size=size, arch=cfg.encoder.arch,
            stem_stride=cfg.encoder.stem_stride, epochs=cfg.pretrain.epochs, batch_size=cfg.pretrain.batch_size,
            lr=cfg.pretrain.lr, kl_weight=cfg.pretrain.kl_weight, seed=cfg.seeds[0],
            num_workers=cfg.train.num_workers, device=cfg.train.device, ssl_hparams=cfg.pretrain.hparams,
            progress=ctx.progress,
        )
        record = {"checkpoint": str(result.path), "metrics": result.metrics}
    if cfg.sources:  # pretrained here whether the default encoder was trained or copied
        record["sources"] = {name: str(pretrain_source(ctx, name)) for name in cfg.sources}
    return record


def pretrain_source(ctx: Context, name: str) -> Path:
    """Self-supervised pretraining of ``sources.<name>`` on its manifests' rows (resumable, like the default)."""
    cfg, src = ctx.config, ctx.config.sources[name]
    if src.pretrain.checkpoint:  # given, as the default encoder's may be: copied, not trained
        _copy_checkpoint(ctx, src.pretrain.checkpoint, f"sources.{name}.pretrain.checkpoint",
                         source_checkpoint(ctx, name))
        return source_checkpoint(ctx, name)
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
    if any(r.modality == "mri3d" for m in parts for r in m):  # volumes: the target's grid unless given
        size = list(src.volume_shape or cfg.target.volume_shape or PRESET_DEFAULTS["mri3d"]["volume_shape"])
        spacing = src.spacing or cfg.target.spacing
    else:
        size, spacing = src.image_size or cfg.target.image_size or 128, None
    p = src.pretrain
    result = pretrain(parts, ctx.data_root, source_checkpoint(ctx, name).parent, mode=p.mode, image_size=size,
                      spacing=spacing, arch=cfg.encoder.arch, stem_stride=cfg.encoder.stem_stride, epochs=p.epochs,
                      batch_size=p.batch_size, lr=p.lr, seed=cfg.seeds[0], num_workers=cfg.train.num_workers,
                      device=cfg.train.device, amp=cfg.train.amp, ssl_hparams=p.hparams, progress=ctx.progress)
    return result.path


def stage_similarity(ctx: Context) -> dict:
    """What ``medtl similarity`` measures (the same sample, sizes and encoder) for the pretrained and a
    random encoder, and what ``medtl recommend`` ranks from it (the same weights and strategy priors)."""
    cfg, out = ctx.config, ctx.out / "similarity"
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.md"), out / "features.npz"]:  # a --redo must not leave an earlier run's measures
        stale.unlink(missing_ok=True)
    task = cfg.tasks[0]
    source = ctx.load(cfg.source, "source")
    target = ctx.load(cfg.target, "target", task)
    # the encoders the strategies start from: a random one and an unused one would be measured for nothing
    used = {_encoder_name(spec) for spec in cfg.strategies}
    encoders = {name: source_checkpoint(ctx, None if name == "pretrained" else name)
                for name in ("pretrained", *cfg.sources) if name in used}
    source_dims = Preset(modality_of(source, cfg.source)).spatial_dims
    counts = [(len(m.select(split="train")), name) for m, name in ((source, "source"), (target, "target"))]
    log.info("similarity: %s training images measured (similarity.max_images: %d)",
             " and ".join(f"{min(n, cfg.similarity.max_images)} of {n} {name}" for n, name in counts),
             cfg.similarity.max_images)
    results, feats = _measure(ctx, source, target, task, encoders, source_dims, out)
    if feats:  # the embedding figure's features
        shown = "pretrained" if "pretrained" in feats else next(iter(feats))
        src_f, tgt_f = feats[shown]["source"], feats[shown]["target"]
        np.savez_compressed(out / "features.npz", features=np.concatenate([src_f, tgt_f]),
                            domain=np.array(["source"] * len(src_f) + ["target"] * len(tgt_f)))
    n_labelled = 0 if cfg.unlabelled_target else len(target.select(split="train"))
    # one measured encoder gives every candidate that uses it the same measurements on any half of the images,
    # so the halves cannot reorder the candidates: measuring them again would only cost time
    resamples = []
    if len(feats) > 1:
        # a measure the recommendation leaves unranked (Frechet, in each encoder's own units, when the candidates
        # use several encoders) is not worth measuring again on each half: it was most of the resamples' time
        ranked = _ranking(ctx, results, n_labelled)["weights"]
        resamples = resampled_scores(feats, skip=tuple(m for m in SKIPPABLE if m not in ranked), progress=ctx.progress)
    (out / RESAMPLES).write_text(json.dumps(plain(resamples, "similarity"), indent=1) + "\n")
    record = _ranking(ctx, results, n_labelled, resamples)
    lifts_of: dict[str, set] = {}  # each measured 2D encoder's lifts: its measurements stand for every one
    for spec in cfg.strategies:
        lift = spec.lift or cfg.encoder.lift
        if lift not in (None, "none") and _encoder_name(spec) in results:
            lifts_of.setdefault(_encoder_name(spec), set()).add(lift)
    for enc_name, lifts in lifts_of.items():
        if len(lifts) > 1:
            record["explanation"] += (f" The options lifted from {enc_name} ({', '.join(sorted(lifts))}) share its "
                                      "measurements, made reading the volumes through the 2.5D lift: nothing "
                                      "measured tells the lifts apart.")
    (out / "similarity.json").write_text(json.dumps(plain(results, "similarity"), indent=2) + "\n")
    (out / "recommendation.json").write_text(json.dumps(record, indent=2) + "\n")
    print(record["explanation"])
    return {"recommended": record["recommended"]}


def _measure(ctx: Context, source: Manifest, target: Manifest, task, encoders: dict, source_dims: int,
             out: Path) -> tuple[dict, dict]:
    """Each encoder's similarity results (written as ``<encoder>.md``) and features."""
    cfg = ctx.config
    results, feats = {}, {}
    for enc_name, checkpoint in encoders.items():
        dims = int(encoder_config(checkpoint).get("spatial_dims", 2)) if checkpoint is not None else 2
        if dims == 3 and source_dims == 2:
            # e.g. MoCo on the target's volumes: a 3D encoder cannot read 2D source images (a 2D one reads
            # volumes through its 2.5D lift), so there are no source-target distances for it to give; the
            # recommendation counts each as the middle rank for its strategies
            (out / f"{enc_name}.md").write_text(f"Not measured: {enc_name} is a {dims}D "
                                                f"encoder and the source images are {source_dims}D.\n")
            continue
        result = compare_manifests(
            source, target, ctx.data_root, checkpoint, split="train", max_cases=cfg.similarity.max_images, seed=0,
            arch=cfg.encoder.arch, stem_stride=cfg.encoder.stem_stride, progress=ctx.progress, return_features=True,
            target_labels=task.kind == "classification" and not cfg.unlabelled_target)
        feats[enc_name] = result.pop("features")
        results[enc_name] = result
        (out / f"{enc_name}.md").write_text(to_table(result, markdown=True) + "\n")
    return results, feats


REDOABLE = ("similarity", "report")  # stages `medtl run --redo` runs again: nothing they redo is training
RESAMPLES = "resamples.json"  # the similarity stage's measures on random halves of the images, per encoder


SKIPPABLE = ("frechet",)  # measures the resamples leave out when the recommendation does not rank them


def _ranking(ctx: Context, results: dict, n_labelled: int, resamples: list[dict] | None = None) -> dict:
    """The recommendation over the config's strategies from the similarity results per encoder, for a target
    with ``n_labelled`` labelled training cases (the strategies' priors depend on it); with ``resamples``
    (the measures on random halves of the images), how stable its pick is."""
    cfg = ctx.config

    def why_not(enc_name: str) -> str:  # a 3D encoder beside 2D source images: _measure wrote why, read once
        why = ctx.out / "similarity" / f"{enc_name}.md"
        return why.read_text().strip().removeprefix("Not measured: ").rstrip(".") if why.exists() else "not measured"

    unmeasured = {name: why_not(name) for name in {_encoder_name(s) for s in cfg.strategies} - {RANDOM_INIT}
                  if name not in results}

    def candidates(scores_of: dict) -> list[dict]:
        out = []
        for spec in cfg.strategies:
            enc_name = _encoder_name(spec)
            c = {"source": spec.source or Path(cfg.source.manifest).stem, "encoder": enc_name,
                 "strategy": spec.display, "method": spec.name}
            if enc_name == RANDOM_INIT:  # it uses nothing of the source: no source-target measurement speaks for it
                c.update(scores={}, unmeasured="trains from random weights, using nothing of the source")
            elif enc_name in unmeasured:
                c.update(scores={}, unmeasured=unmeasured[enc_name])
            else:
                c["scores"] = dict(scores_of.get(enc_name, {}))
            out.append(c)
        return out

    target = {"n_labelled": n_labelled, "shared_labels": not heterogeneous(ctx)}
    if cfg.unlabelled_target:  # every job trains on the labelled source: a plain fine-tune is the source-only baseline
        target["trains_on_source"] = True
    measured = {name: flat_scores(r) for name, r in results.items()}
    return recommend(target, candidates(measured), resampled=[candidates(r) for r in resamples or []] or None)


RANDOM_INIT = "random_init"  # the similarity stage's name for an untrained encoder


def _encoder_name(spec: StrategySpec) -> str:
    """The similarity stage's name for the encoder a strategy starts from."""
    if not spec.pretrained or not get_strategy(spec.name).uses_pretrained:
        return RANDOM_INIT
    return spec.source or "pretrained"


def stage_transfer(ctx: Context) -> dict:
    cfg = ctx.config
    budgets = {task.name: label_budgets(ctx, task) for task in cfg.tasks}
    jobs = [(task, budget, seed, spec) for task in cfg.tasks for budget in budgets[task.name]
            for seed in cfg.seeds_at(budget.fraction) for spec in cfg.strategies]
    def folder(task, budget, seed, spec) -> Path:
        return ctx.out / "transfer" / task.name / budget.name / spec.display / f"seed{seed}"

    todo = [job for job in jobs if not RunFolder(folder(*job)).predictions.exists()]
    done = len(jobs) - len(todo)
    print(f"[transfer] {len(jobs)} jobs ({len(cfg.strategies)} strategies x {len(cfg.tasks)} task(s) x their "
          f"budgets and seeds): {done} already done, {len(todo)} to run")
    # the bar starts at the finished jobs and names the running one (in a log file too)
    with bar(total=len(jobs), initial=done, desc="transfer", unit="job", enabled=ctx.progress) as jobs_bar:
        for task, budget, seed, spec in todo:
            jobs_bar.set_postfix_str(f"{task.name} {budget.name} {spec.display} seed {seed}")
            run_job(ctx, task, budget, seed, spec, folder(task, budget, seed, spec))
            ctx.tick()
            jobs_bar.update()
    for task in cfg.tasks:  # regression tables carry the trivial baseline (seconds: no model)
        if task.kind != "regression":
            continue
        for budget in budgets[task.name]:
            for seed in cfg.seeds_at(budget.fraction):
                job_dir = ctx.out / "transfer" / task.name / budget.name / TRAINING_MEAN / f"seed{seed}"
                if not RunFolder(job_dir).predictions.exists():
                    run_training_mean(ctx, task, budget, seed, job_dir)
    return {"jobs": len(jobs), "already_done": done}


def stage_report(ctx: Context) -> dict:
    out = ctx.out
    tables = RunFolder.predictions_under(out / "transfer")
    if not tables:
        raise MedtlError("no predictions to report", out / "transfer")
    preds = pd.concat([pd.read_csv(p, dtype={"case_id": str, "patient_id": str}) for p in tables], ignore_index=True)
    # near-copies of one image (the manifest's groups) are one bootstrap unit, like the images of one patient
    groups = {r.path: r.extras.get(NEAR_COPY_GROUP) or None for r in ctx.manifest(ctx.config.target, "target")}
    if any(groups.values()):
        preds[NEAR_COPY_GROUP] = preds["case_id"].map(groups)
    preds.to_csv(out / "predictions.csv", index=False)
    logs = []
    for p in RunFolder.logs_under(out / "transfer"):
        task, budget, strategy, seed = p.parent.relative_to(out / "transfer").parts  # the job's folder
        run_id = f"{task}/{strategy}/{budget}/{seed}"  # as predictions.csv and report.json name the run
        for record in RunFolder.read_log_file(p):
            logs.append({**record, "run_id": run_id, "strategy": strategy})
    log_path = None
    if logs:
        log_path = out / "metrics_log.csv"
        pd.DataFrame(logs).to_csv(log_path, index=False)
    settings = EvalSettings(n_boot=ctx.config.evaluation.bootstrap, threshold_rule=ctx.config.evaluation.threshold_rule)
    report = Report.from_dict(evaluate_predictions(out / "predictions.csv", settings))  # the path: its source
    rec_path = out / "similarity" / "recommendation.json"
    if rec_path.exists():
        report.recommendation = _recommendation_vs_outcomes(ctx, report, json.loads(rec_path.read_text()))
    if ctx.config.unlabelled_target:
        from medtl.adapt.selection import SELECTORS

        selector = ctx.config.train.selector
        what = "the source validation loss" if selector == "source_loss" else SELECTORS[selector][3]
        report.notes.append(
            "Unsupervised adaptation: training saw no target label; each run's checkpoint was selected by the "
            f"selector `{selector}` ({what}; the validation curves are the source's). Target labels were "
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



def _recommendation_vs_outcomes(ctx: Context, report: Report, record: dict) -> Recommendation | None:
    """The similarity stage's ranking, made again for each label budget of the first task (a strategy's
    prior depends on how many labels a job has), beside the test metric the runs observed at that budget."""
    cfg, sim_path = ctx.config, ctx.out / "similarity" / "similarity.json"
    results = json.loads(sim_path.read_text()) if sim_path.exists() else {}
    resamples_path = sim_path.with_name(RESAMPLES)  # folders from before it was measured have none
    resamples = json.loads(resamples_path.read_text()) if resamples_path.exists() else None
    task = cfg.tasks[0]
    train_rows = ctx.load(cfg.target, "target", task).select(split="train").rows
    by_budget = []
    for budget in sorted(label_budgets(ctx, task), key=lambda b: b.fraction):
        outcomes = _outcomes(report, cfg, budget.fraction)
        if not outcomes:
            continue
        n = 0 if cfg.unlabelled_target else len(labelled_rows(train_rows, budget, cfg.seeds[0], task))
        # ranked again for this budget's count (an empty similarity.json too: nothing measured, priors only)
        ranked = _ranking(ctx, results, n, resamples) if sim_path.exists() else record
        by_key = {r["key"]: outcomes.get(r["strategy"]) for r in ranked["ranking"]}
        comparison = compare_outcome(ranked, {k: v for k, v in by_key.items() if v is not None})
        by_budget.append({**comparison, "label_fraction": budget.fraction, "n_labelled": n, "tie": ranked.get("tie") or [],
                          "support": (ranked.get("stability") or {}).get("support"),
                          "prior_only": bool(ranked.get("prior_only")),
                          "ranking": [{"key": r["key"], "composite": r["composite"]} for r in ranked["ranking"]]})
    if not by_budget:
        return None
    last = by_budget[-1]  # the largest budget
    for o in by_budget:
        pick = "tie between " + ", ".join(o["tie"]) if o["tie"] else o["recommended"]
        report.notes.append(
            f"Recommendation with {o['n_labelled']} labelled cases (label fraction {o['label_fraction']:.3g}; "
            f"candidates named source/encoder/strategy): {pick}. "
            f"Best observed ({_outcome_metric(cfg)} on the first task, mean over seeds): {o['best_observed']}; "
            f"top pick was best: {_picked(o)}; regret {_rounded(o['regret'])}.")
    return Recommendation(explanation=record["explanation"], outcome=last, by_budget=by_budget)


def _picked(o: dict) -> str:
    if o["top1_is_best"] is not None:
        return "yes" if o["top1_is_best"] else "no"
    return "no pick (the ranking is a tie)" if o["tie"] else "nothing to pick (every outcome equal)"


def _outcomes(report: Report, cfg: PipelineConfig, fraction: float) -> dict[str, float]:
    """Mean test metric per strategy for the first task at label fraction ``fraction`` (higher = better)."""
    task = report.tasks.get(cfg.tasks[0].name)
    metric = _outcome_metric(cfg)
    found: dict[str, float] = {}
    for name, strategy in (task.strategies if task else {}).items():
        for entry in strategy.entries():
            if entry.label_fraction is not None and not np.isclose(entry.label_fraction, fraction):
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


def _same_payload(stored: Any, minimal: dict, full: dict | None) -> bool:
    """A recorded payload equals this config's (``minimal``: values off their defaults), also when it was
    recorded in the older form with every value (compared with ``full``, see :func:`_same_but_new_defaults`)."""
    return StageBook.digest(stored) == StageBook.digest(minimal) or (
        full is not None and _same_but_new_defaults(stored, full, minimal))


# Config lists a finished study may extend: their new items add jobs and change none that ran.
GROWABLE = ("strategies", "seeds", "label_fractions")


def _grown(stored: dict, minimal: dict, full: dict) -> bool:
    """The new payload (``minimal``: values off their defaults; ``full``: every value) equals the ``stored``
    one (recorded in either form) except for :data:`GROWABLE` lists that kept every stored item and gained
    at least one. A list left at its default is recorded as None and stands for the default's items."""
    if not any(k in stored or k in minimal for k in GROWABLE):
        return False
    def trimmed(payload: dict) -> dict:
        return {k: v for k, v in payload.items() if k not in GROWABLE}

    if not _same_payload(trimmed(stored), trimmed(minimal), trimmed(full)):
        return False
    gained = False
    for key in GROWABLE:
        if key not in stored and key not in full:
            continue  # not part of this stage's payload
        new_full = full.get(key) or []
        new_min = minimal.get(key) if isinstance(minimal.get(key), list) else [None] * len(new_full)
        old = stored.get(key) if stored.get(key) is not None else _default_items(key)
        if any(not any(_same_but_new_defaults(o, f, m) for f, m in zip(new_full, new_min)) for o in old):
            return False  # an item was removed (or changed): results of jobs no longer asked for would mix in
        gained = gained or len(new_full) > len(old)
    return gained


def _default_items(key: str) -> list:
    """A growable list's default items, in JSON form (what a full payload records)."""
    field = PipelineConfig.model_fields[key]
    if field.is_required():
        return []
    return json.loads(json.dumps(field.get_default(call_default_factory=True), default=str))


def _payloads(cfg: PipelineConfig, data_root: Path, with_defaults: bool = False) -> dict[str, dict]:
    # Only values that differ from the defaults: a field added to the config later (with a default) leaves a
    # finished run's stages valid, so a run folder resumes and --redo report works after upgrading medtl.
    # (with_defaults: the earlier form, every value, still accepted when reading older run folders.)
    c = cfg.model_dump(mode="json", exclude_defaults=not with_defaults)
    return {
        "prepare": {"source": c.get("source"), "target": c.get("target"), "data_root": str(data_root)},
        "pretrain": {"source": c.get("source"), "pretrain": c.get("pretrain"), "encoder": c.get("encoder"),
                     "seed": cfg.seeds[0], **({"sources": c["sources"]} if c.get("sources") else {})},
        # the first task, in the same form (a task list left at its default is absent from ``c``)
        "similarity": {"target": c.get("target"),
                       "tasks": [cfg.tasks[0].model_dump(mode="json", exclude_defaults=not with_defaults)],
                       "similarity": c.get("similarity"),
                       "strategies": c.get("strategies")},
        "transfer": {**{k: c.get(k) for k in ("target", "tasks", "encoder", "train", "strategies", "label_fractions",
                                              "seeds", "unlabelled_target")},
                     **{k: c[k] for k in ("seeds_per_fraction", "label_counts") if c.get(k)}},
        "report": {"evaluation": c.get("evaluation")},
    }


def run_pipeline(config_path: str | Path, data_root: str | Path, out: str | Path, profile: str | None = None,
                 stages: tuple[str, ...] = STAGES, redo: tuple[str, ...] = (), progress: bool = True) -> Path:
    """Run (or resume) a pipeline; returns the path of its HTML report.

    Everything cheap is checked first (config, data root, output folder, manifests and files, strategy
    names): a refused run writes nothing. ``redo``: stages to run again though complete (:data:`REDOABLE`:
    ``report`` renders the report again from the finished predictions after upgrading medtl, say;
    ``similarity`` measures again, and the report follows); no training stage is
    touched. ``progress``: one bar per long stage (pretrain, similarity, transfer); False shows none.
    """
    require_single_process("medtl run")
    started_run = time.perf_counter()
    config_path = Path(config_path).resolve()
    config = load_pipeline(config_path, profile)
    data_root, out = Path(data_root).resolve(), Path(out)
    if not data_root.is_dir():
        raise MedtlError("data root is not a folder (pass --data-root DIR or set MEDTL_DATA_ROOT)", data_root)
    ctx = Context(config, config_path, data_root, out, profile)
    ctx.progress = progress
    check_before_run(ctx)
    check_manifests_unchanged(ctx)
    lock = OutputLock(out, "medtl run").acquire()  # two runs in one folder would overwrite each other's jobs
    try:
        book = StageBook(out, profile)
        payloads, legacy = _payloads(config, data_root), _payloads(config, data_root, with_defaults=True)
        transfer_jobs._INNER_BARS = progress  # the per-epoch bars inside each job
        with logs_above_bars():  # log lines print above the stage's bar, and the weights-loaded line once
            # every stage is checked before any runs, so a refused config changes nothing in the folder
            selected = [st for st in STAGES if st in stages and (st != "similarity" or config.similarity.enabled)]
            bad = sorted(set(redo) - set(REDOABLE))
            if bad:
                raise MedtlError(f"cannot redo {', '.join(bad)}: only {', '.join(REDOABLE)} (training stages resume)",
                                 "--redo")
            # a redone stage runs under the config's settings, changed or not (the report's evaluation settings)
            needs = {st: "grown" if st in redo and st in book.done
                     else book.check(st, payloads[st], legacy[st]) for st in selected}
            if "grown" in needs.values():
                write_config(ctx)  # the folder's config.yaml describes the grown study
                _record_command(ctx)  # and the command that grew it is the one that makes it now
            upstream_ran = False  # a stage reads what the ones before it wrote: once one runs, the rest follow
            for stage in selected:
                payload = payloads[stage]
                if needs[stage] == "done" and stage not in redo:
                    if not upstream_ran:
                        print(f"[{stage}] already complete: skipped")
                        continue
                if needs[stage] == "grown" or (needs[stage] == "done" and upstream_ran):
                    book.reopen(stage, payload)
                upstream_ran = True
                before = book.start(stage, payload)
                print(f"[{stage}] running" + (f" (resumed; {format_seconds(before)} spent before)" if before else ""))
                try:
                    with StageClock(book, stage, before) as clock:
                        ctx.tick = clock.tick  # transfer also records it after each job
                        info = STAGE_FUNCS[stage](ctx)
                except BaseException as err:
                    book.stop(stage, err)
                    raise
                book.finish(stage, payload, seconds=round(clock.seconds(), 1), **plain(info, stage))
                print(f"[{stage}] done in {format_seconds(clock.seconds() - before)}")
    finally:
        transfer_jobs._INNER_BARS = True
        lock.release()
    html = out / "report.html"
    print(f"report: {html}")
    print(f"medtl run finished in {format_seconds(time.perf_counter() - started_run)}")
    return html
