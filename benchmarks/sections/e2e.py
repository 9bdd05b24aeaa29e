"""End to end on the real task: a competent plain MONAI script against ``medtl train``, raw files to a scored test split.

Task: 4-class brain tumour MRI (mri2d_tumor4: glioma / meningioma / no tumour / pituitary), the
manifest's train split for training and its test split for scoring, ResNet-18 (stride-2 stem),
128 px, batch 32, 4 epochs, AdamW with a cosine schedule, flips + a small affine.

- plain: ``benchmarks/plain_monai.py``, written the way MONAI's tutorials write it (a CacheDataset,
  MONAI's ResNet, a standard loop); no medtl code;
- medtl: ``medtl train`` (``medtl.pipeline.train.train_model``) with its defaults and the same
  settings, as a user runs it: it also scores the validation split every epoch, keeps the best epoch,
  chooses the operating threshold, and writes predictions, a report with bootstrap intervals and a
  deployable checkpoint, all inside its clock.

Both clocks run from raw files to the test predictions. The goal is the plain script's test
accuracy; medtl's time counts only if its own test accuracy reaches it. Accuracy and macro AUROC of
both are computed here, with scikit-learn, from the test predictions.
"""

from __future__ import annotations

import csv
import math
import shutil
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.common import REPO, Row, Settings, data_root, median, status
from benchmarks.plain_monai import train_and_test

TARGET = 0.5  # medtl's wall time at most half the plain script's
MANIFEST = REPO / "data_manifests" / "mri2d_tumor4.csv"


def small_manifest(work: Path, per_split: int) -> Path:
    """The manifest with ``per_split`` rows of each split, spread over its classes (smoke runs)."""
    with open(MANIFEST, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    keep = []
    for split in ("train", "val", "test"):
        part = [r for r in rows if r["split"] == split]
        keep += part[:: max(1, len(part) // per_split)][:per_split]
    out = work / "e2e" / f"mri2d_tumor4_{per_split}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(keep)
    return out


def test_scores(predictions: Path, label_names: list[str]) -> dict[str, float]:
    """Accuracy and macro AUROC of the test rows of a medtl predictions table (scikit-learn)."""
    with open(predictions, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    p = np.array([[float(r[f"prob_{c}"]) for c in label_names] for r in rows])
    y = np.array([label_names.index(r["label"]) for r in rows])
    return {"accuracy": float((p.argmax(1) == y).mean()),
            "macro_auroc": float(roc_auc_score(y, p, multi_class="ovr", average="macro")), "n_test": len(y)}


def medtl_arm(s: Settings, root: Path, manifest: Path, *, epochs: int, size: int, seed: int) -> dict:
    from medtl.engine.evaluate import precision_dtype
    from medtl.pipeline.train import train_model

    out = s.work_dir / "e2e" / f"medtl-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = train_model(manifest, out, data_root=root, arch="resnet18", image_size=size, epochs=epochs,
                         batch_size=32, seed=seed, device=s.device, resume=False, progress=False)
    wall = time.perf_counter() - start
    dtype = precision_dtype("auto", "cuda" if s.device.startswith("cuda") else "cpu")
    return {"wall_s": wall, **test_scores(result.predictions, result.inputs.label_names),
            "best_epoch": result.best_epoch, "precision": str(dtype).replace("torch.", "") if dtype else "fp32"}


def run(s: Settings) -> list[Row]:
    root = data_root(s)
    if s.smoke:
        manifest, epochs, size, limit = small_manifest(s.work_dir, 48), 1, 64, 48
    else:
        manifest, epochs, size, limit = MANIFEST, 4, 128, None
    reps = 1 if s.smoke else max(1, s.e2e_repeats)
    results = []
    for r in range(reps):  # side by side: each repeat runs both arms on the same seed
        plain = train_and_test(root, epochs=epochs, image_size=size, seed=r, manifest=manifest, limit=limit,
                               device=s.device)
        mine = medtl_arm(s, root, manifest, epochs=epochs, size=size, seed=r)
        reached = mine["accuracy"] >= plain["accuracy"] - 1e-9
        results.append({"plain": plain, "medtl": mine, "ratio": mine["wall_s"] / plain["wall_s"] if reached else math.inf})
    t_plain = median([x["plain"]["wall_s"] for x in results])
    t_medtl = median([x["medtl"]["wall_s"] for x in results])
    ratio = median([x["ratio"] for x in results])
    reached = sum(math.isfinite(x["ratio"]) for x in results)

    def accs(arm):
        return " / ".join(f"{x[arm]['accuracy']:.3f} (AUROC {x[arm]['macro_auroc']:.3f})" for x in results)

    n_train, n_test = results[0]["plain"]["n_train"], results[0]["plain"]["n_test"]
    task = f"mri2d_tumor4 4-class, resnet18 {size}px, {epochs} epochs, {n_train} train / {n_test} test images"
    data = {"epochs": epochs, "image_size": size, "repeats": results, "precision": results[0]["medtl"]["precision"]}
    return [
        Row("e2e", f"plain MONAI script ({task}): test accuracy = the goal", accs("plain"), data=data),
        Row("e2e", "plain MONAI script: wall time, raw files to scored test split", f"{t_plain:.0f} s"),
        Row("e2e", f"medtl train (defaults: {results[0]['medtl']['precision']} on {s.device}): test accuracy",
            accs("medtl")),
        Row("e2e", "medtl train: wall time, raw files to scored test split (+ val, report, checkpoint)",
            f"{t_medtl:.0f} s (reached the goal in {reached}/{len(results)})"),
        Row("e2e", "medtl / plain wall time to the plain script's accuracy", f"{ratio:.2f}x", f"<= {TARGET}x",
            status(ratio <= TARGET)),
    ]
