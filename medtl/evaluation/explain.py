"""Grad-CAM explanations (MONAI's ``monai.visualize.GradCAM``) saved as PNG overlays.

2D images get one overlay; 3D volumes get three orthogonal slices through the voxel where the map
peaks (labelled sagittal / coronal / axial for RAS-oriented volumes, MONAI's (x, y, z) axis order).
The PNGs can be passed to the report (``gradcam=[...]``), which embeds them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from medtl.errors import MedtlError
from medtl.evaluation.figures import _plt, to_png

__all__ = ["gradcam", "overlay_png", "save_gradcam"]


def gradcam(model: nn.Module, image, target_layer: str, class_idx: int | None = None) -> np.ndarray:
    """Grad-CAM map of one image ``(C, *spatial)`` (or ``(1, C, *spatial)``), upsampled to the image, in [0, 1].

    ``class_idx`` is the class explained (default: the predicted one). The model is run in eval mode
    (batch statistics of one image would be meaningless) and restored to its previous mode.
    """
    from monai.visualize import GradCAM  # lazy: only explanations need it

    x = torch.as_tensor(image.detach() if torch.is_tensor(image) else np.asarray(image), dtype=torch.float32)
    dims = _spatial_dims(model)
    if x.ndim == dims + 1:
        x = x[None]
    if x.ndim != dims + 2 or x.shape[0] != 1:
        raise MedtlError(f"expected one {dims}D image (C, *spatial), got shape {tuple(x.shape)}", "image")
    names = dict(model.named_modules())
    if target_layer not in names:
        raise MedtlError(f"no layer {target_layer!r} in the model (e.g. {', '.join(list(names)[1:6])} ...)",
                         "target_layer")  # fmt: skip
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        cam = GradCAM(nn_module=model, target_layers=target_layer)
        out = cam(x.to(device), class_idx=class_idx)
    finally:
        model.train(was_training)
    return out[0, 0].detach().cpu().numpy()


def _spatial_dims(model: nn.Module) -> int:
    # The first convolution tells whether the model takes 2D images or 3D volumes.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            return 2 if isinstance(m, nn.Conv2d) else 3
    raise MedtlError("the model has no 2D or 3D convolution to explain", "model")


def _norm(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, [1, 99])
    return np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a, dtype=float)


def _peak(cam: np.ndarray) -> tuple[int, ...]:
    # Upsampled maps have plateaus, where argmax returns the plateau's first corner; the centre of
    # the voxels within 5% of the maximum is the peak a reader expects.
    idx = np.argwhere(cam >= cam.max() - 0.05 * (cam.max() - cam.min()))
    centre = idx.mean(axis=0)
    nearest = idx[np.argmin(((idx - centre) ** 2).sum(axis=1))]  # stay on a peak voxel
    return tuple(int(v) for v in nearest)


def overlay_png(image, cam, title: str | None = None, alpha: float = 0.6) -> bytes:
    """PNG of the map over the image's first channel: one panel (2D) or three orthogonal slices (3D)."""
    plt = _plt()
    img = np.asarray(image, dtype=float)
    img = img[0] if img.ndim == np.asarray(cam).ndim + 1 else img  # drop the channel axis
    cam = np.asarray(cam, dtype=float)
    if img.shape != cam.shape:
        raise MedtlError(f"image {img.shape} and map {cam.shape} differ in shape", "gradcam")
    if cam.ndim == 2:
        panels = [("", img, cam, None)]
    elif cam.ndim == 3:
        p = _peak(cam)
        panels = [
            (f"sagittal x={p[0]}", img[p[0]], cam[p[0]], (p[1], p[2])),
            (f"coronal y={p[1]}", img[:, p[1]], cam[:, p[1]], (p[0], p[2])),
            (f"axial z={p[2]}", img[:, :, p[2]], cam[:, :, p[2]], (p[0], p[1])),
        ]
    else:
        raise MedtlError(f"Grad-CAM overlays need 2D or 3D maps, got {cam.ndim}D", "gradcam")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    volume = cam.ndim == 3
    for ax, (name, im, cm, peak) in zip(axes[0], panels):
        # 2D images are (rows, columns): shown as stored. Slices of RAS volumes are transposed so the
        # first axis runs left-right and the second bottom-up.
        view = (lambda a: a.T) if volume else (lambda a: a)
        origin = "lower" if volume else "upper"
        ax.imshow(_norm(view(im)), cmap="gray", origin=origin)
        # Opacity follows the map, so weak activation leaves the anatomy visible.
        rgba = plt.get_cmap("jet")(np.clip(view(cm), 0, 1))
        rgba[..., 3] = alpha * np.clip(view(cm), 0, 1)
        ax.imshow(rgba, origin=origin)
        if peak is not None:
            ax.plot(peak[0], peak[1], "w+", ms=10, mew=1.5)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return to_png(fig)


def save_gradcam(
    model: nn.Module,
    image,
    path: str | Path,
    target_layer: str,
    class_idx: int | None = None,
    title: str | None = None,
) -> Path:
    """Compute Grad-CAM for one image or volume and save the overlay PNG to ``path``."""
    cam = gradcam(model, image, target_layer, class_idx)
    img = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    img = img[0] if img.ndim == cam.ndim + 2 else img  # drop a batch axis, keep (C, *spatial)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(overlay_png(img, cam, title))
    return path
