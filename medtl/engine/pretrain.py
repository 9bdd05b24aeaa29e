"""Source pretraining: supervised, the self-supervised transfer autoencoder, or MoCo v2.

``pretrain(manifest, data_root, out)`` reads the manifest's train/val splits through the data layer,
trains, and writes ``<out>/model.pt`` (medtl checkpoint, see medtl.models.checkpoint) next to the
run folder's log and training state. ``pretrain_on`` does the same from datasets you already have.

- ``mode="supervised"``: encoder + classification head (binary for two labels, else multiclass),
  full training from random (or ``init_weights``) initialisation;
- ``mode="autoencoder"``: encoder f + VAE decoder g, ``MSE(x, g(f(x))) + kl_weight * KL``; labels
  are not used, so unlabelled images can serve. The encoder part is what later transfers.
- ``mode="moco"`` (:func:`pretrain_ssl`): MoCo v2 (medtl.strategies.ssl) on the ``splits`` rows of one
  or several manifests, labels ignored, each manifest through its own modality preset and view
  augmentations (medtl.data.views); ``model.pt`` holds ``encoder.*`` (what transfers) and the projection
  ``head.*`` (dropped on transfer). There is no validation split: the contrastive loss of held-out
  images says little about transfer; the run keeps its last epoch.

Under ``torchrun`` (``torchrun --nproc_per_node=N -m medtl pretrain ...``) the trainer runs DDP and
splits every global batch of ``batch_size`` images across the N processes; only rank 0 writes the
run folder and ``model.pt`` (see docs/distributed.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtl.data.datasets import build_dataset, make_loader
from medtl.data.manifest import Manifest
from medtl.data.transforms import Preset
from medtl.data.views import views_dataset
from medtl.engine.distributed import barrier, torchrun_env
from medtl.engine.trainer import RESUMABLE_OPTIONS, TrainConfig, Trainer, TrainResult, seed_everything
from medtl.errors import MedtlError
from medtl.models.autoencoder import VAEHead
from medtl.models.checkpoint import save_checkpoint
from medtl.plain import differing_keys
from medtl.paths import file_sha256, write_text_atomic
from medtl.models.encoders import build_encoder
from medtl.models.heads import Head, task_for
from medtl.models.lift import lift as lift_encoder
from medtl.models.transfer import LIFT_OPTIONS
from medtl.models.weights import load_weights
from medtl.progress import bar

log = logging.getLogger(__name__)
PRETRAIN_KEY_FILE = "pretrain_inputs.json"


# keys a run key no longer compares: the model's name holds the output folder's name, so a run copied to
# another folder (off a full disk) was refused as "other name"
NOT_COMPARED = ("name",)
# keys compared only when the folder's key has them (runs from before they were recorded still resume)
COMPARED_WHEN_RECORDED = ("init_sha256",)


def check_resumable(out: Path, resume: bool, key: dict[str, Any], file: str) -> None:
    """Resuming continues the weights in ``out``: refuse when they were trained on other data or settings
    (more epochs are fine), instead of silently mixing two runs; ``file`` in ``out`` keeps the key."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / file
    key = json.loads(json.dumps(key, default=str))  # as it reads back: tuples as lists, paths as text
    if resume and (out / "last.pt").exists() and path.exists():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MedtlError(f"cannot read this run's settings to check a resume ({err}): start over here "
                             "(--no-resume, resume=False), or delete the file to resume unchecked", path) from None
        drop = set(NOT_COMPARED) | {k for k in COMPARED_WHEN_RECORDED if k not in old}
        differ = sorted({k.split(".")[0] for k in differing_keys({k: v for k, v in old.items() if k not in drop},
                                                                   {k: v for k, v in key.items() if k not in drop})})
        if differ:
            def shown(k: str) -> str:  # the values when short: "labels (['a', 'b'] there, ['b', 'a'] now)"
                there, now = (json.dumps(v.get(k)) for v in (old, key))
                return f"{k} ({there} there, {now} now)" if len(there) + len(now) <= 100 else k

            raise MedtlError(f"this folder holds a run with other {', '.join(shown(k) for k in differ)}; use a new "
                             "folder (--out, out=), or start over here (--no-resume, resume=False)", out)
    write_text_atomic(path, json.dumps(key, indent=2) + "\n")  # a kill mid-write keeps the previous key whole


