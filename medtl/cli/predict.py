"""``medtl predict``: batch inference over a folder, a manifest or a DICOMweb PACS; ``medtl export-bundle``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value
    return parse


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also NaN: every comparison with it is false, so nothing would be positive
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {text}"
                                         + (" (30% is 0.3)" if value > 1 else ""))
    return value


def register(subparsers) -> None:
    from medtl.deploy.dicomweb import READ_TIMEOUT
    from medtl.deploy.limits import Limits, MiB

    d = Limits()
    p = subparsers.add_parser(
        "predict", help="predict every series of a folder, manifest or DICOMweb PACS (CSV, JSON lines, DICOM SR)",
        description="Batch inference. Reruns into the same --out process only the series not done yet. "
                    "PACS credentials are read from the environment (MEDTL_PACS_USER and MEDTL_PACS_PASSWORD, or "
                    "MEDTL_PACS_TOKEN) or from files, never from the command line. See docs/batch.md.",
    )
    p.add_argument("--model", required=True, help="medtl checkpoint (.pt) or MONAI bundle folder (required)")
    p.add_argument("--input", required=True,
                   help="folder, file, manifest .csv, or DICOMweb URL http[s]://host/dicom-web[?filters] (required)")
    p.add_argument("--out", required=True,
                   help="output folder: results.csv, results.jsonl, excluded.csv, run.json, sr/ (required; one "
                        "process at a time)")
    p.add_argument("--sr", action="store_true", help="write a DICOM Comprehensive SR per DICOM series (default: off)")
    p.add_argument("--no-store", action="store_true",
                   help="with a DICOMweb input and --sr: do not store the SRs back in the PACS (default: stored)")
    p.add_argument("--data-root", help="data root for manifest paths (default: the root the manifest's .meta.json records, else $MEDTL_DATA_ROOT, else ../shared/data)")
    p.add_argument("--split", help="manifest input: only rows of this split, e.g. test (default: all rows)")
    p.add_argument("--modality", type=_list, default=(),
                   help="select series by Modality, comma-separated, e.g. CR,DX (default: any)")
    p.add_argument("--body-part", type=_list, default=(),
                   help="select series by BodyPartExamined, e.g. CHEST (default: any)")
    p.add_argument("--series-description", help="select series whose SeriesDescription matches this regular "
                                                 "expression, case-insensitive (default: any)")
    p.add_argument("--min-slices", type=int, default=0,
                   help="select series with at least this many slices (default: 0, any)")
    p.add_argument("--include-identifiers", action="store_true",
                   help="write patient name, id, birth date, accession number and file paths to the results "
                        "(default: off, they are scrubbed from everything written)")
    p.add_argument("--redact-paths", action="store_true",
                   help="store salted hashes instead of input file and folder names, which may hold patient "
                        "names (default: off, relative paths are kept with identifiers scrubbed)")
    p.add_argument("--threshold", type=_probability,
                   help="binary models: decision threshold, a probability in [0, 1] (default: the model's, else 0.5)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes for reading and preprocessing (default: the usable CPUs "
                        "beyond 2, at most 4; none on 2 CPUs)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 and so on (default: cuda when available; AMP on GPU)")
    p.add_argument("--retry-errors", action="store_true",
                   help="rerun: process again the series whose row is an error (default: off; series the PACS "
                        "could not serve are always retried)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    g = p.add_argument_group("resource limits (checked from headers before decoding; over a limit is an error row)")
    g.add_argument("--max-instance-mb", type=_positive(float), default=d.instance_bytes / MiB,
                   help=f"decoded pixel data per DICOM instance, MiB (default: {d.instance_bytes // MiB})")
    g.add_argument("--max-series-mb", type=_positive(float), default=d.series_bytes / MiB,
                   help=f"decoded pixel data per DICOM series for a 2D model, MiB (default: {d.series_bytes // MiB})")
    g.add_argument("--max-volume-mb", type=_positive(float), default=d.volume_bytes / MiB,
                   help="decoded pixel data per DICOM series read as one volume by a 3D model, MiB (default: "
                        f"{d.volume_bytes // MiB})")
    g.add_argument("--max-picture-mpx", type=_positive(float), default=d.picture_pixels / 1e6,
                   help=f"pixels per PNG/JPEG, millions, counted as 8-bit grey (an RGBA pixel counts 4, a 16-bit one 2; "
                        f"default: {d.picture_pixels / 1e6:g})")
    g.add_argument("--max-volume-mvox", type=_positive(float), default=d.volume_voxels / 1e6,
                   help=f"voxels per NIfTI volume, millions, counted as 32-bit (a float64 voxel counts 2; default: "
                        f"{d.volume_voxels / 1e6:g})")
    a = p.add_argument_group("PACS authentication and TLS (DICOMweb input)")
    a.add_argument("--pacs-user", help="user for basic authentication (default: $MEDTL_PACS_USER); the password "
                                       "comes from $MEDTL_PACS_PASSWORD or --pacs-password-file")
    a.add_argument("--pacs-password-file",
                   help="file holding the basic-auth password, chmod 600 (default: $MEDTL_PACS_PASSWORD)")
    a.add_argument("--pacs-token-file",
                   help="file holding a bearer token, chmod 600 (default: $MEDTL_PACS_TOKEN)")
    a.add_argument("--ca-bundle", help="PEM file of the CAs to trust for https (default: the system's CAs)")
    a.add_argument("--client-cert", help="PEM client certificate for mutual TLS (default: none)")
    a.add_argument("--client-key", help="PEM key of the client certificate (default: none, or inside --client-cert)")
    a.add_argument("--pacs-retries", type=_positive(int), default=3,
                   help="attempts per PACS request on connection errors and busy answers, with back-off 1 s, 2 s, "
                        "... (default: 3)")
    a.add_argument("--pacs-timeout", type=_positive(float), default=READ_TIMEOUT, metavar="SECONDS",
                   help="seconds the PACS may take to start answering a request; one that sends nothing in time "
                        f"is not retried (default: {READ_TIMEOUT:g})")
    a.add_argument("--max-pacs-failures", type=int, default=5,
                   help="stop the run after this many consecutive series the PACS could not serve; a rerun "
                        "resumes (default: 5; 0 never stops)")
    p.set_defaults(func=run)

    e = subparsers.add_parser("export-bundle", help="export a medtl checkpoint as a MONAI bundle")
    e.add_argument("--model", required=True, help="medtl checkpoint (.pt) (required)")
    e.add_argument("--out", required=True, help="bundle folder to create (required)")
    e.add_argument("--name", help="bundle name (default: the model's)")
    e.set_defaults(func=export)


def run(args: argparse.Namespace) -> int:
    import logging

    from medtl.deploy import SeriesRules, predict_batch
    from medtl.deploy.dicomweb import PacsAuth, is_url
    from medtl.deploy.limits import Limits, MiB

    if not getattr(args, "verbose", False):
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every attribute it copies into an SR
        # pydicom logs each failed decoder with a traceback before raising; the error row already says why
        logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)

    if args.device:  # a typo is a refused command before the model loads and the output folder is made
        from medtl.engine.trainer import resolve_device

        resolve_device(args.device, where="--device")
    rules = SeriesRules(modalities=args.modality, body_parts=args.body_part, description=args.series_description,
                        min_slices=args.min_slices)
    limits = Limits(instance_bytes=int(args.max_instance_mb * MiB), series_bytes=int(args.max_series_mb * MiB),
                    volume_bytes=int(args.max_volume_mb * MiB),
                    picture_pixels=int(args.max_picture_mpx * 1e6), volume_voxels=int(args.max_volume_mvox * 1e6))
    auth = PacsAuth.from_environment(args.pacs_user, args.pacs_password_file, args.pacs_token_file) \
        if is_url(args.input) else None
    result = predict_batch(
        args.model, args.input, args.out, data_root=args.data_root, split=args.split, rules=rules, write_sr=args.sr,
        store_sr=False if args.no_store else None, include_identifiers=args.include_identifiers,
        redact_paths=args.redact_paths, limits=limits, pacs_auth=auth, ca_bundle=args.ca_bundle,
        client_cert=args.client_cert, client_key=args.client_key, pacs_retries=args.pacs_retries,
        pacs_timeout=args.pacs_timeout, max_pacs_failures=args.max_pacs_failures,
        batch_size=args.batch_size, workers=args.workers, device=args.device, threshold=args.threshold,
        progress=not args.no_progress, retry_errors=args.retry_errors,
    )
    print(f"{result.ok} ok, {result.errors} error(s), {result.duplicates} duplicate file(s), {result.resumed} "
          f"already done, {result.excluded} excluded; results: {result.csv}")
    if not result.rows and not result.resumed and not result.excluded and not is_url(args.input):
        # an empty folder is a failed mount or an export that never arrived, not a quiet day: a scheduler must see it
        print(f"error: no input found: {shlex.quote(str(args.input))} holds no image, volume or DICOM file "
              "medtl reads", file=sys.stderr)
        return 1
    failed = [r for r in result.rows if r.get("status") == "error"]
    if failed and not any(r.get("status") == "ok" for r in result.rows):  # also on a rerun: a scheduler must see it
        print(f"error: no input could be predicted: the results hold no prediction, only {len(failed)} error row(s) "
              f"(the error column of {result.csv} says why)", file=sys.stderr)
        return 1
    if result.sr_pending:
        print(f"{result.sr_pending} SR(s) not stored: the PACS could not take them; rerun the same command to send them")
    if result.ok and not is_url(args.input):  # a PACS holds no labels to score against
        from_manifest = str(args.input).lower().endswith(".csv")
        labelled = from_manifest and _has_labels(args.input)  # a manifest's labels travel into the results
        own = None if from_manifest else _training_manifest(args.model, args.input)
        series = any(r.get("status") == "ok" and r.get("series_uid") for r in result.rows)
        if own and series:  # DICOM rows are named by series UID, which the manifest's paths do not match
            again = Path(args.out).with_name(Path(args.out).name + "-manifest")
            print("next: these are the model's training images, read as DICOM series; to score its test images, "
                  "predict from its manifest, which keeps each file's path and split:\n"
                  f"  medtl predict --model {shlex.quote(str(args.model))} --input {shlex.quote(str(own))} "
                  f"--data-root {shlex.quote(str(args.input))} --out {shlex.quote(str(again))}")
            return 0
        # a manifest's labels are in the results already, but its patients and near-copy groups are not (the
        # patient ids stay out of results.csv): given again, they make the bootstrap's units
        labels = f" --labels {shlex.quote(str(args.input if labelled else own or 'LABELS.csv'))}"
        print("next: score the predictions against the true labels:\n"
              f"  medtl evaluate --predictions {shlex.quote(str(result.csv))}{labels}"
              f" --out {shlex.quote(str(Path(args.out) / 'report'))}")
        if own:
            print("  (these are the model's training images: its own manifest keeps their split, so only its "
                  "test images are scored)")
        elif from_manifest and not labelled:
            shown = "INPUT" if args.redact_paths else shlex.quote(str(args.input))
            print(f"  (LABELS.csv: {shown} labels none of its rows; give its rows with each image's class in the "
                  "label column)")
        elif not labelled and not series:
            # image files, perhaps in label folders (error rows say nothing: an unreadable .dcm has a source too)
            # the user's own path, unless they asked for paths to stay out of what medtl writes and prints
            folder = "INPUT_FOLDER" if args.redact_paths else shlex.quote(str(args.input))
            skip = " --skip-unreadable" if failed else ""  # the files predict read past would refuse the build
            learned = _recorded_manifest(args.model)
            if learned is not None:  # copies of its training images would score optimistically: left out
                skip += f" --exclude-near-copies-of {shlex.quote(str(learned))}"
            print(f"  (LABELS.csv: a manifest of these images; for a folder of <label>/<file> images: medtl manifest "
                  f"build --from {folder} --data-root {folder} --out LABELS.csv --fractions 0 0 1{skip}"
                  + ("; it leaves out copies of the images in the model's training manifest)" if learned else
                     "; not for the model's training images, which it would score as test)"))
        elif not labelled:  # DICOM series: their labels come from elsewhere (a report, a registry)
            print("  (LABELS.csv: a manifest, columns path,label,split,patient_id,domain,modality, whose path is each "
                  "series' case_id in results.csv (its SeriesInstanceUID) and split is test)")
    return 0


def _has_labels(manifest: str) -> bool:
    """Whether a manifest labels any of its rows (one of DICOM series alone says 'unlabelled' throughout)."""
    try:
        from medtl.data.manifest import Manifest

        return any(r.label != "unlabelled" for r in Manifest.load(manifest))
    except Exception:  # noqa: BLE001 (a hint only: predict read it already, or reported why not)
        return True


def _recorded_manifest(model: str) -> Path | None:
    """The one manifest a medtl checkpoint records it trained from, where it is on this machine (else None)."""
    try:
        from medtl.models.checkpoint import read_checkpoint, trained_from

        found = [f for _, f, _ in trained_from(model, read_checkpoint(model).get("meta") or {}) if f is not None]
        return found[0] if len(found) == 1 else None
    except Exception:  # noqa: BLE001 (a hint only: a bundle or an unreadable checkpoint gives the generic one)
        return None


def _training_manifest(model: str, input_path: str) -> Path | None:
    """The manifest a medtl train model was trained from, when ``input_path`` is its data root (the
    training folder): scoring that folder needs its split, not a manifest that calls every image test."""
    from medtl.data.manifest import Manifest

    found = _recorded_manifest(model)
    try:
        root = Manifest.load(found).recorded_root if found is not None else None
    except Exception:  # noqa: BLE001 (a hint only)
        return None
    return found if root is not None and root == Path(input_path).resolve() else None


def export(args: argparse.Namespace) -> int:
    from medtl.deploy import export_bundle

    path = export_bundle(args.model, args.out, name=args.name)
    print(f"MONAI bundle written to {path}")
    return 0
