"""How much of each IXI head the mri3d field of view keeps: the head crop (the default) against the centre crop
of checkpoints that predate it. Run from the repository root (about half a minute on 2 CPU cores):

    python docs/figures/mri3d_crop.py            # prints the table, writes docs/figures/mri3d_crop.png

For every volume of data_manifests/mri3d_ixi.csv, resampled as the preset does (RAS, 2 mm), the head is
CropToHead's box (the slices where voxels brighter than a tenth of the way to the 99th percentile gather);
"above" is how many mm of it lie above the model's 160 mm tall field of view, "outside" the fraction of its
bright voxels the field of view leaves out. The figure shows the mid-sagittal slice of four model inputs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose

from medtl.data import Manifest
from medtl.data.transforms import DEFAULTS, CropToHead, preset
from medtl.evaluation.figures import subplots, to_png
from medtl.paths import default_data_root

SHOWN = (0, 30, 60, 90)  # manifest rows drawn in the figure


def centre_start(n: int, size: int) -> int:
    """Where MONAI's ResizeWithPadOrCrop (the centre crop) starts along an axis of ``n`` voxels."""
    return max((n - size) // 2, 0) if n > size else -((size - n) // 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("docs/figures/mri3d_crop.png"))
    args = p.parse_args()
    root = args.data_root or default_data_root()
    rows = Manifest.load("data_manifests/mri3d_ixi.csv").rows
    shape = tuple(DEFAULTS["mri3d"]["volume_shape"])
    resampled = Compose(preset("mri3d", False)[0][:3])  # load, RAS, 2 mm: before any crop
    chains = {"center": Compose(preset("mri3d", False, crop="center")[0]), "head": Compose(preset("mri3d", False)[0])}
    cropper = CropToHead(shape)
    above = {"center": [], "head": []}
    outside = {"center": [], "head": []}
    shown = {"center": [], "head": []}
    for i, r in enumerate(rows):
        v = resampled({"image": str(root / r.path)})["image"].as_tensor()
        box = cropper.head_box(v)
        x = v[0].float()
        lo, hi = float(x.min()), float(torch.quantile(x[::4, ::4, ::4].flatten(), 0.99))
        bright = (x > lo + 0.1 * (hi - lo)).float()[None]
        for crop in ("center", "head"):
            if crop == "head":
                kept = float(cropper(bright).sum())
                z0 = box[2][1] - shape[2] if box[2][1] - box[2][0] > shape[2] else sum(box[2]) // 2 - shape[2] // 2
            else:
                starts = [centre_start(n, s) for n, s in zip(x.shape, shape)]
                window = tuple(slice(max(a, 0), a + s) for a, s in zip(starts, shape))
                kept, z0 = float(bright[(0, *window)].sum()), starts[2]
            above[crop].append(max(0, box[2][1] - (z0 + shape[2])) * 2.0)
            outside[crop].append(1 - kept / float(bright.sum()))
            if i in SHOWN:
                shown[crop].append(chains[crop]({"image": str(root / r.path)})["image"][0, shape[0] // 2].T.flip(0))
    print(f"{len(rows)} IXI volumes, field of view {'x'.join(map(str, shape))} voxels of 2 mm")
    print("| crop | head above the field of view, median (max) mm | bright voxels outside, median (max) |")
    print("|---|---|---|")
    for crop in ("center", "head"):
        a, o = np.asarray(above[crop]), np.asarray(outside[crop])
        print(f"| {crop} | {np.median(a):.0f} ({a.max():.0f}) | {np.median(o):.1%} ({o.max():.1%}) |")
    fig, axes = subplots(2, len(SHOWN), figsize=(2.2 * len(SHOWN), 4.0))
    for row, crop in enumerate(("center", "head")):
        for col, img in enumerate(shown[crop]):
            ax = axes[row][col]
            ax.imshow(img.numpy(), cmap="gray", vmin=float(np.percentile(img, 1)), vmax=float(np.percentile(img, 99.5)))
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"crop={crop}")
    fig.suptitle("mri3d model input, mid-sagittal slice (IXI): the centre crop cuts the top of the head")
    args.out.write_bytes(to_png(fig))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
