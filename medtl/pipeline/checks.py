"""The cheap checks of a pipeline run, made before ``medtl run`` writes or trains anything."""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path

from medtl.data.check import label_warnings, outside_or_missing, wrong_root_hint
from medtl.data.manifest import Manifest, is_number
from medtl.data.transforms import Preset
from medtl.engine.trainer import resolve_device
from medtl.errors import MedtlError, unknown
from medtl.lock import LOCK
from medtl.models.checkpoint import encoder_config
from medtl.models.encoders import check_arch
from medtl.pipeline.config import DataSpec, TaskSpec
from medtl.pipeline.context import Context, apply_task, heterogeneous, modality_of
from medtl.pipeline.jobs import label_budgets, labelled_rows
from medtl.strategies.registry import get_strategy

log = logging.getLogger(__name__)


def check_before_run(ctx: Context) -> None:
    """Every cheap check of a run, made before anything is written or trained: the output folder, the
    manifests and their files, strategy names and hyper-parameters, task columns, label sets and lifts."""
    cfg, where = ctx.config, ctx.config_path
    if ctx.out.exists() and not ctx.out.is_dir():
        raise MedtlError("--out must be a folder (the run folder), not a file", ctx.out)
    others = [p for p in ctx.out.iterdir() if p.name != LOCK] if ctx.out.is_dir() else []
    if others and not (ctx.out / "stages.json").exists():  # a lock alone: a run stopped before its first stage
        raise MedtlError("--out is a folder with other files and no stages.json (not a medtl run folder): "
                         "choose a new or empty folder", ctx.out)
    for i, spec in enumerate(cfg.strategies):  # their names were checked when the config loaded
        get_strategy(spec.name).check_hparams(spec.hparams, f"{where}: strategies[{i}].hparams")
    pretrains = [("pretrain", cfg.pretrain)] + [(f"sources.{n}.pretrain", src.pretrain) for n, src in cfg.sources.items()]
    for key, spec in pretrains:  # self-supervised pretraining's hyper-parameters, before hours of it
        if spec.hparams and spec.mode == "moco":
            from medtl.strategies.ssl import MoCoStrategy

            MoCoStrategy.check_hparams(spec.hparams, f"{where}: {key}.hparams")
    for field, check in (("train.device", lambda: resolve_device(cfg.train.device)),
                         ("encoder.arch", lambda: check_arch(cfg.encoder.arch))):
        try:
            check()
        except MedtlError as err:
            raise MedtlError(err.reason, f"{where}: {field}") from None
    if cfg.pretrain.checkpoint:
        src = Path(cfg.pretrain.checkpoint)
        path = src if src.is_absolute() else ctx.base / src
        if not path.exists():
            raise MedtlError(f"pretrained checkpoint {src} not found", f"{where}: pretrain.checkpoint")
        # the pretrained jobs build what the checkpoint records, the scratch jobs what encoder says: one network
        recorded = encoder_config(path)
        for key in ("arch", "stem_stride"):
            mine, theirs = getattr(cfg.encoder, key), recorded.get(key)
            if theirs is not None and str(theirs) != str(mine):
                raise MedtlError(f"{key} {mine} differs from the checkpoint's {theirs} ({src}): set encoder.{key}: "
                                 f"{theirs}, so the pretrained and the scratch strategies train one network",
                                 f"{where}: encoder.{key}")
    missing, total, recorded = [], 0, {}
    for key, spec in (("source", cfg.source), ("target", cfg.target)):
        m = ctx.manifest(spec, key)
        total += len(m)
        outside, absent = outside_or_missing(m, ctx.data_root)
        if outside:  # not "missing": the file may be there, but medtl reads nothing outside the data root
            raise MedtlError(f"{len(outside)} of {len(m)} row(s) name a file outside the data root "
                             f"{ctx.data_root.resolve()} (links must point inside it too):\n  {listed(outside)}",
                             f"{m.source} ({key} manifest)")
        missing += [f"{Path(str(m.source)).name} {line}" for line in absent]
        recorded[f"{m.name} ({key})"] = (m.recorded_root, len(absent), len(m))
    # manifests built the documented way, each under its own folder, with most of their files missing here: a
    # pipeline reads them all under one root, which the message names
    elsewhere = {k: r for k, (r, n_absent, n) in recorded.items()
                 if r is not None and r != ctx.data_root.resolve() and wrong_root_hint(n_absent, n, ctx.data_root)}
    if elsewhere:
        roots = {r for r, _, _ in recorded.values()}
        remedy = (f"pass --data-root {next(iter(roots))}" if len(roots) == 1
                  else "build the manifests under one folder that holds all their images (medtl manifest build "
                  "--data-root FOLDER ...), so their paths are relative to it")
        raise MedtlError(f"{len(missing)} of {total} files are missing under the data root "
                         f"{ctx.data_root}; the manifests were built under their own data roots ("
                         + "; ".join(f"{k}: {r}" for k, (r, _, _) in recorded.items() if r is not None)
                         + "), and a pipeline reads every manifest under one data root: " + remedy,
                         f"{where}: data root")
    hint = wrong_root_hint(len(missing), total, ctx.data_root)
    if hint:
        raise MedtlError(hint, f"{where}: data root")
    if missing:
        raise MedtlError(f"{len(missing)} file(s) named by the manifests are missing under the data root:\n  "
                         f"{listed(missing)}", ctx.data_root)
    if cfg.unlabelled_target and not any(r.split == "val" for r in ctx.manifest(cfg.source, "source")):
        raise MedtlError("unsupervised adaptation chooses each job's checkpoint on the source's validation split "
                         "(no target label may), and this source manifest has no val rows: give it a val split",
                         f"{where}: source.manifest")
    target = ctx.manifest(cfg.target, "target")
    for i, task in enumerate(cfg.tasks):
        if task.label_column != "label" and target.rows and task.label_column not in target.rows[0].extras:
            columns = ["label", *target.rows[0].extras]
            raise unknown("label column", task.label_column, columns, f"{where}: tasks[{i}].label_column",
                          of=" in the target manifest", listed="columns")
    for i, task in enumerate(cfg.tasks):  # refused now, not at the transfer stage after pretraining
        if task.kind == "regression":
            _require_numeric(apply_task(target, task), task, f"{where}: tasks[{i}].kind")
    source = ctx.manifest(cfg.source, "source")
    for i, task in enumerate(cfg.tasks):  # a task's label_map renames the classes of the source and the target
        if task.label_map:
            values = {r.label if task.label_column == "label" else r.extras.get(task.label_column)
                      for m in (source, target) for r in m.rows}
            unused = sorted(set(task.label_map) - values)
            if unused:  # a misspelt class would silently keep its old name
                raise MedtlError(f"label_map names {', '.join(map(repr, unused))}, which neither manifest's "
                                 f"{task.label_column} column holds (they hold {', '.join(sorted(map(str, values)))})",
                                 f"{where}: tasks[{i}].label_map")
    for i, task in enumerate(cfg.tasks):  # a split with no labelled rows fails only after hours of training
        loaded = ctx.load(cfg.target, "target", task)
        for warning in label_warnings(loaded):  # as manifest check says it: before training, not in the report
            log.warning("%s (target manifest), task %r: %s", target.source, task.name, warning)
        rows = loaded.rows
        for split, labelled in (("train", False), ("test", True)):  # an adaptation target's train rows may be unlabelled
            if not any(r.split == split and (r.label != "unlabelled" or not labelled) for r in rows):
                raise MedtlError(f"the target manifest has no {'labelled ' * labelled}{split} rows for task "
                                 f"{task.name!r}: nothing to {'score' if labelled else 'train on'} (give it a {split} "
                                 "split, e.g. medtl manifest build --fractions)", f"{target.source} (target manifest)")
    _no_held_out_target_in_sources(ctx)
    heterogeneous(ctx)  # refuses a UDA task whose target labels the source lacks
    if cfg.label_counts:  # refused now, not hours later when the transfer stage starts: each count is drawn
        for task in cfg.tasks:  # once, as the jobs will (too many rows, or fewer than one per class, fails)
            train_rows = ctx.load(cfg.target, "target", task).select(split="train").rows
            for budget in label_budgets(ctx, task):
                labelled_rows(train_rows, budget, cfg.seeds[0], task)
    target_dims = Preset(modality_of(target, cfg.target)).spatial_dims
    for spec in cfg.strategies:
        if not spec.pretrained:
            continue
        lifted = (spec.lift or cfg.encoder.lift or "none") != "none"
        if lifted and target_dims == 2:  # a lift turns a 2D encoder into a 3D one: a 2D target has no use for it
            raise MedtlError(f"lift {spec.lift or cfg.encoder.lift!r} makes a 3D encoder, but the target is 2D; "
                             "remove the lift (encoder.lift or the strategy's)", f"{where}: strategies[{spec.display}]")
        dims = _encoder_dims(ctx, spec.source)
        if dims == 2 and target_dims == 3 and not lifted:
            raise MedtlError("a 3D target needs a lift (i3d, acs or 2.5d) to use the 2D pretrained encoder; set "
                             "encoder.lift or the strategy's lift, or pretrained: false for a 3D network from "
                             "scratch", f"{where}: strategies[{spec.display}]")
        if dims == 3 and (target_dims != 3 or lifted):
            raise MedtlError(f"source {spec.source!r} pretrains a 3D encoder: it fits a 3D target with lift: none",
                             f"{where}: strategies[{spec.display}]")


