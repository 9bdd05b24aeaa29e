"""``medtl explain``: Grad-CAM overlays of a model's decisions on your images, and how faithful they are.

The model's own preprocessing is applied (the same reading and preset chain as ``medtl predict``), each
image gets an overlay PNG titled with the model's decision and the class its map explains, ``index.html``
shows them side by side, and ``index.csv`` says which input each overlay is, with every class's
probability. A manifest is explained on its test split (``--split``). The layer is the deepest encoder
stage whose grid has at least 4 cells along every axis and 49 in all for the model's input size (``--layer`` chooses
another). With ``--deletion-test`` the maps are checked: blanking the hottest 20% of each image should
lower the explained class's probability more than blanking random pixels
(``medtl.evaluation.explain.deletion_test``); its verdict (pass, fail, inconclusive, or no drop when blanking the maps did not lower the probability
at all) heads index.html.
``deletion.json`` and the overlays go to ``medtl evaluate --gradcam``. Unreadable inputs get an error
row in index.csv; the others go on. Regression models are refused: Grad-CAM explains a class.
"""

from __future__ import annotations

import argparse
import csv
import html
import shlex
from pathlib import Path

LAYERS = ("encoder.layer4", "encoder.layer3", "encoder.layer2", "encoder.layer1")  # deepest first


