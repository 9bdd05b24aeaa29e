"""`medtl manifest build|check`."""

from __future__ import annotations

import argparse
from pathlib import Path

from medtl.errors import MedtlError
from medtl.data.duplicates import NEAR_COPY_CORRELATION
from medtl.paths import default_data_root


def register(sub) -> None:
    parser = sub.add_parser("manifest", help="build and check data manifests")
    msub = parser.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)

    build = msub.add_parser("build", help="make a manifest with a patient-level stratified split")
    build.add_argument("--from", dest="source", required=True, help="<root>/<label>/<file> folder or raw manifest.csv")
    build.add_argument("--data-root", type=Path, default=None, help="folder the manifest's paths are relative to "
                       "(default: $MEDTL_DATA_ROOT or ../shared/data)")
    build.add_argument("--out", type=Path, required=True,
                       help="folder to write manifest.csv (plus manifest.meta.json) into; a path ending in .csv names "
                            "the manifest file itself (a manifest's name is how other commands refer to it)")
    build.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    build.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"),
                       help="split fractions of the patients")
    build.add_argument("--domain", help="domain/site name (default: the source folder's name)")
    build.add_argument("--modality", choices=["cxr", "mri2d", "mri3d"], help="default: guessed from folder and files")
    build.add_argument("--unlabelled", action="store_true", help="the source has no diagnostic labels")
    build.add_argument("--label-names", help="comma-separated names of integer labels 0, 1, ... (.npz archives)")
    build.add_argument("--keep-source-split", action="store_true",
                       help="keep the source's own train/val/test split (e.g. MedMNIST) instead of making one")
    build.add_argument(
        "--exclude-near-copies-of", type=Path, metavar="MANIFEST",
        help="drop rows that are identical to or near-copies of an image in MANIFEST (e.g. a DA target, or a "
             "model's training manifest; its images are found through the root its .meta.json records)",
    )
    build.add_argument(
        "--no-group-near-copies", dest="group", action="store_false",
        help="do not keep near-copy images in one split (faster, but test images may copy training ones)",
    )
    build.add_argument("--near-copy-correlation", type=float, default=NEAR_COPY_CORRELATION, metavar="R",
                       help="64 px thumbnails correlating above R are near-copies, kept in one split (recorded in "
                            "the .meta.json)")
    build.add_argument("--no-cut-to-head", dest="cut_to_head", action="store_false",
                       help="compare whole frames only: do not also compare 2D images cut to the head, which finds a "
                            "slice re-cropped or padded to another frame (how manifests were built before 2026-12-02)")
    build.add_argument("--skip-unreadable", action="store_true",
                       help="leave files that cannot be read out of the manifest, each named with its reason (and "
                            "listed in the .meta.json), instead of refusing the build; e.g. a held-out folder that "
                            "medtl predict read past")
    build.set_defaults(func=run_build)

    check = msub.add_parser("check", help="validate a manifest; exit status 0 only when valid")
    check.add_argument("manifest", type=Path, help="manifest CSV to check")
    check.add_argument("--data-root", type=Path, default=None, help="folder the manifest's paths are relative to "
                       "(default: the root its .meta.json records, else $MEDTL_DATA_ROOT or ../shared/data)")
    check.add_argument("--labels", help="comma-separated declared label set (default: the manifest's .meta.json)")
    check.add_argument("--near-copy-correlation", type=float, default=None, metavar="R",
                       help="judge near-copies at R (default: the threshold the manifest was built with, else "
                            f"{NEAR_COPY_CORRELATION})")
    check.add_argument("--cut-to-head", action=argparse.BooleanOptionalAction, default=None,
                       help="also compare 2D images cut to the head, finding a slice re-cropped or padded to another "
                            "frame (default: as the manifest was built; on for a manifest without that record)")
    check.add_argument("--spanning-csv", type=Path, default=None, metavar="FILE",
                       help="write the rows of the near-copy groups that span splits to FILE (path, split, label, "
                            "group): `medtl evaluate --exclude FILE` scores without them")
    check.add_argument("--no-progress", dest="progress", action="store_false", help="show no progress bar")
    check.set_defaults(func=run_check)


