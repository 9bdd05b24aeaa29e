"""`medtl similarity`: domain distances and transferability, from images or from feature files.

Three ways in (exactly one):

    medtl similarity --source A.csv --target B.csv --data-root DIR [--encoder model.pt] --out DIR
    medtl similarity --matrix A.csv B.csv C.csv ... --data-root DIR [--encoder model.pt] --out DIR
                     [--markdown matrix.md] [--max-cases N]
    medtl similarity --source-features s.npy --target-features t.npz [--target-labels y.txt] --out DIR

--out is a folder, as for every medtl command: the result goes to DIR/similarity.json. Without
--encoder the features come from an untrained, randomly initialised resnet10 (torch seed 0); the
output says so. Older spellings stay as aliases: --source-manifest / --target-manifest (= --source /
--target), --checkpoint (= --encoder). A JSON file as --out, or --json FILE, still writes that file,
with a deprecation message.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from medtl.cli.output import output_file

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "similarity",
        allow_abbrev=False,
        help="how far apart domains are (MMD, proxy A-distance, Frechet) and how transferable features are",
        description="Compare two manifests' images (--source/--target), every pair of several data sets "
        "(--matrix), or two feature arrays (--source-features/--target-features). Features come from "
        "--encoder (a medtl checkpoint) or, without it, from an untrained, randomly initialised resnet10 "
        "(seed 0). Volumes (mri3d) given to a 2D encoder are read through its 2.5D lift (axial slices, "
        "slice_axis=2), so all data sets share one feature space.",
    )
    images = p.add_argument_group("from images (manifests)")
    images.add_argument("--source", "--source-manifest", dest="source", type=Path, help="source manifest CSV")
    images.add_argument("--target", "--target-manifest", dest="target", type=Path, help="target manifest CSV")
    images.add_argument("--matrix", nargs="+", type=Path, metavar="MANIFEST",
                        help="two or more manifests: every pair, features extracted once per data set")
    images.add_argument("--data-root", type=Path, default=None, help="folder manifest paths are relative to "
                        "(default: the root each manifest's .meta.json records, else $MEDTL_DATA_ROOT or "
                        "../shared/data)")
    images.add_argument("--source-root", type=Path, default=None,
                        help="data root of the --source manifest alone (default: --data-root, else its recorded root)")
    images.add_argument("--target-root", type=Path, default=None,
                        help="data root of the --target manifest alone (default: --data-root, else its recorded root)")
    images.add_argument("--encoder", "--checkpoint", dest="encoder", type=Path,
                        help="medtl model file whose encoder gives the features (default: untrained resnet10, seed 0)")
    images.add_argument("--split", default="train",
                        help="the split of each manifest to use (default: train, so no transferability score reads "
                             "the test labels; 'all': every row)")
    images.add_argument("--max-cases", type=int, default=500,
                        help="at most this many images per data set, a random subset seeded by --seed and the "
                             "manifest's rows, so a large data set does not run for hours; 0 uses every image")
    images.add_argument("--image-size", type=int, default=None,
                        help="2D image side (default: the checkpoint's, else 64)")
    images.add_argument("--spacing", type=float, nargs=3, default=None,
                        help="3D voxel spacing in mm (default: the checkpoint's, else 4 4 4)")
    images.add_argument("--volume-shape", type=int, nargs=3, default=None,
                        help="3D volume shape (default: the checkpoint's, else 40 48 40)")
    images.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    images.add_argument("--device", default="cpu", help="torch device for the encoder: cpu, cuda, cuda:1")
    images.add_argument("--save-features", type=Path, help="write the extracted features to this .npz")
    arrays = p.add_argument_group("from feature arrays (.npy, .npz, .csv)")
    arrays.add_argument("--source-features", type=Path, help="source features, one row per case")
    arrays.add_argument("--target-features", type=Path, help="target features, one row per case")
    arrays.add_argument("--target-labels", type=Path, help="one label per target row (for LogME / H-score / LEEP)")
    arrays.add_argument("--source-probs", type=Path, help="source model's class probabilities on the target images (LEEP)")
    arrays.add_argument("--paired", action="store_true", help="rows are the same cases in both arrays (enables CKA)")
    p.add_argument("--permutations", type=int, default=200, help="MMD permutation-test permutations")
    p.add_argument("--seed", type=int, default=0, help="subsets, permutations, folds")
    p.add_argument("--out", type=Path, metavar="DIR", help="folder to write similarity.json into")
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # deprecated: --out DIR
    p.add_argument("--no-progress", dest="progress", action="store_false", help="show no progress bar")
    p.add_argument("--markdown", nargs="?", const="-", default=None, metavar="FILE.md",
                   help="Markdown tables: to FILE.md, or printed instead of plain text when no file is given")
    p.set_defaults(func=run)


def _image_options(args) -> dict:
    return {
        "split": args.split, "max_cases": args.max_cases or None, "image_size": args.image_size,
        "spacing": tuple(args.spacing) if args.spacing else None,
        "volume_shape": tuple(args.volume_shape) if args.volume_shape else None,
        "n_permutations": args.permutations, "seed": args.seed, "batch_size": args.batch_size,
        "device": args.device, "save_features": args.save_features, "progress": args.progress,
    }


def _add_resamples(result: dict, feats: dict, args) -> None:
    """The measures again on random halves of these images, which medtl recommend reads to say how often each
    option stays on top (a pipeline's similarity stage measures the same)."""
    from medtl.similarity.assess import N_RESAMPLES, resampled_scores

    import time

    import numpy as np

    t0 = time.perf_counter()
    draws = resampled_scores({"encoder": feats}, seed=args.seed, progress=args.progress)
    if "wall_seconds" in result:
        result["wall_seconds"] = round(result["wall_seconds"] + time.perf_counter() - t0, 2)
    if draws:  # a half's p-value from one permutation means nothing: left out
        result["resamples"] = [{k: v for k, v in d["encoder"].items() if k != "mmd_p_value"} for d in draws]
        result["resampling"] = {"halves": len(draws), "seed": args.seed, "n_source": len(feats["source"]),
                                "n_target": len(feats["target"])}
        print(f"measured again on {len(draws)} random halves of the images (resamples in similarity.json: medtl "
              "recommend says how often each option stays on top)")
        spread = []
        for name in ("mmd2", "proxy_a_distance", "logme", "h_score"):
            values = [d[name] for d in result["resamples"] if d.get(name) is not None]
            if len(values) >= 10:
                low, mid, high = np.percentile(values, [2.5, 50, 97.5])
                spread.append(f"{name} {mid:.4g} ({low:.4g} to {high:.4g})")
        if spread:  # one draw of images is one value of each measure: how far another draw moves it
            print(f"over the halves, median (2.5 to 97.5 percentile); each half holds half the images, so the spread "
                  f"is wider than the full draw's own: {'; '.join(spread)}")
    else:
        print(f"not measured on random halves (fewer than 8 images on a side; {N_RESAMPLES} halves need more): "
              "medtl recommend cannot say how stable its ranking is")


def _emit(text_plain: str, text_md: str, args) -> None:
    print(text_md if args.markdown == "-" else text_plain)
    if args.markdown and args.markdown != "-":
        Path(args.markdown).write_text(text_md + "\n")
        print(f"wrote {args.markdown}")


def run(args) -> int:
    from medtl.errors import MedtlError
    from medtl.similarity.assess import assess, to_json, to_table

    path = output_file(args.out, args.json, "similarity.json")  # a bad --out is refused before any work
    if args.save_features:  # its folder too (it may be the --out folder, not made yet)
        try:
            Path(args.save_features).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise MedtlError(f"cannot create the folder: {err.strerror or err}", args.save_features) from None

    modes = [name for name, given in (("--matrix", args.matrix), ("--source/--target", args.source or args.target),
                                      ("--source-features/--target-features",
                                       args.source_features or args.target_features)) if given]
    if len(modes) != 1:
        raise MedtlError("give exactly one of --matrix MANIFEST..., --source/--target manifests, or "
                         "--source-features/--target-features" + (f" (got {' and '.join(modes)})" if modes else ""),
                         "similarity")
    if args.matrix:
        from medtl.similarity.images import matrix_tables, similarity_matrix

        if len(args.matrix) < 2:
            raise MedtlError("--matrix needs at least two manifests", "similarity")
        result = similarity_matrix(args.matrix, args.data_root, args.encoder, **_image_options(args))
        _emit(matrix_tables(result), matrix_tables(result, markdown=True), args)
    else:
        if args.source or args.target:
            from medtl.similarity.images import compare_manifests

            if not (args.source and args.target):
                raise MedtlError("give both --source and --target manifests", "similarity")
            result = compare_manifests(args.source, args.target, args.data_root, args.encoder,
                                       source_root=args.source_root, target_root=args.target_root,
                                       return_features=True, **_image_options(args))
            feats = result.pop("features")
            lead = f"encoder: {result['encoder']['description']}\n"
        else:
            from medtl.similarity.features import load_array

            if not (args.source_features and args.target_features):
                raise MedtlError("give both --source-features and --target-features", "similarity")
            labels = load_array(args.target_labels) if args.target_labels else None
            probs = load_array(args.source_probs) if args.source_probs else None
            src, tgt = load_array(args.source_features), load_array(args.target_features)
            result = assess(src, tgt, labels, source_model_probs=probs, paired=args.paired,
                            n_permutations=args.permutations, seed=args.seed)
            # paired rows are one set of cases seen twice: halves drawn apart would pair nothing
            feats = None if args.paired else {"source": src, "target": tgt, "target_labels": labels,
                                              "target_probs": probs}
            lead = ""
        _emit(lead + to_table(result), lead + to_table(result, markdown=True), args)
        if feats is not None and path is not None:  # the halves are for medtl recommend, which reads the file
            _add_resamples(result, feats, args)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        to_json(result, path)
        print(f"wrote {path}")
    return 0

