"""``medtl explain``: Grad-CAM overlays of a model's decisions on your images, and how faithful they are.

The model's own preprocessing is applied (the same reading and preset chain as ``medtl predict``), each
image gets an overlay PNG titled with the model's decision, ``index.html`` shows them side by side, and
``index.csv`` says which input each overlay is. With ``--deletion-test`` the maps are checked: blanking
the hottest 20% of each image should lower the explained class's probability more than blanking
random pixels (``medtl.evaluation.explain.deletion_test``); ``deletion.json`` and the overlays go to
``medtl evaluate --gradcam``. Unreadable inputs get an error row in index.csv; the others go on.
"""

from __future__ import annotations

import argparse
import csv
import html
import shlex
from pathlib import Path

DEFAULT_LAYER = "encoder.layer4"


def register(subparsers) -> None:
    p = subparsers.add_parser("explain", help="Grad-CAM overlays of a model's decisions (and a faithfulness test)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a medtl model.pt (medtl train, a pipeline's best.pt)")
    p.add_argument("--input", required=True, help="a folder, an image or DICOM file, or a manifest .csv")
    p.add_argument("--out", required=True, help="output folder (overlays, index.html, index.csv)")
    p.add_argument("--data-root", default=None, help="root of a manifest's paths (default: the configured data root)")
    p.add_argument("--class", dest="class_name", default=None,
                   help="the class to explain (default: each image's predicted class)")
    p.add_argument("--layer", default=DEFAULT_LAYER, help=f"the layer whose activations explain (default: {DEFAULT_LAYER})")
    p.add_argument("--max-images", type=int, default=50, help="explain at most this many images (default: 50)")
    p.add_argument("--deletion-test", action="store_true",
                   help="also test the maps' faithfulness on the explained images (needs 2 or more; 50+ for a number "
                        "worth reporting)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="show no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from medtl.deploy.batch import discover
    from medtl.deploy.discover import SCRUBBED_TAGS
    from medtl.deploy.inputs import SeriesLoader
    from medtl.deploy.model import predictor_from_meta
    from medtl.deploy.ledger import csv_cell
    from medtl.deploy.redact import Redactor, add_identifiers, redacting
    from medtl.errors import MedtlError
    from medtl.evaluation.explain import deletion_summary, deletion_test, save_deletion_test
    from medtl.models.checkpoint import load_checkpoint

    model_path = Path(args.model)
    if model_path.is_dir():
        raise MedtlError("give the model.pt file (a MONAI bundle folder holds no medtl model to explain)", model_path)
    if not model_path.exists():
        raise MedtlError("model not found", model_path)
    if args.max_images < 1:
        raise MedtlError(f"--max-images must be at least 1, got {args.max_images}", "--max-images")
    out = Path(args.out)
    try:  # made (or refused) before any work
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MedtlError(f"cannot create the output folder: {err.strerror or err}", out) from None
    module, meta = load_checkpoint(model_path, map_location="cpu")
    module = module.float().eval()
    predictor = predictor_from_meta(module, meta, str(model_path), "", "cpu")
    if args.layer not in dict(module.named_modules()):
        raise MedtlError(f"the model has no layer {args.layer!r} (e.g. encoder.layer3, encoder.layer4)", "--layer")
    class_idx = None
    if args.class_name is not None:
        if predictor.is_regression or args.class_name not in predictor.label_names:
            raise MedtlError(f"{args.class_name!r} is not one of the model's classes {predictor.label_names}",
                             "--class")
        class_idx = predictor.label_names.index(args.class_name)

    series = discover(args.input, data_root=args.data_root, volume=predictor.spatial_dims == 3)
    redactor = Redactor()  # names from the headers stay out of index.csv, the titles and the log
    add_identifiers(redactor, ((k, v) for s in series for k, v in s.identifiers.items() if k in SCRUBBED_TAGS))
    loader = SeriesLoader(predictor.preset, predictor.preset_options, predictor.spatial_dims)
    if args.deletion_test and predictor.is_regression:
        raise MedtlError("the deletion test measures a class probability; this model predicts a value",
                         "--deletion-test")
    with redacting(redactor):
        rows, images, classes = _explain_series(series, args, module, predictor, loader, redactor, class_idx, out)
    with open(out / "index.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["file", "source", "predicted", "probability", "error"])
        w.writeheader()
        w.writerows({k: csv_cell(v) for k, v in r.items()} for r in rows)  # a file named "=..." is no formula
    _gallery(out, rows, model_path.name, args.layer)
    done = [r for r in rows if r["file"]]
    print(f"{len(done)} overlay(s), {sum(bool(r['error']) for r in rows)} error(s): {out / 'index.html'}")
    if not done:
        raise MedtlError("no image could be explained (see index.csv)", args.input)
    if args.deletion_test:
        if len(images) < 2:
            raise MedtlError("the deletion test needs at least 2 explained images", "--deletion-test")
        result = deletion_test(module, images, args.layer, class_idx=classes)
        path = save_deletion_test(result, out / "deletion.json")
        print(f"deletion test: {deletion_summary(result)}")
        print("next: put the overlays and the test in a report:\n  medtl evaluate --predictions PREDICTIONS.csv "
              f"--out REPORT --gradcam {shlex.quote(str(out / done[0]['file']))} {shlex.quote(str(path))}")
    return 0


def _explain_series(series, args, module, predictor, loader, redactor, class_idx, out: Path):
    """Overlays for the series' images, up to ``--max-images``: (index rows, explained images, their classes)."""
    import torch

    from medtl.errors import MedtlError
    from medtl.evaluation.explain import gradcam, overlay_png
    from medtl.progress import bar

    rows, images, classes = [], [], []
    for s in bar(series, desc="explain", unit="series", enabled=args.progress):
        if len(images) >= args.max_images:
            break
        source = redactor(s.source or s.key)
        if s.error:
            rows.append({"file": "", "source": source, "predicted": "", "probability": "", "error": redactor(s.error)})
            continue
        try:
            batch = loader(s)
        except Exception as err:  # noqa: BLE001 (one bad input is an error row; the others go on)
            why = err.reason if isinstance(err, MedtlError) else f"{type(err).__name__}: {err}"
            rows.append({"file": "", "source": source, "predicted": "", "probability": "", "error": redactor(why)})
            continue
        for k, x in enumerate(batch[: args.max_images - len(images)]):
            with torch.no_grad():
                out_ = module(x[None]).float()[0]
            if predictor.is_regression:
                c, value, shown = 0, float(out_[0]), f"{predictor.label_names[0]} {float(out_[0]):.3g}"
            else:
                probs = torch.softmax(out_, 0).tolist()
                c = class_idx if class_idx is not None else predictor.label_names.index(predictor.decide(probs))
                value = probs[c]
                shown = f"{predictor.decide(probs)}; P({predictor.label_names[c]}) = {value:.3f}"
            cam = gradcam(module, x, args.layer, c)
            name = f"case{len(images) + 1:04d}.png"
            title = f"{name[:-4]}: {shown}" + (f" (Grad-CAM of {predictor.label_names[c]})"
                                              if not predictor.is_regression else "")
            (out / name).write_bytes(overlay_png(x.numpy(), cam, title))
            images.append(x)
            classes.append(c)  # the class this overlay explains: the deletion test tests the same maps
            rows.append({"file": name, "source": source + (f" [image {k + 1}]" if len(batch) > 1 else ""),
                         "predicted": shown, "probability": f"{value:.6g}", "error": ""})
    return rows, images, classes


def _gallery(out: Path, rows: list[dict], model: str, layer: str) -> None:
    """index.html: every overlay with its source and decision, self-contained beside the PNGs."""
    cells = "".join(
        f'<figure><img src="{html.escape(r["file"])}" alt="{html.escape(r["file"])}"><figcaption>'
        f'{html.escape(r["source"])}<br>{html.escape(r["predicted"])}</figcaption></figure>'
        for r in rows if r["file"])
    errors = "".join(f"<li>{html.escape(r['source'])}: {html.escape(r['error'])}</li>" for r in rows if r["error"])
    (out / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>Grad-CAM</title><style>body{font-family:sans-serif}"
        "figure{display:inline-block;width:300px;margin:6px;vertical-align:top}img{width:100%}"
        "figcaption{font-size:12px}</style>"
        f"<h1>Grad-CAM of {html.escape(model)} ({html.escape(layer)})</h1><p>Bright: where the evidence for the "
        "explained class is strongest. A map shows what the model used, not whether it was right.</p>"
        + cells + (f"<h2>Not explained</h2><ul>{errors}</ul>" if errors else ""), encoding="utf-8")