def run_build(args) -> int:
    from medtl.data.build import build_manifest
    from medtl.data.check import check_manifest

    out = args.out if args.out.suffix.lower() == ".csv" else args.out / "manifest.csv"
    if out.exists() and out.is_dir():
        raise MedtlError("--out names a folder called like a manifest file; give another name", out)
    from medtl.pipeline.train import RUN_KEY_FILE

    if out.exists() and (out.parent / RUN_KEY_FILE).exists():  # new splits would score its training images as test
        raise MedtlError("this is the manifest a medtl train run in this folder trained from (its split says which "
                         "images are its test images): write the new manifest elsewhere", out)
    root = args.data_root or default_data_root()
    manifest = build_manifest(
        args.source, root, seed=args.seed, fractions=tuple(args.fractions), group_near_copies=args.group,
        domain=args.domain, modality=args.modality, labelled=not args.unlabelled,
        exclude_copies_of=args.exclude_near_copies_of,
        label_names=args.label_names.split(",") if args.label_names else None, keep_source_split=args.keep_source_split,
        near_copy_correlation=args.near_copy_correlation, skip_unreadable=args.skip_unreadable,
        near_copy_cut_to_head=args.cut_to_head,
    )
    manifest.source = Path(out)  # what the check below names
    report = check_manifest(manifest, root, scanned=manifest.scanned,  # counts table, and proof that it is valid
                            cut_to_head=bool(manifest.meta.get("near_copy_cut_to_head")))  # as its scan was made
    if not report.ok:  # an invalid manifest is not left behind for the next command to read
        print(report.render())
        print(f"not written: {out} would fail `medtl manifest check` (the errors above)")
        return 1
    manifest.save(out)
    meta = manifest.meta
    print(f"wrote {out}: {len(manifest)} rows, labels {manifest.label_names}, patient ids: {meta['patient_ids']}")
    counts = {}
    for r in manifest:
        counts[r.modality] = counts.get(r.modality, 0) + 1
    shown = ", ".join(f"{k} ({n} rows)" for k, n in counts.items())
    if args.modality:
        print(f"modality: {shown}")
    else:  # the preset each command applies follows it: a chest X-ray read as a brain slice is flipped and windowed
        print(f"modality: {shown}, guessed from the domain name (cxr*, mri2d*, mri3d*) or else the files (pictures: "
              "mri2d; NIfTI: mri3d; DICOM: its header); give --modality cxr|mri2d|mri3d if that is not what they are")
    for item in meta.get("left_out", []):
        print(f"left out {item['path']}: {item['reason']}")
    if args.exclude_near_copies_of:
        print(f"dropped {meta['excluded_rows']} row(s) that copy images of {args.exclude_near_copies_of}")
    if meta["near_copy_grouping"]:
        by_split = ", ".join(f"{k} {v['groups']} ({v['images']} images)" for k, v in meta["near_copy_groups_by_split"].items())
        print(f"near-copy groups kept inside one split: {meta['near_copy_groups']} ({meta['near_copy_images']} images): "
              f"{by_split}; the near_copy_group column names them")
    print(report.render())
    return 0


def run_check(args) -> int:
    from medtl.data.check import check_manifest
    from medtl.data.manifest import Manifest, data_root_for

    manifest = Manifest.load(args.manifest)
    labels = args.labels.split(",") if args.labels else None
    root = data_root_for(manifest, args.data_root)  # the root its .meta.json records, as train reads it
    print(f"data root: {root}")
    report = check_manifest(manifest, root, labels=labels, progress=args.progress,
                            near_copy_correlation=args.near_copy_correlation, cut_to_head=args.cut_to_head)
    print(report.render())
    if args.spanning_csv is not None:
        import csv

        args.spanning_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.spanning_csv, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["path", "split", "label", "group", "splits_of_group"],
                               lineterminator="\n")
            w.writeheader()
            w.writerows(report.spanning_rows)
        print(f"wrote {args.spanning_csv}: {len(report.spanning_rows)} row(s) of "
              f"{report.near_copy_groups_across_splits} group(s) spanning splits")
    return 0 if report.ok else 1
