"""Which layer's Grad-CAM places a known lesion best: the experiment behind medtl.evaluation.explain.MIN_CELLS.

A white square (32 px in the 256 px originals) is pasted at a random place into every other one of 320 NIH
chest X-rays; a ResNet-10 learns "square" against "plain" (8 epochs, seed 0), and on the test images that hold
a square each layer's map is scored by where its peak falls, beside the deletion test. Run from the repository
root (about 8 minutes at 128 px on 2 CPU cores, less at 64 px):

    python docs/figures/gradcam_layer_choice.py --size 128 --work /tmp/gradcam_layers
    python docs/figures/gradcam_layer_choice.py --size 64 --work /tmp/gradcam_layers
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medtl.data import Manifest, build_dataset
from medtl.data.build import build_manifest
from medtl.engine.pretrain import pretrain
from medtl.evaluation.explain import deletion_summary, deletion_test, gradcam
from medtl.models import load_checkpoint
from medtl.paths import default_data_root

SIDE = 32  # the square's side in the 256 px originals


def make_images(data_root: Path, folder: Path) -> dict[str, tuple[int, int]]:
    """320 images, every other one with a square; returns each square's corner by relative path."""
    rows = Manifest.load("data_manifests/cxr_nih.csv").rows[::2][:320]
    rng = np.random.default_rng(0)
    corners = {}
    for i, r in enumerate(rows):
        image = np.asarray(Image.open(data_root / r.path).convert("L")).copy()
        label = "square" if i % 2 == 0 else "plain"
        if label == "square":
            x, y = (int(v) for v in rng.integers(16, 256 - 48, size=2))
            image[y:y + SIDE, x:x + SIDE] = 255
            corners[f"{label}/img{i:04d}.png"] = (x, y)
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / label / f"img{i:04d}.png")
    return corners


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--work", type=Path, default=Path("/tmp/gradcam_layers"))
    p.add_argument("--data-root", type=Path, default=None)
    args = p.parse_args()
    images = args.work / "images"
    shutil.rmtree(images, ignore_errors=True)
    corners = make_images(args.data_root or default_data_root(), images)
    manifest = build_manifest(images, images, seed=0, modality="cxr", progress=False)
    t0 = time.perf_counter()
    out = args.work / f"model_{args.size}"
    pretrain(manifest, images, out, arch="resnet10", image_size=args.size, epochs=8, batch_size=32, progress=False,
             seed=0, resume=False)
    print(f"trained in {time.perf_counter() - t0:.0f} s")
    model, meta = load_checkpoint(out / "model.pt")
    model.eval()
    square = meta["label_names"].index("square")
    test = build_dataset(manifest.select(split="test"), images, image_size=args.size, cache="none")
    scale = args.size / 256
    half = SIDE / 2 * scale
    print("| input, layer (grid) | peak within 1.5 half-sides of the square's centre | median distance | deletion test |")
    for layer in ("layer4", "layer3", "layer2", "layer1"):
        distances = []
        for item in test:
            if item["case_id"] not in corners:
                continue
            x, y = (v * scale for v in corners[item["case_id"]])
            cam = gradcam(model, item["image"], f"encoder.{layer}", class_idx=square)
            i, j = np.unravel_index(np.argmax(cam), cam.shape)
            distances.append(float(np.hypot(i - (y + half), j - (x + half))))
        d = np.asarray(distances)
        result = deletion_test(model, test, f"encoder.{layer}", class_idx=square, seed=0)
        diff = result["difference"]
        print(f"| {args.size} px, {layer} | {(d <= 1.5 * half).sum()} of {len(d)} | {np.median(d):.1f} px | "
              f"{diff['mean']:.3f} ({diff['ci'][0]:.3f} to {diff['ci'][1]:.3f}), "
              f"{result.get('constant_maps', 0)} constant maps |")
        print("  ", deletion_summary(result, meta["label_names"]))


if __name__ == "__main__":
    main()
