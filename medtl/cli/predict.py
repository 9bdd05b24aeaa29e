"""``medtl predict``: batch inference over a folder, a manifest or a DICOMweb PACS; ``medtl export-bundle``."""

from __future__ import annotations

import argparse


def _list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="predict every series of a folder, manifest or DICOMweb PACS (CSV, JSON lines, DICOM SR)",
        description="Batch inference. Reruns into the same --out process only the series not done yet.",
    )
    p.add_argument("--model", required=True, help="medtl checkpoint (.pt) or MONAI bundle folder")
    p.add_argument("--input", required=True, help="folder, file, manifest .csv, or DICOMweb URL (http[s]://host/dicom-web[?filters])")
    p.add_argument("--out", required=True, help="output folder (results.csv, results.jsonl, sr/)")
    p.add_argument("--sr", action="store_true", help="write a DICOM Comprehensive SR per DICOM series")
    p.add_argument("--no-store", action="store_true", help="with a DICOMweb input and --sr: do not store SRs back")
    p.add_argument("--data-root", help="data root for manifest paths (default $MEDTL_DATA_ROOT or ../shared/data)")
    p.add_argument("--split", help="manifest input: only rows of this split (e.g. test)")
    p.add_argument("--modality", type=_list, default=(), help="select series by Modality, e.g. CR,DX")
    p.add_argument("--body-part", type=_list, default=(), help="select series by BodyPartExamined, e.g. CHEST")
    p.add_argument("--series-description", help="select series whose SeriesDescription matches this regex")
    p.add_argument("--min-slices", type=int, default=0, help="select series with at least this many slices")
    p.add_argument("--include-identifiers", action="store_true",
                   help="write patient name/id/birth date, accession number and file paths to the results")
    p.add_argument("--threshold", type=float, help="binary models: decision threshold (default: the model's, else 0.5)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for reading (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available; AMP on GPU)")
    p.add_argument("--retry-errors", action="store_true",
                   help="rerun: process again the series whose row is an error (e.g. after a PACS outage)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

    e = subparsers.add_parser("export-bundle", help="export a medtl checkpoint as a MONAI bundle")
    e.add_argument("--model", required=True, help="medtl checkpoint (.pt)")
    e.add_argument("--out", required=True, help="bundle folder to create")
    e.add_argument("--name", help="bundle name (default: the model's)")
    e.set_defaults(func=export)


def run(args: argparse.Namespace) -> int:
    import logging

    from medtl.deploy import SeriesRules, predict_batch

    if not getattr(args, "verbose", False):
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every attribute it copies into an SR

    rules = SeriesRules(modalities=args.modality, body_parts=args.body_part, description=args.series_description,
                        min_slices=args.min_slices)
    result = predict_batch(
        args.model, args.input, args.out, data_root=args.data_root, split=args.split, rules=rules, write_sr=args.sr,
        store_sr=False if args.no_store else None, include_identifiers=args.include_identifiers,
        batch_size=args.batch_size, workers=args.workers, device=args.device, threshold=args.threshold,
        progress=not args.no_progress, retry_errors=args.retry_errors,
    )
    print(f"{result.ok} ok, {result.errors} error(s), {result.resumed} already done, {result.excluded} excluded; "
          f"results: {result.csv}")
    return 0


def export(args: argparse.Namespace) -> int:
    from medtl.deploy import export_bundle

    path = export_bundle(args.model, args.out, name=args.name)
    print(f"MONAI bundle written to {path}")
    return 0
