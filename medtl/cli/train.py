"""medtl train: train a classifier on your own images (a folder or a manifest) and score it.

  medtl train --train FOLDER_OR_MANIFEST --out DIR [--data-root DIR] [--init CKPT] [--val ...] [--test ...]

A folder laid out as <folder>/<label>/<file> becomes a manifest (patient-level, label-stratified
70/15/15 split, near-copies kept in one split). The model trains with full fine-tuning; the binary
threshold is chosen on the validation split; the test split is scored with bootstrap confidence
intervals. DIR then holds model.pt (for medtl predict and medtl export-bundle), predictions.csv,
report.html/.md/.json and the manifest. The last lines printed are the next commands to run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

def register(sub) -> None:
    p = sub.add_parser("train", help="train and score a classifier on your own folder or manifest (no YAML)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--train", required=True, metavar="FOLDER|CSV",
                   help="<folder>/<label>/<file> images, or a manifest CSV; its val/test splits are used unless "
                        "--val/--test are given (required)")
    d.add_argument("--out", required=True, type=Path, help="output folder (required)")
    d.add_argument("--data-root", type=Path, default=None,
                   help="folder manifest paths are relative to (default: the root the manifest's .meta.json "
                        "records, else $MEDTL_DATA_ROOT or ../shared/data; a folder given to --train is its own root)")
    d.add_argument("--val", metavar="FOLDER|CSV", default=None,
                   help="separate validation set, used whole (default: the --train input's val split)")
    d.add_argument("--test", metavar="FOLDER|CSV", default=None,
                   help="separate test set, used whole (default: the --train input's test split)")
    d.add_argument("--modality", choices=["cxr", "mri2d", "mri3d"], default=None,
                   help="preprocessing preset (default: a folder's guessed from its name and files, a manifest's own "
                        "modality column; given, it overrides both)")
    d.add_argument("--seed", type=int, default=0, help="split, initial weights and augmentation seed (default: 0)")
    m = p.add_argument_group("model and training")
    m.add_argument("--init", type=Path, default=None,
                   help="start from these weights: a medtl pretrain model.pt, a pipeline best.pt or local "
                        "torchvision/MONAI weights (default: random initialisation)")
    m.add_argument("--lift", choices=["i3d", "acs", "2.5d"], default=None,
                   help="for 3D images from a 2D --init checkpoint (a chest X-ray encoder): how its 2D filters read "
                        "volumes (docs/models.md; default: none, and a 2D checkpoint on 3D images is refused)")
    m.add_argument("--arch", default=None,
                   help="resnet10/18/34/50 or densenet121 (default: the --init checkpoint's, else resnet18)")
    m.add_argument("--image-size", type=int, nargs="+", default=None,
                   help="image side in pixels; three sizes for 3D volumes (default: the --init checkpoint's, "
                        "else 128 for 2D, 80 96 80 for 3D, also for a 2D checkpoint lifted with --lift)")
    m.add_argument("--spacing", type=float, nargs="+", default=None,
                   help="voxel size in mm of 3D volumes, one or three values (default: the --init checkpoint's; "
                        "else the 160x192x160 mm field of view divided by --image-size: 2 mm at 80 96 80, 4 mm at "
                        "40 48 40)")
    m.add_argument("--epochs", type=int, default=20, help="maximum epochs (default: 20)")
    m.add_argument("--patience", type=int, default=5,
                   help="stop after this many epochs without a better validation loss (default: 5)")
    m.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    m.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-4 with --init, else 1e-3)")
    m.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: 1e-4)")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default: auto = cuda when available)")
    m.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                   help="mixed precision, recorded in the model for medtl predict (default: auto = bf16 on GPU, "
                        "off on CPU; bf16 is faster on a quiet CPU with native bf16)")
    m.add_argument("--workers", type=int, default=0, help="data loader processes (default: 0)")
    m.add_argument("--cache", choices=["memory", "disk", "none"], default="memory",
                   help="cache of decoded images: memory, disk (under OUT/cache, kept for the next run) or none "
                        "(default: memory)")
    m.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (default: no cap)")
    m.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over even if --out holds an unfinished run (default: resume it)")
    m.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (default: bars on)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--positive-class", default=None, metavar="CLASS",
                   help="two classes: the one sensitivity, AUROC and the threshold rules are about (default: the last "
                        "in the manifest's class order, which for a folder is alphabetical, e.g. tumor of "
                        "no_tumor/tumor; printed with the scores)")
    e.add_argument("--threshold-rule", choices=["youden", "sensitivity", "specificity"], default="youden",
                   help="how the binary threshold is chosen on the validation split (default: youden)")
    e.add_argument("--target", type=float, default=None,
                   help="target sensitivity/specificity for those rules, e.g. 0.9 (default: none; needed by them)")
    e.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs (default: 1000)")
    p.set_defaults(func=run)


def run(args) -> int:
    from medtl.pipeline.train import next_commands, train_model

    size = None if args.image_size is None else (args.image_size[0] if len(args.image_size) == 1 else args.image_size)
    r = train_model(
        args.train, args.out, val=args.val, test=args.test, data_root=args.data_root, init=args.init, arch=args.arch,
        lift=args.lift,
        image_size=size, spacing=args.spacing, modality=args.modality,
        positive_class=args.positive_class, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, patience=args.patience, seed=args.seed, device=args.device, amp=args.amp,
        threshold_rule=args.threshold_rule, target=args.target, n_boot=args.n_boot, cache=args.cache,
        num_workers=args.workers, max_steps_per_epoch=args.max_steps_per_epoch, resume=args.resume,
        progress=args.progress,
    )
    counts = ", ".join(f"{k} {len(v)}" for k, v in r.inputs.splits.items())
    positive = f" (positive class {r.inputs.label_names[-1]})" if len(r.inputs.label_names) == 2 else ""
    print(f"data: {counts} images; labels {r.inputs.label_names}{positive}; preset {r.inputs.modality}")
    intensity = r.intensity
    if intensity.get("spacing"):  # what a 3D model sees: its input size is voxels, the head is millimetres
        shape, mm = intensity["volume_shape"], intensity["spacing"]
        print(f"3D input: {'x'.join(map(str, shape))} voxels of {'x'.join(f'{v:g}' for v in mm)} mm (field of view "
              f"{'x'.join(f'{n * v:g}' for n, v in zip(shape, mm))} mm, crop {intensity.get('crop')})")
    for role in ("train", "val", "test"):
        if role == "train" or r.inputs.manifests[role] != r.inputs.manifests["train"]:
            print(f"  {role} manifest: {r.inputs.manifests[role]} (root {r.inputs.roots[role]})")
    print(f"trained {r.epochs_run} epoch(s); best epoch {None if r.best_epoch is None else r.best_epoch + 1}")
    if r.threshold:
        t = r.threshold
        how = f"{t['rule']} on val (n={t.get('n')})" if t.get("chosen_on") else t.get("note", t["rule"])
        print(f"threshold: {t['value']:.4g} ({how}), stored in the model")
    if r.report:
        from medtl.cli.evaluate import summary_lines
        from medtl.evaluation.evaluate import load_report

        for line in summary_lines(load_report(r.report["json"])):
            print(line)
    for note in r.notes:
        print(f"note: {note}")
    print(f"wrote {r.model} (model), {r.predictions} (predictions)"
          + (f", {r.report['html']} (report)" if r.report else ""))
    cmds = next_commands(r, args.train, args.test)
    print("next: predict new images, then evaluate those predictions:")
    for c in cmds:
        print(f"  {c}")
    return 0