# a query meeting a stale key of its own image among its negatives (MoCo): warned about above this share
STALE_KEY_SHARE = 0.05


def stale_key_share(n_images: int, batch_size: int, queue_size: int, world: int = 1,
                    steps_per_epoch: int | None = None) -> float:
    """The expected share of MoCo queries, once the queue has filled, whose own image has a key (from an earlier
    epoch) in the queue. Both views of each image are queued, so the queue holds keys of the last
    ``queue_size / 2`` images; a batch's own keys join it after the batch. A query in a batch that starts ``s``
    images into the epoch meets its image's earlier key when that image came in the last ``queue_size / 2 - s``
    images of the epochs before: each of an epoch's positions holds it with probability 1 / ``n_images``. The loader's
    drop-last rule (:func:`medtl.data.datasets.make_loader`) and a step limit per epoch decide the batches."""
    last = n_images % batch_size
    drop = n_images > batch_size and 0 < last < 2 * world
    sizes = [batch_size] * (n_images // batch_size) + ([last] if last and not drop else [])
    sizes = sizes[:steps_per_epoch] if steps_per_epoch else sizes
    seen = sum(sizes)
    if n_images == 0 or seen == 0:
        return 0.0
    hits, start = 0.0, 0
    for size in sizes:
        back, missed = max(0, queue_size // 2 - start), 1.0  # images of earlier epochs the queue still holds
        while back > 0:  # epoch by epoch: each of its positions is the query's image with probability 1 / n
            missed *= 1 - min(back, seen) / n_images
            back -= seen
        hits += size * (1 - missed)
        start += size
    return hits / seen


def longest_fitting_queue(n_images: int, batch_size: int, below: int, world: int = 1,
                          steps_per_epoch: int | None = None) -> int:
    """The longest even queue under ``below`` whose :func:`stale_key_share` is at most :data:`STALE_KEY_SHARE`
    (by bisection: the share only grows with the queue)."""
    low, high = 0, below // 2
    while low < high:
        mid = (low + high + 1) // 2
        if stale_key_share(n_images, batch_size, 2 * mid, world, steps_per_epoch) <= STALE_KEY_SHARE:
            low = mid
        else:
            high = mid - 1
    return 2 * low


MODES = ("supervised", "autoencoder", "moco")  # moco: contrastive self-supervised (medtl.strategies.ssl)


@dataclass
class PretrainResult:
    path: Path  # <out>/model.pt
    metrics: dict[str, Any]  # the best epoch's logged values
    train: TrainResult


def pretrain_on(
    train_dataset,
    val_dataset,
    out: str | Path,
    *,
    label_names: list[str] | None = None,
    mode: str = "supervised",
    arch: str = "resnet18",
    spatial_dims: int = 2,
    in_channels: int = 1,
    image_size: int | list[int] = 128,
    stem_stride: int = 2,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    latent_dim: int = 128,
    kl_weight: float = 1e-3,
    proj_dim: int = 128,
    proj_hidden: int = 2048,
    proj_batch_norm: bool = True,
    ssl_hparams: dict[str, Any] | None = None,
    init_weights: str | Path | None = None,
    adapt_channels: str | None = None,
    lift: str | None = None,
    seed: int = 0,
    num_workers: int = 0,
    meta: dict[str, Any] | None = None,
    resume: bool = True,
    desc: str = "pretrain",
    **train_options,
) -> PretrainResult:
    """Pretrain on datasets of ``{"image", "label"}`` dicts; ``train_options`` go to :class:`TrainConfig`;
    ``desc`` names the progress bar (``medtl train`` trains its classifier through here too). ``lift``
    (``i3d``, ``acs``, ``2.5d``): a 2D encoder (with ``init_weights`` loaded) lifted to read the volumes of a
    3D data set (``spatial_dims=3``), supervised only."""
    from medtl.strategies.autoencoder import AutoencoderStrategy
    from medtl.strategies.registry import get_strategy

    if mode not in MODES:
        raise MedtlError(f"unknown pretraining mode {mode!r}; known: {', '.join(MODES)}", "mode")
    if len(train_dataset) == 0:
        raise MedtlError("no training images (is the manifest's train split empty?)", "train")
    if mode == "moco":  # the last epoch is the model: a contrastive loss is no model-selection criterion
        train_options.setdefault("restore_best", False)
    config = TrainConfig.from_dict({"epochs": epochs, "seed": seed, **train_options})
    stride = 16 * stem_stride  # the stem, its pooling and three strided stages: the last stage's cell, in pixels
    smallest = min(image_size) if isinstance(image_size, (list, tuple)) else image_size
    if smallest < stride:
        log.warning("image size %s is smaller than the encoder's last-stage cell (%d px): its features summarise the "
                    "whole image at one point or less, so little of what a larger input shows is left; %d px or more "
                    "is the useful range", image_size, stride, 2 * stride)
    out = Path(out)
    seed_everything(seed)  # the initial weights depend on the seed alone
    if lift is not None and (mode != "supervised" or spatial_dims != 3):
        raise MedtlError(f"a lift makes a 2D encoder read volumes: supervised training on 3D data only (mode {mode!r}, "
                         f"{spatial_dims}D data)", "lift")
    encoder = build_encoder(arch, spatial_dims=2 if lift else spatial_dims, in_channels=in_channels,
                            stem_stride=stem_stride)
    if init_weights is not None:
        load_weights(encoder, init_weights, adapt_channels=adapt_channels)
    if lift is not None:  # pointed at the RAS volume's axial planes, as in the pipelines
        encoder = lift_encoder(encoder, lift, **LIFT_OPTIONS.get(lift, {}))
    if mode == "supervised":
        if not label_names or len(label_names) < 2:
            raise MedtlError(f"supervised pretraining needs at least two labels, got {label_names}", "label_names")
        head = Head(encoder.out_features, task_for(label_names), len(label_names))
        strategy = get_strategy("full")(encoder, head, {"lr": lr, "weight_decay": weight_decay})
    elif mode == "autoencoder":
        head = VAEHead(encoder.out_features, image_size, spatial_dims, in_channels, latent_dim)
        strategy = AutoencoderStrategy(encoder, head, {"lr": lr, "weight_decay": weight_decay, "kl_weight": kl_weight})
    else:  # self-supervised: a projection head, dropped on transfer
        from medtl.models.projection import ProjectionHead
        from medtl.strategies.ssl import MoCoStrategy

        head = ProjectionHead(encoder.out_features, proj_hidden, proj_dim, proj_batch_norm)
        strategy = MoCoStrategy(encoder, head, {"lr": lr, "weight_decay": weight_decay, **(ssl_hparams or {})})

    meta = {
        "image_size": image_size,
        "label_names": list(label_names) if label_names else None,
        "seed": seed,
        "mode": mode,
        "init_weights": str(init_weights) if init_weights else None,
        "hparams": strategy.hparams,
        "precision": config.amp,
        **(meta or {}),
    }
    env = torchrun_env() if config.distributed == "auto" else None
    world = env.world_size if env is not None else 1
    if env is None or env.rank == 0:  # one writer of the run's key
        # resuming continues these weights: only more (or fewer) epochs, another device or more workers
        # may differ; a run key without paths, so the same command from another folder still resumes
        run_options = {k: v for k, v in train_options.items() if k not in RESUMABLE_OPTIONS}
        check_resumable(out, resume, {
            "mode": mode, "arch": arch, "spatial_dims": spatial_dims, "in_channels": in_channels,
            "stem_stride": stem_stride, "batch_size": batch_size, "latent_dim": latent_dim, "kl_weight": kl_weight,
            "proj_dim": proj_dim, "proj_hidden": proj_hidden, "proj_batch_norm": proj_batch_norm,
            "adapt_channels": adapt_channels, "train": run_options, **({"lift": lift} if lift else {}),
            **{k: v for k, v in meta.items() if k not in ("manifest", "init_weights")},
            **({"init_sha256": file_sha256(init_weights)} if init_weights else {}),
        }, PRETRAIN_KEY_FILE)
    if batch_size < world:
        raise MedtlError(f"batch_size {batch_size} is the global batch: it must be at least the number of "
                         f"processes ({world})", "batch_size")
    if mode == "moco" and (batch_size < 2 * world or len(train_dataset) < 2):  # some batch of one image
        spread = f", split over {world} processes" if world > 1 else ""
        raise MedtlError(f"batch_size {batch_size} (the global batch{spread}) over {len(train_dataset)} training "
                         "image(s): MoCo trains its projection head's batch norm on every batch, which it cannot do "
                         f"on a single image; give at least 2 images per process (--batch-size {2 * world} or more) "
                         "and at least 2 training images", "batch_size")
    if mode == "moco" and config.epochs > 1:
        queue = int(strategy.hparams["queue_size"])
        steps = config.max_steps_per_epoch
        share = stale_key_share(len(train_dataset), batch_size, queue, world, steps)
        if share > STALE_KEY_SHARE:
            fits = longest_fitting_queue(len(train_dataset), batch_size, queue, world, steps)
            log.warning("with a MoCo queue of %d keys over %d images (batch %d), about %.0f%% of the queries (once "
                        "the queue has filled) meet a stale key of their own image (from an earlier epoch) among "
                        "their negatives; a queue_size (--queue-size) of at most %d keeps it under %.0f%%%s", queue,
                        len(train_dataset), batch_size, 100 * share, fits, 100 * STALE_KEY_SHARE,
                        "" if fits >= 2 * batch_size else " (fewer negatives than one batch's keys: more images or a "
                        "smaller batch serve better)")
    train_loader = make_loader(train_dataset, batch_size, True, seed, num_workers=num_workers, world_size=world)
    val_loader = (make_loader(val_dataset, batch_size, False, seed, num_workers=num_workers)
                  if val_dataset is not None and len(val_dataset) else None)
    # one bar over the epochs, with the losses, in place of the trainer's bar of steps per epoch
    epochs_bar = bar(total=config.epochs, desc=desc, unit="epoch",
                     enabled=config.progress and (env is None or env.rank == 0))

    def advance(record: dict[str, Any]) -> None:
        epochs_bar.n = record["epoch"] + 1  # from the epoch number: a resumed run starts part-way
        epochs_bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in ("train_loss", "val_loss")
                                and isinstance(v, float)})

    trainer = Trainer(strategy, dataclasses.replace(config, progress=False), out, callbacks=[advance],
                      checkpoint_meta=meta)
    try:
        result = trainer.fit(train_loader, val_loader, resume=resume)
    finally:
        epochs_bar.close()
    # the model is the best epoch's, or the last one's where the best is not restored (MoCo): its record with it
    kept = result.best_metrics if config.restore_best else (result.history[-1] if result.history else {})
    kept_epoch = result.best_epoch if config.restore_best else (kept.get("epoch") if kept else None)
    metrics = {k: v for k, v in kept.items() if k.startswith(("train_", "val_"))}
    path = out / "model.pt"
    if trainer.ctx.is_main:  # one writer; the other ranks hold the same weights
        if mode == "supervised" and len(label_names) == 2 and val_loader is not None:
            meta.update(_validation_threshold(strategy, val_loader, trainer))
        save_checkpoint(path, strategy, **{**meta, "metrics": metrics, "epochs": len(result.history),
                                           **({"best_epoch": kept_epoch} if config.restore_best
                                              else {"last_epoch": kept_epoch})})
        log.info("model written to %s", path)
    barrier(trainer.ctx)
    return PretrainResult(path, metrics, result)


def _validation_threshold(strategy, val_loader, trainer) -> dict[str, Any]:
    """A binary model's Youden threshold on its validation split, so medtl predict decides as evaluation would."""
    from medtl.engine.evaluate import predict
    from medtl.evaluation.thresholds import checkpoint_threshold

    out = predict(strategy, val_loader, trainer.device, trainer.amp_dtype)
    return checkpoint_threshold(out["label"].astype(int) == 1, out["prob"][:, 1], "youden")


def pretrain(
    manifest,
    data_root: str | Path,
    out: str | Path,
    *,
    mode: str = "supervised",
    preset: str | None = None,
    image_size: int | list[int] = 128,
    spacing: list[float] | tuple[float, ...] | None = None,
    cache: str = "memory",
    on_error: str = "raise",
    train_split: str = "train",
    val_split: str | None = "val",
    **options,
) -> PretrainResult:
    """Pretrain from a manifest (CSV path or Manifest); ``options`` as :func:`pretrain_on`. ``spacing``: the voxel
    size (mm) of 3D volumes (default the preset's 2 mm).

    Self-supervised modes (``moco``) take one manifest or a list, and ``splits`` (default ``["train"]``)
    in place of the train/val splits: see :func:`pretrain_ssl`."""
    if mode == "moco":
        return pretrain_ssl(manifest, data_root, out, mode=mode, image_size=image_size, spacing=spacing, cache=cache,
                            on_error=on_error, **options)
    m = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
    preset = preset or m.modality
    spatial_dims = Preset(preset).spatial_dims  # refuses an unknown preset
    if spatial_dims == 3:
        size = [int(s) for s in (image_size if isinstance(image_size, (list, tuple)) else [image_size] * 3)]
        preset_options = {"volume_shape": tuple(size), **({"spacing": tuple(float(v) for v in spacing)} if spacing else {})}
    else:
        if not isinstance(image_size, int):
            raise MedtlError(f"image_size must be one integer for 2D images, got {image_size!r}", "image_size")
        if spacing is not None:
            raise MedtlError(f"spacing is the voxel size of 3D volumes; these images are {preset} (2D)", "spacing")
        size, preset_options = image_size, {"image_size": image_size}
    train_m = m.select(split=train_split)
    val_m = m.select(split=val_split) if val_split else None
    if len(train_m) == 0:
        raise MedtlError(f"the manifest has no {train_split!r} rows", m.source)
    out = Path(out)
    common = {"cache": cache, "on_error": on_error, "run_dir": out, **preset_options}
    train_ds = build_dataset(train_m, data_root, preset, True, **common)
    val_ds = build_dataset(val_m, data_root, preset, False, **common) if val_m is not None and len(val_m) else None
    meta = {
        "intensity": {"preset": preset, **Preset(preset).resolved(preset_options)},
        "manifest_hash": m.content_hash(),
        "manifest": str(Path(m.source).resolve()) if m.source else None,  # found from any folder (--init)
        "domains": sorted({r.domain for r in train_m}),
    }
    return pretrain_on(train_ds, val_ds, out, label_names=m.label_names, mode=mode, spatial_dims=spatial_dims,
                       image_size=size, meta=meta, **options)


