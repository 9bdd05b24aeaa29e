"""End to end on the real task: a competent plain MONAI script against ``medtl train``, raw files to a scored test split.

Task: 4-class brain tumour MRI (mri2d_tumor4: glioma / meningioma / no tumour / pituitary), the
manifest's train split for training and its test split for scoring, ResNet-18 (stride-2 stem),
128 px, batch 32, 4 epochs, AdamW with a cosine schedule, flips + a small affine.

- plain: ``benchmarks/plain_monai.py``, written the way MONAI's tutorials write it (a CacheDataset,
  MONAI's ResNet, a standard loop); no medtl code;
- medtl: ``medtl train --amp bf16``, its fastest CPU recipe:
  the same settings with bf16 autocast in channels-last memory, as a user runs it. It also scores
  the validation split every epoch, keeps the best epoch, chooses the operating threshold, and writes
  predictions, a report with bootstrap intervals and a deployable checkpoint, all inside its clock.
  (The default, fp32 on a CPU, does the same work as the plain script at the same speed per image:
  docs/performance.md.)

Both run as a user runs them, each in its own process started from the command line (``python
benchmarks/plain_monai.py``, ``python -m medtl train``): medtl sets OpenMP's wait policy when it is
imported (``medtl.runtime``), which only a fresh process shows. Both clocks run from raw files to the
test predictions, each the wall time of its whole process (interpreter start-up included). The goal is the plain script's test
accuracy; medtl's time counts only if its own test accuracy reaches it. Accuracy and macro AUROC of
both are computed here, with scikit-learn, from the test predictions.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.common import REPO, Row, Settings, data_root, median, status

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


def medtl_arm(s: Settings, root: Path, manifest: Path, *, epochs: int, size: int, seed: int, amp: str = "auto") -> dict:
    """``python -m medtl train`` in its own process, as a user runs it; wall time of the whole process."""
    from medtl.engine.evaluate import precision_dtype
    from medtl.engine.run_folder import RunFolder

    out = s.work_dir / "e2e" / f"medtl-{amp}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "medtl", "train", "--train", str(manifest), "--out", str(out), "--data-root", str(root),
           "--arch", "resnet18", "--image-size", str(size), "--epochs", str(epochs), "--batch-size", "32",
           "--seed", str(seed), "--device", s.device, "--amp", amp, "--no-progress", "--no-resume"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    labels = json.loads((out / "train_inputs.json").read_text())["labels"]
    best = max((r["epoch"] for r in RunFolder.read_log_file(out / "metrics.jsonl") if r.get("best")), default=None)
    dtype = precision_dtype(amp, "cuda" if s.device.startswith("cuda") else "cpu")
    return {"wall_s": wall, **test_scores(out / "predictions.csv", labels), "best_epoch": best,
            "precision": str(dtype).replace("torch.", "") if dtype else "fp32"}


def plain_arm(s: Settings, root: Path, manifest: Path, *, epochs: int, size: int, seed: int, limit: int | None) -> dict:
    """``python benchmarks/plain_monai.py`` in its own process; the process's wall time (start-up included)."""
    result = s.work_dir / "e2e" / f"plain-seed{seed}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "benchmarks" / "plain_monai.py"), "--data-root", str(root), "--manifest",
           str(manifest), "--epochs", str(epochs), "--image-size", str(size), "--seed", str(seed), "--device",
           s.device, "--out", str(result)] + (["--limit", str(limit)] if limit else [])
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    scores = json.loads(result.read_text())
    return {**scores, "script_s": scores["wall_s"], "wall_s": wall}  # the process's wall time, as for medtl


def run(s: Settings) -> list[Row]:
    root = data_root(s)
    if s.smoke:
        manifest, epochs, size, limit = small_manifest(s.work_dir, 48), 1, 64, 48
    else:
        manifest, epochs, size, limit = MANIFEST, 4, 128, None
    reps = 1 if s.smoke else max(1, s.e2e_repeats)
    arms = ("bf16",)
    results = []
    for r in range(reps):  # side by side: each repeat runs every arm on the same seed
        plain = plain_arm(s, root, manifest, epochs=epochs, size=size, seed=r, limit=limit)
        mine = {amp: medtl_arm(s, root, manifest, epochs=epochs, size=size, seed=r, amp=amp) for amp in arms}
        ratio = {amp: m["wall_s"] / plain["wall_s"] if m["accuracy"] >= plain["accuracy"] - 1e-9 else math.inf
                 for amp, m in mine.items()}
        results.append({"plain": plain, "medtl": mine, "ratio": ratio})
    t_plain = median([x["plain"]["wall_s"] for x in results])
    n_train, n_test = results[0]["plain"]["n_train"], results[0]["plain"]["n_test"]
    task = f"mri2d_tumor4 4-class, resnet18 {size}px, {epochs} epochs, {n_train} train / {n_test} test images"

    def accs(scores):
        return " / ".join(f"{x['accuracy']:.3f} (AUROC {x['macro_auroc']:.3f})" for x in scores)

    rows = [Row("e2e", f"plain MONAI script ({task}): test accuracy = the goal", accs([x["plain"] for x in results]),
                data={"epochs": epochs, "image_size": size, "repeats": results}),
            Row("e2e", "plain MONAI script: wall time, raw files to scored test split", f"{t_plain:.0f} s")]
    for amp in arms:
        name = "medtl train" + ("" if amp == "auto" else f" --amp {amp}")
        precision = results[0]["medtl"][amp]["precision"]
        t = median([x["medtl"][amp]["wall_s"] for x in results])
        ratio = median([x["ratio"][amp] for x in results])
        reached = sum(math.isfinite(x["ratio"][amp]) for x in results)
        rows += [
            Row("e2e", f"{name} ({precision} on {s.device}): test accuracy", accs([x["medtl"][amp] for x in results])),
            Row("e2e", f"{name}: wall time, raw files to scored test split (+ val, report, checkpoint)",
                f"{t:.0f} s = {t / t_plain:.2f}x the plain script's (reached its accuracy in {reached}/{len(results)})"),
            Row("e2e", f"{name} / plain wall time to the plain script's accuracy", f"{ratio:.2f}x", f"<= {TARGET}x",
                status(ratio <= TARGET)),
        ]
    return rows
