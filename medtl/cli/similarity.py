"""`medtl similarity`: domain distances and transferability, from feature files or from images."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "similarity",
        help="how far apart two domains are (MMD, proxy A-distance, Frechet) and how transferable features are",
        description="Either give feature arrays (--source-features/--target-features), or a model "
        "checkpoint and two manifests to extract them from images.",
    )
    arrays = p.add_argument_group("from feature arrays (.npy, .npz, .csv)")
    arrays.add_argument("--source-features", type=Path)
    arrays.add_argument("--target-features", type=Path)
    arrays.add_argument("--target-labels", type=Path, help="one label per target row (for LogME / H-score / LEEP)")
    arrays.add_argument("--source-probs", type=Path, help="source model's class probabilities on the target images (LEEP)")
    images = p.add_argument_group("from images")
    images.add_argument("--checkpoint", type=Path, help="medtl model file; its encoder gives the features")
    images.add_argument("--source-manifest", type=Path)
    images.add_argument("--target-manifest", type=Path)
    images.add_argument("--data-root", type=Path, default=None)
    images.add_argument("--split", default=None, help="use only this split of each manifest (e.g. train)")
    images.add_argument("--max-cases", type=int, default=None, help="random subset per domain (seeded)")
    images.add_argument("--image-size", type=int, default=None, help="2D preset image size (default: the preset's)")
    images.add_argument("--batch-size", type=int, default=16)
    images.add_argument("--device", default="cpu")
    images.add_argument("--save-features", type=Path, help="write source/target features to this .npz")
    p.add_argument("--paired", action="store_true", help="rows are the same cases in both arrays (enables CKA)")
    p.add_argument("--permutations", type=int, default=200, help="MMD permutation-test permutations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the result as JSON")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.set_defaults(func=run)


def _from_images(args):
    import numpy as np

    from medtl.data.datasets import build_dataset
    from medtl.data.manifest import Manifest
    from medtl.errors import MedtlError
    from medtl.models import load_checkpoint
    from medtl.paths import default_data_root
    from medtl.similarity.features import extract_features

    if not (args.source_manifest and args.target_manifest):
        raise MedtlError("--checkpoint needs --source-manifest and --target-manifest", "similarity")
    model, _ = load_checkpoint(args.checkpoint, map_location=args.device)
    root = args.data_root or default_data_root()
    rng = np.random.default_rng(args.seed)
    out = {}
    for side, path in (("source", args.source_manifest), ("target", args.target_manifest)):
        manifest = Manifest.load(path)
        if args.split:
            manifest = manifest.select(split=args.split)
        if args.max_cases and len(manifest) > args.max_cases:
            keep = sorted(rng.choice(len(manifest), args.max_cases, replace=False))
            manifest = Manifest([manifest.rows[i] for i in keep], list(manifest.label_names), dict(manifest.meta),
                                manifest.source)
        if len(manifest) == 0:
            raise MedtlError("empty domain: no rows" + (f" in split {args.split!r}" if args.split else ""), path)
        options = {"image_size": args.image_size} if args.image_size else {}
        dataset = build_dataset(manifest, root, cache="none", **options)
        head = model.head if side == "target" and getattr(model.head, "task", None) in ("binary", "multiclass") else None
        out[side] = extract_features(model.encoder, dataset, head, args.batch_size, args.device)
        log.info("%s: %d cases, %d features", side, *out[side]["features"].shape)
    if args.save_features:
        labels = out["target"]["labels"]
        np.savez(args.save_features, source=out["source"]["features"], target=out["target"]["features"],
                 target_labels=labels if labels is not None else np.zeros(0))
    return out["source"]["features"], out["target"]["features"], out["target"]["labels"], out["target"]["probs"]


def run(args) -> int:
    from medtl.errors import MedtlError
    from medtl.similarity.assess import assess, to_json, to_table
    from medtl.similarity.features import load_array

    if args.checkpoint:
        src, tgt, labels, probs = _from_images(args)
    else:
        if not (args.source_features and args.target_features):
            raise MedtlError("give --source-features and --target-features, or --checkpoint with two manifests",
                             "similarity")
        labels = load_array(args.target_labels) if args.target_labels else None
        probs = load_array(args.source_probs) if args.source_probs else None
        src, tgt = load_array(args.source_features), load_array(args.target_features)
    result = assess(src, tgt, labels, source_model_probs=probs, paired=args.paired,
                    n_permutations=args.permutations, seed=args.seed)
    print(to_table(result, markdown=args.markdown))
    if args.json:
        to_json(result, args.json)
        print(f"wrote {args.json}")
    return 0