def register(subparsers) -> None:
    p = subparsers.add_parser("explain", help="Grad-CAM overlays of a model's decisions (and a faithfulness test)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a medtl model.pt (medtl train, a pipeline's best.pt)")
    p.add_argument("--input", required=True, help="a folder, an image or DICOM file, or a manifest .csv")
    p.add_argument("--out", required=True, help="output folder (overlays, index.html, index.csv)")
    p.add_argument("--data-root", default=None, help="root of a manifest's paths (default: the root its .meta.json records, else the configured data root)")
    p.add_argument("--class", dest="class_name", default=None,
                   help="the class to explain (default: each image's predicted class)")
    p.add_argument("--layer", default=None,
                   help="the layer whose activations explain (default: the deepest of " + ", ".join(LAYERS)
                        + " with at least 4 cells along every axis and 49 in all: layer3 at 128 px, layer2 at 64)")
    p.add_argument("--split", default="test",
                   help="a manifest's split to explain, or 'all' (default: test; folders and files: every image)")
    p.add_argument("--max-images", type=int, default=50, help="explain at most this many images (default: 50)")
    p.add_argument("--deletion-test", action="store_true",
                   help="also test the maps' faithfulness on the explained images (needs 2 or more; 50+ for a number "
                        "worth reporting)")
    p.add_argument("--control", choices=["pixels", "shifted"], default="pixels",
                   help="the deletion test's reference: random pixels, or the map's own mask moved at random")
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
    from medtl.evaluation.explain import deletion_summary, deletion_test, overlay_png, save_deletion_test
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
    if predictor.is_regression:
        raise MedtlError("this model predicts a value: Grad-CAM and its deletion test explain a class", model_path)
    if args.layer is not None and args.layer not in dict(module.named_modules()):
        raise MedtlError(f"the model has no layer {args.layer!r} (e.g. encoder.layer3, encoder.layer4)", "--layer")
    class_idx = None
    if args.class_name is not None:
        if args.class_name not in predictor.label_names:
            raise MedtlError(f"{args.class_name!r} is not one of the model's classes {predictor.label_names}",
                             "--class")
        class_idx = predictor.label_names.index(args.class_name)

    split = None if args.split == "all" or not _has_split_column(args.input) else args.split
    series = discover(args.input, data_root=args.data_root, volume=predictor.spatial_dims == 3, split=split)
    if not series:
        raise MedtlError(f"no images to explain (a manifest's --split {args.split} has no rows? --split all takes "
                         "every row)", args.input)
    redactor = Redactor()  # names from the headers stay out of index.csv, the titles and the log
    add_identifiers(redactor, ((k, v) for s in series for k, v in s.identifiers.items() if k in SCRUBBED_TAGS))
    loader = SeriesLoader(predictor.preset, predictor.preset_options, predictor.spatial_dims)
    with redacting(redactor):
        rows, images, classes, layer, overlays, keys = _explain_series(series, args, module, predictor, loader,
                                                                       redactor, class_idx)
    done = [r for r in rows if r["file"]]
    columns = ["file", "source", "predicted", "explained_class", "p_explained", "map",
               *[f"prob_{c}" for c in predictor.label_names], "error"]
    with open(out / "index.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows({k: csv_cell(v) for k, v in r.items()} for r in rows)  # a file named "=..." is no formula
    result, refused = None, None
    if args.deletion_test and done:  # before index.html, which leads with its verdict
        try:
            if len(images) < 2:
                raise MedtlError("the deletion test needs at least 2 explained images", "--deletion-test")
            result = deletion_test(module, images, layer, class_idx=classes, control=args.control,
                                   groups=_resampling_units(args.input, keys))
            save_deletion_test(result, out / "deletion.json")
        except MedtlError as err:
            refused = err
    footer = _verdict_line(result, refused.reason if refused else None)
    spacing = predictor.preset_options.get("spacing") if predictor.spatial_dims == 3 else None
    for name, x, cam, title in overlays:  # each PNG carries the verdict: one copied alone must not pass for evidence
        (out / name).write_bytes(overlay_png(x, cam, title, footer=footer, spacing=spacing))
    _gallery(out, rows, model_path.name, layer, result, refused.reason if refused else None)
    print(f"{len(done)} overlay(s), {sum(bool(r['error']) for r in rows)} error(s) ({layer}): {out / 'index.html'}")
    if len(done) == args.max_images and len(series) > len(rows):
        print(f"note: stopped at --max-images {args.max_images}; {len(series)} input(s) were found")
    if not done:
        raise MedtlError("no image could be explained (see index.csv)", args.input)
    if refused is not None:
        raise refused
    if result is not None:
        print(f"deletion test: {deletion_summary(result)}")
        print("next: put the overlays and the test in a report beside the model's scores (RESULTS.csv: medtl "
              "predict's results on these images, with --labels LABELS.csv when they carry none):\n"
              "  medtl evaluate --predictions RESULTS.csv [--labels LABELS.csv] --out REPORT --gradcam "
              f"{shlex.quote(str(out / done[0]['file']))} {shlex.quote(str(out / 'deletion.json'))}")
    return 0


def _has_split_column(path) -> bool:
    """Whether ``path`` is a CSV with a ``split`` column (a manifest); a plain list of paths has none."""
    p = Path(path)
    if not (p.is_file() and p.suffix.lower() == ".csv"):
        return False
    with open(p, newline="", encoding="utf-8-sig") as f:
        return "split" in (next(csv.reader(f), None) or [])


def _stages(module) -> tuple[str, ...]:
    """The encoder's stages by name, deepest first (medtl.models.layer_groups), else the ResNet names."""
    from torch import nn

    from medtl.models.lift import AttentionPool, layer_groups

    encoder = getattr(module, "encoder", None)
    try:
        groups = layer_groups(encoder) if encoder is not None else []
    except Exception:  # noqa: BLE001 (an encoder the grouping does not know: the ResNet names)
        return LAYERS
    names = {id(m): n for n, m in module.named_modules()}

    def name_of(group):  # a stage module, or a list of modules (densenet: a block and its transition)
        if id(group) in names:
            return names[id(group)]
        # the stage's last member with a spatial output: not the 2.5D attention pooling that learns with it
        members = [names[id(m)] for m in group if id(m) in names and not isinstance(m, AttentionPool)] \
            if isinstance(group, nn.ModuleList) else []
        return members[-1] if members else None

    found = tuple(n for n in (name_of(g) for g in reversed(groups)) if n)
    return found or LAYERS


def _verdict_line(test: dict | None, refused: str | None) -> str:
    """The line under each overlay: what the deletion test said of these maps, or that none said anything."""
    if refused is not None:
        return f"Deletion test refused ({refused[:120]}): nothing shows that this map marks what the model uses."
    if test is None:
        return ("Not tested: nothing shows that this map marks what the model uses (medtl explain --deletion-test on "
                "50+ images).")
    from medtl.evaluation.explain import small_test_note

    d, top = test["difference"], test["drop_top"]
    return (f"Deletion test of these maps: {test['verdict'].upper().replace('_', ' ')} on {test['n']} images "
            f"(drop {top['mean']:+.3f}, {test['level']:.0%} CI {top['ci'][0]:.3f} to {top['ci'][1]:.3f}; beyond "
            f"random blanking {d['mean']:+.3f}, CI {d['ci'][0]:.3f} to {d['ci'][1]:.3f})"
            + ("." if test["verdict"] == "pass" else ": do not show this map as evidence.")
            + small_test_note(test["n"]))


def _explain_series(series, args, module, predictor, loader, redactor, class_idx):
    """Maps for the series' images, up to ``--max-images``: (index rows, explained images, their classes, the
    layer explained: ``--layer``, or chosen on the first image, the overlays to draw: (file name, image,
    map, title), drawn once the deletion test has spoken, and each image's series key)."""
    import torch

    from medtl.errors import MedtlError
    from medtl.deploy.redact import shown_uid
    from medtl.evaluation.explain import choose_layer, coarse, gradcam
    from medtl.progress import bar

    rows, images, classes, layer, overlays, keys = [], [], [], args.layer, [], []
    for s in bar(series, desc="explain", unit="series", enabled=args.progress):
        if len(images) >= args.max_images:
            break
        source = redactor(s.source) if s.source else shown_uid(s.key, redactor)  # a series UID kept whole, as predict does
        if s.error:
            rows.append({"file": "", "source": source, "error": redactor(s.error)})
            continue
        try:
            batch = loader(s)
        except Exception as err:  # noqa: BLE001 (one bad input is an error row; the others go on)
            why = err.reason if isinstance(err, MedtlError) else f"{type(err).__name__}: {err}"
            rows.append({"file": "", "source": source, "error": redactor(why)})
            continue
        for k, x in enumerate(batch[: args.max_images - len(images)]):
            if layer is None or not images:
                chosen, grid = choose_layer(module, x, [layer] if layer else _stages(module))
                if coarse(grid, module):
                    print(f"warning: {chosen} has a {'x'.join(map(str, grid))} grid at this input size: its maps "
                          "place evidence no finer than that"
                          + ("; a shallower --layer places it better" if args.layer else ""))
                layer = chosen
            with torch.no_grad():
                probs = torch.softmax(module(x[None]).float()[0], 0).tolist()
            decided = predictor.decide(probs)
            c = class_idx if class_idx is not None else predictor.label_names.index(decided)
            explained = predictor.label_names[c]
            cam = gradcam(module, x, layer, c)
            constant = bool(cam.max() == cam.min())
            name = f"case{len(images) + 1:04d}.png"
            shown_source = source + (f" [image {k + 1}]" if len(batch) > 1 else "")
            title = (f"{name[:-4]} ({shown_source[-40:]}): {decided}; Grad-CAM of {explained}, "
                     f"P = {probs[c]:.3f}")
            if x.ndim == 3:  # a 2D image is shown as the model saw it, which squeezes one that is not square
                title += f"\non the model's {x.shape[-1]}x{x.shape[-2]} px input (resized from the file's own shape)"
            overlays.append((name, x.numpy(), cam, title))
            images.append(x)
            classes.append(c)  # the class this overlay explains: the deletion test tests the same maps
            keys.append(s.key)
            rows.append({"file": name, "source": shown_source, "predicted": decided, "explained_class": explained,
                         "p_explained": f"{probs[c]:.6g}", "map": "constant (no location)" if constant else "",
                         **{f"prob_{n}": f"{p:.6g}" for n, p in zip(predictor.label_names, probs)}, "error": ""})
    return rows, images, classes, layer or LAYERS[0], overlays, keys


def _resampling_units(input: str, keys: list[str]) -> list[str]:
    """The deletion test's unit of each image: its series (a multi-frame file's images are one), and for a
    manifest its patient, with the patients of one near-copy group joined (as ``medtl evaluate`` resamples)."""
    from medtl.data.manifest import NEAR_COPY_GROUP
    from medtl.evaluation.bootstrap import sampling_units

    own, copies = [f"series:{k}" for k in keys], [None] * len(keys)
    if Path(input).is_file() and Path(input).suffix.lower() == ".csv":
        with open(input, newline="", encoding="utf-8-sig") as f:
            of_path = {(r.get("path") or "").strip(): r for r in csv.DictReader(f)}
        for i, key in enumerate(keys):
            row = of_path.get(key, {})
            if (row.get("patient_id") or "").strip():
                own[i] = f"patient:{row['patient_id'].strip()}"
            copies[i] = (row.get(NEAR_COPY_GROUP) or "").strip() or None
    return list(sampling_units(own, copies))


def _gallery(out: Path, rows: list[dict], model: str, layer: str, test: dict | None, refused: str | None) -> None:
    """index.html: the deletion test's verdict first, then every overlay with its source, decision and
    explained class, self-contained beside the PNGs."""
    from medtl.evaluation.explain import deletion_summary

    cells = "".join(
        f'<figure><img src="{html.escape(r["file"])}" alt="{html.escape(r["file"])}"><figcaption>'
        f'{html.escape(r["source"])}<br>decision: {html.escape(r["predicted"])}; Grad-CAM of '
        f'{html.escape(r["explained_class"])} (P = {float(r["p_explained"]):.3f})'
        + (f'<br><b>{html.escape(r["map"])}</b>' if r["map"] else "") + "</figcaption></figure>"
        for r in rows if r["file"])
    errors = "".join(f"<li>{html.escape(r['source'])}: {html.escape(r['error'])}</li>" for r in rows if r["error"])
    if refused is not None:
        check = (f"<p style='background:#fde7e7;padding:8px'><b>Deletion test refused:</b> {html.escape(refused)}. "
                 "Nothing here shows that these maps mark what the model uses.</p>")
    elif test is None:
        check = ("<p><b>Not tested:</b> nothing here shows that these maps mark what the model uses; run medtl "
                 "explain with --deletion-test on 50 or more images before showing them as evidence.</p>")
    else:
        colour = {"pass": "#e6f4ea", "fail": "#fde7e7"}.get(test["verdict"], "#fff4e0")
        check = (f"<p style='background:{colour};padding:8px'><b>Deletion test: {test['verdict'].upper().replace('_', ' ')}.</b> "
                 f"{html.escape(deletion_summary(test))}</p>")
    (out / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>Grad-CAM</title><style>body{font-family:sans-serif}"
        "figure{display:inline-block;width:300px;margin:6px;vertical-align:top}img{width:100%}"
        "figcaption{font-size:12px}</style>"
        f"<h1>Grad-CAM of {html.escape(model)} ({html.escape(layer)})</h1>{check}<p>Red and opaque: where the "
        "evidence for the explained class is strongest on the layer's grid; blue and faint: weakest (colour bar "
        "beside each overlay). A map shows where the model found evidence, not whether it was right.</p>"
        + cells + (f"<h2>Not explained</h2><ul>{errors}</ul>" if errors else ""), encoding="utf-8")
