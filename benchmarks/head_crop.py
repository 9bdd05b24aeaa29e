"""What finding the head costs in the mri3d chain: CropToHead's blob against the threshold it replaced.

The threshold alone (kept here as the reference) let a raw scan's background noise fill every slice; the blob
(medtl.data.transforms.CropToHead.head_box) does not. Both run on the same IXI volumes in one process,
alternating, three rounds; the table gives medians per volume of the box alone and of the whole deterministic
mri3d chain (gunzip, RAS, 2 mm, z-score, crop) with each. Run from the repository root:

    python benchmarks/head_crop.py [--data-root DIR] [--volumes 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from monai.transforms import Compose

from medtl.data import Manifest
from medtl.data.transforms import CropToHead, preset
from medtl.paths import default_data_root


def threshold_box(self, img):
    """The box before the blob: slices where voxels above a tenth of the 1st-99th percentile range gather."""
    x = img.detach().float().amax(0)
    lo, hi = (float(v) for v in torch.quantile(x[::4, ::4, ::4].flatten(), torch.tensor([0.01, 0.99])))
    head = x > lo + self.fraction * (hi - lo)
    box = []
    for axis in range(3):
        counts = head.sum(dim=tuple(a for a in range(3) if a != axis))
        kept = torch.nonzero(counts >= max(1.0, 0.01 * float(counts.max()))).flatten()
        box.append((int(kept[0]), int(kept[-1]) + 1) if hi > lo and len(kept) else None)
    return box


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--volumes", type=int, default=20)
    args = p.parse_args()
    root = args.data_root or default_data_root()
    files = [f"{root}/{r.path}" for r in Manifest.load("data_manifests/mri3d_ixi.csv").rows[: args.volumes]]
    chain = Compose(preset("mri3d", False)[0])
    volumes = [Compose(preset("mri3d", False)[0][:3])({"image": f})["image"].as_tensor() for f in files]
    cropper, blob = CropToHead((80, 96, 80)), CropToHead.head_box
    times: dict[str, list[float]] = {k: [] for k in ("threshold box", "blob box", "threshold chain", "blob chain")}
    try:
        for rnd in range(3):
            order = [("threshold", threshold_box), ("blob", blob)]
            for name, box in order if rnd % 2 == 0 else order[::-1]:
                CropToHead.head_box = box
                t0 = time.perf_counter()
                for v in volumes:
                    cropper.head_box(v)
                times[f"{name} box"].append((time.perf_counter() - t0) / len(volumes))
                t0 = time.perf_counter()
                for f in files:
                    chain({"image": f})
                times[f"{name} chain"].append((time.perf_counter() - t0) / len(files))
    finally:
        CropToHead.head_box = blob
    print(f"{len(files)} IXI volumes, torch threads {torch.get_num_threads()}, medians of 3 alternating rounds")
    print("| measurement | ms per volume | volumes/s |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {np.median(t) * 1e3:.1f} | {1 / np.median(t):.1f} |")


if __name__ == "__main__":
    main()