def _require_numeric(target: Manifest, task: TaskSpec, where: str) -> None:
    """A regression task's target values (the relabelled rows; ``unlabelled`` aside) must be numbers."""
    for line, r in enumerate(target.rows, start=2):
        if r.label != "unlabelled" and not is_number(r.label):
            raise MedtlError(f"task {task.name!r} is a regression, but the target manifest's {task.label_column} "
                             f"column holds {r.label!r} ({Path(str(target.source)).name} line {line}), not a "
                             "number: use kind: classification for class names, or a numeric label_column",
                             where)


def listed(items: list[str], shown: int = 20) -> str:
    return "\n  ".join(items[:shown]) + (f"\n  (+{len(items) - shown} more)" if len(items) > shown else "")


def _no_held_out_target_in_sources(ctx: Context) -> None:
    """No image of the target's validation or test split among the rows a named source pretrains on, by path under
    the data root: another manifest of the same collection (a subset, split apart differently) lists them under its
    own name and splits."""
    cfg = ctx.config
    held_out = {posixpath.normpath(r.path) for r in ctx.manifest(cfg.target, "target") if r.split in ("val", "test")}
    for name, src in cfg.sources.items():
        if src.pretrain.checkpoint:  # given, not pretrained here
            continue
        for i, entry in enumerate(src.data):
            rows = [r for r in ctx.manifest(DataSpec(manifest=entry.manifest), f"sources.{name}.data[{i}]")
                    if r.split in entry.splits]
            leaked = [r for r in rows if posixpath.normpath(r.path) in held_out]
            if leaked:
                raise MedtlError(f"{len(leaked)} of the {len(rows)} rows it pretrains on are images of the target's "
                                 f"validation or test split (e.g. {leaked[0].path}): they would leak into "
                                 "pretraining; choose the source's rows so that none is a held-out target image (the "
                                 "target's train split is fine)", f"{ctx.config_path}: sources.{name}.data[{i}]")


def _encoder_dims(ctx: Context, source: str | None) -> int:
    """The spatial dims of the encoder a strategy starts from: that of the images it is pretrained on (a
    copied checkpoint: what it records)."""
    cfg = ctx.config
    if source is None:
        if cfg.pretrain.checkpoint:
            path = Path(cfg.pretrain.checkpoint)
            path = path if path.is_absolute() else ctx.base / path
            return int(encoder_config(path).get("spatial_dims", 2)) if path.exists() else 2
        return Preset(modality_of(ctx.manifest(cfg.source, "source"), cfg.source)).spatial_dims
    first = cfg.sources[source].data[0]
    m = ctx.manifest(DataSpec(manifest=first.manifest), f"sources.{source}.data[0]")
    return 3 if any(r.modality == "mri3d" for r in m) else 2
