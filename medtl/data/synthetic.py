"""Deterministic synthetic images for the demo and fast tests.

Not a substitute for the real data: shapes that look vaguely like a chest radiograph or a brain
scan, with a class signal a network can learn (an opacity in a lung, a lesion in the brain) and a
controllable domain shift (contrast/gamma, blur, noise and a smooth bias field), all from a seed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

LABELS = {"cxr": ("normal", "abnormal"), "mri2d": ("no_tumor", "tumor"), "mri3d": ("no_tumor", "tumor")}


def _grid(shape):
    axes = [np.linspace(-1, 1, n) for n in shape]
    return np.meshgrid(*axes, indexing="ij")


def _shift(img: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    """Domain shift of strength ``shift`` in [0, 1]: gamma, bias field, blur and noise."""
    from scipy.ndimage import gaussian_filter

    img = np.clip(img, 0, 1) ** (1.0 + 0.8 * shift)
    coords = _grid(img.shape)
    bias = 1.0 + 0.3 * shift * sum(c * rng.uniform(-1, 1) for c in coords)
    img = gaussian_filter(img * bias, sigma=0.5 + 1.5 * shift)
    return np.clip(img + rng.normal(0, 0.02 + 0.06 * shift, img.shape), 0, 1)


def cxr_like(label: int, size: int, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    y, x = _grid((size, size))
    body = (x**2 / 0.85 + y**2 / 0.95 < 1).astype(float) * 0.7
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        cx = side * rng.uniform(0.35, 0.45)
        lungs += ((x - cx) ** 2 / 0.07 + (y + 0.05) ** 2 / 0.45) < 1
    img = body - 0.45 * np.clip(lungs, 0, 1)
    if label:
        side = rng.choice([-1, 1])
        cx, cy, r = side * 0.4 + rng.uniform(-0.08, 0.08), rng.uniform(-0.3, 0.3), rng.uniform(0.12, 0.2)
        img += 0.35 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / r**2)
    return _shift(img, shift, rng)


def brain_like(label: int, shape: tuple[int, ...], rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    coords = _grid(shape)
    radii = [rng.uniform(0.75, 0.85) for _ in shape]
    r2 = sum(c**2 / r**2 for c, r in zip(coords, radii))
    img = (r2 < 1) * 0.35 + (r2 < 0.8) * 0.25 + (r2 < 0.3) * 0.1
    if label:
        centre = [rng.uniform(-0.4, 0.4) for _ in shape]
        radius = rng.uniform(0.12, 0.22)
        img = img + 0.4 * np.exp(-sum((c - m) ** 2 for c, m in zip(coords, centre)) / radius**2) * (r2 < 0.9)
    return _shift(img, shift, rng)


def write_synthetic_source(
    out_dir: str | Path, kind: str, n: int, seed: int = 0, shift: float = 0.0, size: int = 64
) -> Path:
    """Write ``n`` images of ``kind`` ('cxr', 'mri2d' PNG; 'mri3d' NIfTI) and a raw manifest.csv.

    Classes alternate, so the set is balanced; returns the manifest path.
    """
    from PIL import Image

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 2
        name = LABELS[kind][label]
        folder = out / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        if kind == "mri3d":
            import nibabel as nib

            vol = brain_like(label, (size, size, size), rng, shift)
            rel = f"images/{name}/case{i:04d}.nii.gz"
            nib.save(nib.Nifti1Image((vol * 1000).astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0])), out / rel)
        else:
            img = cxr_like(label, size, rng, shift) if kind == "cxr" else brain_like(label, (size, size), rng, shift)
            rel = f"images/{name}/case{i:04d}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(out / rel)
        rows.append({"path": rel, "label": name, "patient_id": f"SYN{seed:02d}{i:04d}"})
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "patient_id"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest
