"""`medtl pretrain`: source pretraining (supervised, autoencoder or self-supervised MoCo v2), writing <out>/model.pt."""

from __future__ import annotations

import json
from pathlib import Path

from medtl.errors import MedtlError
from medtl.paths import default_data_root


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder on source images (e.g. chest X-rays)")
    p.add_argument("--manifest", type=Path, nargs="+", required=True,
                   help="manifest CSV (train/val splits are used); --mode moco takes several (their --splits rows)")
    p.add_argument("--data-root", type=Path, default=None, help="folder manifest paths are relative to")
    p.add_argument("--out", type=Path, required=True, help="run folder; the model is written to <out>/model.pt")
    p.add_argument("--mode", choices=["supervised", "autoencoder", "moco"], default="supervised",
                   help="supervised: classify the source labels; autoencoder: reconstruct the images (no labels); "
                        "moco: contrastive self-supervised MoCo v2 on two augmented views (no labels)")
    p.add_argument("--splits", nargs="+", choices=["train", "val", "test"], default=None,
                   help="moco: the manifests' splits to learn from (default: train; a source unrelated to the "
                        "target may use all three)")
    p.add_argument("--temperature", type=float, default=None, help="moco: InfoNCE temperature (default 0.2)")
    p.add_argument("--queue-size", type=int, default=None, help="moco: negatives kept in the queue (default 1024)")
    p.add_argument("--momentum", type=float, default=None,
                   help="moco: key-network momentum at the start, rising to 1 (default 0.9; 0.99 for long GPU runs)")
    p.add_argument("--proj-dim", type=int, default=128, help="moco: projection (embedding) size")
    p.add_argument("--arch", default="resnet18", help="resnet10/18/34/50 or densenet121")
    p.add_argument("--image-size", type=int, nargs="+", default=[128], help="side in pixels (three sizes for 3D)")
    p.add_argument("--spacing", type=float, nargs="+", default=None,
                   help="voxel size in mm of 3D volumes, one or three values (default: the 160x192x160 mm field of view "
                        "divided by --image-size: 2 mm at 80 96 80, 4 mm at 40 48 40)")
    p.add_argument("--stem-stride", type=int, default=2, help="stride of the first convolution (1 keeps small images' detail)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (split across torchrun processes)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, cosine schedule)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--latent-dim", type=int, default=128, help="autoencoder latent size")
    p.add_argument("--kl-weight", type=float, default=1e-3, help="autoencoder lambda (KL weight)")
    p.add_argument("--init-weights", type=Path, help="local weights to start from (medtl, torchvision, ...)")
    p.add_argument("--adapt-channels", choices=["sum", "mean"], help="fold RGB stem weights to one channel")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights, shuffling and augmentation")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                   help="mixed precision: auto = bf16 on CUDA, off on CPU")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower; warns where none exists)")
    p.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this value (default: no clipping)")
    p.add_argument("--patience", type=int, help="stop after this many epochs without improvement (default: never)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--cache", choices=["memory", "disk", "none"], default="memory",
                   help="where the decoded, resized images are kept between epochs: memory, disk (under <out>/cache) "
                        "or none")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="unreadable images")
    p.add_argument("--max-steps-per-epoch", type=int, help="cap the batches per epoch (default: the whole split)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over even if <out> has a run")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="show no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from medtl.engine.pretrain import pretrain

    size = args.image_size[0] if len(args.image_size) == 1 else list(args.image_size)
    spacing = args.spacing
    shape = args.image_size * 3 if len(args.image_size) == 1 else args.image_size
    if len(shape) == 3 and (spacing is not None or _volumes(args.manifest)):  # a 3D size keeps the head in view
        from medtl.data.transforms import voxel_spacing

        spacing = list(voxel_spacing(shape, spacing))  # as medtl train does
    manifest = args.manifest[0] if len(args.manifest) == 1 else list(args.manifest)
    ssl = {}
    if args.mode == "moco":
        hp = {"temperature": args.temperature, "queue_size": args.queue_size, "momentum": args.momentum}
        ssl = {"splits": args.splits, "proj_dim": args.proj_dim,
               "ssl_hparams": {k: v for k, v in hp.items() if v is not None}}
    elif len(args.manifest) > 1:
        raise MedtlError(f"--mode {args.mode} reads one manifest; several are for --mode moco", "--manifest")
    import contextlib

    from medtl.lock import OutputLock
    from medtl.runtime import torchrun_rank

    # one writer per folder; under torchrun rank 0 writes the run folder and holds it for every rank
    lock = OutputLock(args.out, "medtl pretrain") if not torchrun_rank() else contextlib.nullcontext()
    with lock:
        result = _pretrain(args, pretrain, manifest, size, spacing, ssl)
    from medtl.engine.distributed import current

    if current().is_main:  # under torchrun, one summary rather than one per process
        print(f"wrote {result.path}")
        print(json.dumps(result.metrics, indent=2, default=str))
    return 0


def _volumes(manifests: list[str]) -> bool:
    """Whether the manifests hold only 3D volumes (mri3d rows); unreadable ones are left to pretrain's errors."""
    from medtl.data.manifest import Manifest

    try:
        return all({r.modality for r in Manifest.load(m)} == {"mri3d"} for m in manifests)
    except MedtlError:
        return False


def _pretrain(args, pretrain, manifest, size, spacing, ssl):
    return pretrain(
        manifest, args.data_root or default_data_root(), args.out, mode=args.mode, image_size=size, spacing=spacing,
        cache=args.cache, on_error=args.on_error, arch=args.arch, stem_stride=args.stem_stride, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, latent_dim=args.latent_dim,
        kl_weight=args.kl_weight, init_weights=args.init_weights, adapt_channels=args.adapt_channels, seed=args.seed,
        num_workers=args.workers, resume=args.resume, device=args.device, amp=args.amp,
        deterministic=args.deterministic, grad_clip=args.grad_clip, patience=args.patience,
        max_steps_per_epoch=args.max_steps_per_epoch, progress=args.progress, **ssl,
    )