def pretrain_ssl(
    manifests,
    data_root: str | Path | None,
    out: str | Path,
    *,
    mode: str = "moco",
    image_size: int | list[int] = 128,
    spacing: list[float] | tuple[float, ...] | None = None,
    splits: list[str] | tuple[str, ...] | None = None,
    cache: str = "memory",
    on_error: str = "raise",
    views: dict[str, Any] | None = None,
    **options,
):
    """Pretrain on unlabelled images; ``options`` as :func:`medtl.engine.pretrain.pretrain_on`,
    ``views`` overrides entries of the view presets (medtl.data.views.VIEW_PRESETS)."""
    splits = list(splits or ["train"])
    out = Path(out)
    dataset, info = views_dataset(manifests, data_root, image_size=image_size, spacing=spacing, splits=splits, cache=cache,
                                  on_error=on_error, run_dir=out, **(views or {}))
    parts = info["parts"]
    if len(dataset) == 0:
        raise MedtlError("no readable images to pretrain on", "manifests")
    first = parts[0]
    spatial_dims = first["dims"]
    size = list(first["preset_options"].get("volume_shape") or [first["preset_options"]["image_size"]] * 2)
    h = hashlib.sha256("\n".join(p["hash"] for p in parts).encode()).hexdigest()[:16]
    meta = {
        # the deterministic chains of cxr and mri2d are the same (no CLAHE): the first manifest's preset
        # describes how every image was normalised
        "intensity": {"preset": first["modality"], **Preset(first["modality"]).resolved(first["preset_options"])},
        "manifest_hash": h,
        "manifest": first["manifest"] if len(parts) == 1 else [p["manifest"] for p in parts],
        "domains": sorted({d for p in parts for d in p["domains"]}),
        "ssl_data": [{k: p[k] for k in ("manifest", "modality", "splits", "items", "hash")} for p in parts],
    }
    options.pop("preset", None)  # each manifest uses its own modality
    options.pop("train_split", None)
    options.pop("val_split", None)
    return pretrain_on(dataset, None, out, label_names=None, mode=mode, spatial_dims=spatial_dims,
                       image_size=size if spatial_dims == 3 else size[0], meta=meta, **options)
