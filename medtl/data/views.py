"""Two augmented views of one image, for self-supervised (contrastive) pretraining.

A contrastive method learns what two random views of the same image share and what views of other
images do not, so the augmentations decide what the features ignore. They are chosen per modality,
not borrowed from natural photographs:

- no colour jitter (images are one channel); intensity is varied instead: gamma, contrast (a
  multiplicative factor), brightness (an offset, in z-score units), Gaussian blur and noise;
- a random resized crop keeps most of the field of view (the anatomy a diagnosis needs is spread over
  the image; tiny crops of lung or brain texture would make the task about texture alone);
- small rotations only (acquisitions are roughly aligned);
- chest X-rays are never flipped left-right: anatomy is lateralised (heart on the left), and a
  flipped film is a different, implausible image. Brain MRI is roughly symmetric and may be flipped.

``VIEW_PRESETS`` holds the parameters (one documented place); :func:`view_chain` builds the random
chain of one view for any number of spatial dimensions; :class:`TwoViews` applies it twice to the
same cached image; :func:`views_dataset` builds the dataset from one or several manifests (each
manifest through its own modality preset, labels ignored)::

    ds, info = views_dataset(["cxr_nih.csv", "cxr_actualmed.csv"], data_root, image_size=64, splits=["train"])
    ds[0]  # {"image": (1, 64, 64) view 1, "image_2": view 2, "label": -1, "case_id", "patient_id", "domain"}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Randomizable,
    Transform,
)
from torch.utils.data import ConcatDataset
from torch.utils.data import Dataset as TorchDataset

from medtl.data.transforms import Preset, plain_tensor, untracked_meta
from medtl.errors import MedtlError

SECOND_VIEW = "image_2"  # batch key of the second view; the first stays "image" (the trainer counts it)

# Blur sigmas are given for a 224-pixel side (SimCLR's scale) and shrink with the image, so a 64 px
# run blurs the same anatomy as a 224 px one. Strengths are milder than ImageNet recipes: on 64 px chest
# X-rays, 60 MoCo steps cut the loss from 5.55 (chance, 256 negatives) to 3.8 with these views but only
# to 4.7 with crops down to 35% of the area, gamma 0.7-1.5 and contrast/brightness 0.3 (and 4-epoch
# runs with those and momentum 0.99 ended near chance); MoCo-CXR (Sowrirajan et al. 2021) likewise kept X-ray views mild.
VIEW_PRESETS: dict[str, dict[str, Any]] = {
    "cxr": {"crop_scale": (0.6, 1.0), "crop_ratio": (3 / 4, 4 / 3), "flip_axes": (), "rotate_deg": 10.0,
            "gamma": (0.8, 1.25), "contrast": 0.2, "brightness": 0.2, "blur_prob": 0.3, "blur_sigma": (0.1, 2.0),
            "noise_prob": 0.3, "noise_std": 0.1},
    "mri2d": {"crop_scale": (0.5, 1.0), "crop_ratio": (3 / 4, 4 / 3), "flip_axes": (1,), "rotate_deg": 15.0,
              "gamma": (0.8, 1.25), "contrast": 0.2, "brightness": 0.2, "blur_prob": 0.3, "blur_sigma": (0.1, 2.0),
              "noise_prob": 0.3, "noise_std": 0.1},
    # RAS volumes: axis 0 is left-right. The crop scale is a fraction of the volume.
    "mri3d": {"crop_scale": (0.6, 1.0), "crop_ratio": (4 / 5, 5 / 4), "flip_axes": (0,), "rotate_deg": 10.0,
              "gamma": (0.8, 1.25), "contrast": 0.2, "brightness": 0.2, "blur_prob": 0.3, "blur_sigma": (0.1, 2.0),
              "noise_prob": 0.3, "noise_std": 0.1},
}


def _rotation(angles: Sequence[float]) -> np.ndarray:
    """Rotation matrix (in array-axis order) from one angle (2D) or three angles (3D, about each axis)."""
    if len(angles) == 1:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    r = np.eye(3)
    for axis, a in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        m = np.eye(3)
        m[i, i] = m[j, j] = math.cos(a)
        m[i, j], m[j, i] = -math.sin(a), math.sin(a)
        r = r @ m
    return r


class RandResizedCropd(RandomizableTransform, MapTransform):
    """A random box of ``scale`` (fraction of the area or volume) with aspect jitter ``ratio``, turned by
    up to ``rotate`` radians (about every axis in 3D), resampled to the input's size in one step.

    Each side is the input's side times ``s ** (1 / d)`` times an aspect factor whose logarithms are
    uniform draws centred to sum to zero (in 2D a triangular log-ratio within ``ratio``; the factors
    multiply to one, so the box keeps fraction ``s`` until a side is clipped to the image), and the box lies inside the image, as in
    torchvision's RandomResizedCrop; corners a rotation moves outside repeat the border. One
    ``grid_sample`` does crop, rotation and resize (one interpolation, not three; MONAI's RandAffined
    was measured at 70 ms per 64 px image here, this at well under 1 ms). Any number of spatial dims.
    """

    def __init__(self, keys, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), rotate: float = 0.0, prob: float = 1.0):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise MedtlError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}", "views.crop_scale")
        self.scale, self.ratio, self.rotate = tuple(scale), tuple(ratio), float(rotate)
        self._theta: torch.Tensor | None = None

    def randomize(self, shape: Sequence[int]) -> None:
        super().randomize(None)
        self._theta = None
        if not self._do_transform:
            return
        d = len(shape)
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        s = self.R.uniform(*self.scale)
        logs = self.R.uniform(lo, hi, size=d) / 2
        logs -= logs.mean()  # the aspect factors multiply to one: the box keeps its fraction s
        frac = np.minimum(s ** (1 / d) * np.exp(logs), 1.0)  # box side / image side, per axis
        centre = np.array([self.R.uniform(-1 + f, 1 - f) for f in frac])  # normalised: the box stays inside
        angles = self.R.uniform(-self.rotate, self.rotate, size=1 if d == 2 else 3)
        half = np.asarray(shape, dtype=float) / 2  # normalised -> pixel units, so rotations are not sheared
        m = np.diag(1 / half) @ _rotation(angles) @ np.diag(half) @ np.diag(frac)
        # affine_grid orders coordinates last axis first (x = width): reverse the axes
        theta = np.concatenate([m[::-1, ::-1], centre[::-1, None]], axis=1)
        self._theta = torch.as_tensor(theta.copy(), dtype=torch.float32)

    def __call__(self, data):
        d = dict(data)
        first = next(iter(self.key_iterator(d)))
        self.randomize(tuple(d[first].shape[1:]))
        if self._theta is None:
            return d
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key]).float()[None]
            grid = F.affine_grid(self._theta[None], list(img.shape), align_corners=False)
            d[key] = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        return d


class RandGaussianBlurd(RandomizableTransform, MapTransform):
    """Gaussian blur with sigma drawn from ``sigma`` (pixels, one per image), separable, reflected edges."""

    def __init__(self, keys, sigma=(0.1, 1.0), prob: float = 0.5):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.sigma = tuple(float(v) for v in sigma)
        self._s = 0.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._s = float(self.R.uniform(*self.sigma))

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if not self._do_transform or self._s <= 0:
            return d
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key]).float()[None]  # (1, C, *S)
            dims = x.ndim - 2
            conv = F.conv2d if dims == 2 else F.conv3d
            for axis in range(dims):
                n = x.shape[2 + axis]
                r = min(max(1, math.ceil(3 * self._s)), n - 1)
                t = torch.arange(-r, r + 1, dtype=torch.float32)
                k = torch.exp(-t**2 / (2 * self._s**2))
                shape = [1] * dims
                shape[axis] = len(k)
                pad = [0] * (2 * dims)
                pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = r  # F.pad lists the last axis first
                xp = F.pad(x, pad, mode="reflect")
                c = x.shape[1]
                x = conv(xp, (k / k.sum()).view(1, 1, *shape).repeat(c, 1, *[1] * dims), groups=c)
            d[key] = x[0]
        return d


class _Plain(Transform):
    """A plain contiguous float32 tensor (collates faster; views need no metadata)."""

    def __call__(self, data):
        return {**data, "image": plain_tensor(data["image"])}


def view_options(modality: str, **overrides) -> dict[str, Any]:
    if modality not in VIEW_PRESETS:
        raise MedtlError(f"no view preset for modality {modality!r}; known: {sorted(VIEW_PRESETS)}", "views")
    unknown = set(overrides) - set(VIEW_PRESETS[modality])
    if unknown:
        raise MedtlError(f"unknown view option(s) {sorted(unknown)}; known: {sorted(VIEW_PRESETS[modality])}", "views")
    return {**VIEW_PRESETS[modality], **{k: v for k, v in overrides.items() if v is not None}}


def view_chain(modality: str, spatial_size: int | Sequence[int], **overrides) -> Compose:
    """The random chain that makes one view of a (cached, z-scored) image of ``modality``."""
    o = view_options(modality, **overrides)
    size = (spatial_size,) * Preset(modality).spatial_dims if isinstance(spatial_size, int) else tuple(spatial_size)
    k = ["image"]
    rot = math.radians(float(o["rotate_deg"]))
    sig = tuple(float(s) * min(size) / 224 for s in o["blur_sigma"])
    chain: list = [_Plain(), RandResizedCropd(k, o["crop_scale"], o["crop_ratio"], rotate=rot)]
    chain += [RandFlipd(k, prob=0.5, spatial_axis=a) for a in o["flip_axes"]]
    chain += [
        RandAdjustContrastd(k, prob=0.8, gamma=tuple(o["gamma"])),
        RandScaleIntensityd(k, factors=float(o["contrast"]), prob=0.8),
        RandShiftIntensityd(k, offsets=float(o["brightness"]), prob=0.8),
        RandGaussianBlurd(k, sig, prob=float(o["blur_prob"])),
        RandGaussianNoised(k, prob=float(o["noise_prob"]), std=float(o["noise_std"])),
        _Plain(),
    ]
    return Compose(chain)


class TwoViews(Randomizable, Transform):
    """``item`` -> ``{**item, "image": view 1, "image_2": view 2}``: one chain drawn twice, so the two
    views come from the same image and differ by independent random draws."""

    def __init__(self, chain: Compose, key: str = "image", second_key: str = SECOND_VIEW):
        self.chain, self.key, self.second_key = chain, key, second_key

    def set_random_state(self, seed=None, state=None):
        self.chain.set_random_state(seed, state)  # the trainer reseeds every epoch through this
        return self

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, item: dict) -> dict:
        out = dict(item)
        out[self.key] = self.chain({"image": item[self.key]})["image"]
        out[self.second_key] = self.chain({"image": item[self.key]})["image"]
        return out


class ViewsDataset(TorchDataset):
    """Pairs of views over a deterministic (cached) dataset; labels are replaced by -1 (not used)."""

    def __init__(self, base, transform: TwoViews):
        self.base = base
        self.transform = transform  # named `transform` so MONAI's worker seeding and set_rnd find it

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        with untracked_meta():
            out = self.transform({"image": item["image"]})
        return {"image": out["image"], SECOND_VIEW: out[SECOND_VIEW], "label": torch.tensor(-1, dtype=torch.long),
                **{k: item[k] for k in ("case_id", "patient_id", "domain") if k in item}}


def views_dataset(
    manifests,
    data_root: str | Path | None = None,
    *,
    image_size: int | Sequence[int] = 128,
    spacing: Sequence[float] | None = None,
    splits: Sequence[str] = ("train",),
    cache: str = "memory",
    on_error: str = "raise",
    run_dir: str | Path | None = None,
    **view_overrides,
) -> tuple[TorchDataset, dict[str, Any]]:
    """Two-view dataset over the ``splits`` rows of one or several manifests (labels ignored).

    Each manifest is read from ``data_root`` (else the root its meta file records) through its own
    modality's deterministic preset, then augmented with that modality's view preset, so chest X-rays
    and brain MRI can be mixed (no flips for the X-rays, flips for the MRI). All manifests must have the
    same number of spatial dimensions; volumes are resampled to ``spacing`` (mm; default the preset's) and
    fitted to ``image_size`` (three sides). Returns ``(dataset, info)``; ``info`` lists, per manifest, its
    modality, row count and content hash.
    """
    from medtl.data.datasets import build_dataset
    from medtl.data.manifest import Manifest, data_root_for

    if isinstance(manifests, (str, Path, Manifest)):
        manifests = [manifests]
    if not manifests:
        raise MedtlError("no manifests given", "manifests")
    loaded = [entry if isinstance(entry, Manifest) else Manifest.load(entry) for entry in manifests]
    modalities = sorted({r.modality for m in loaded for r in m if r.split in set(splits)})
    if "mri3d" in modalities and len(modalities) > 1:  # refused before any image is read
        raise MedtlError(f"manifests mix 2D and 3D images ({modalities}); pretrain each apart", "manifests")
    parts, info = [], []
    for m in loaded:
        rows = [r for r in m if r.split in set(splits)]
        if not rows:
            raise MedtlError(f"no rows in split(s) {list(splits)}", m.source or "manifest")
        root = data_root_for(m, data_root)
        for modality in sorted({r.modality for r in rows}):
            sub = Manifest([r for r in rows if r.modality == modality], list(m.label_names), dict(m.meta), m.source)
            dims = Preset(modality).spatial_dims
            if isinstance(image_size, int):
                size = (image_size,) * dims
            else:
                size = tuple(int(s) for s in image_size)
            if len(size) != dims:
                raise MedtlError(f"image_size {image_size!r} does not fit {modality} ({dims}D) images", m.source)
            if dims == 3:
                options = {"volume_shape": size, **({"spacing": tuple(float(v) for v in spacing)} if spacing else {})}
            else:
                options = {"image_size": size[0]}
            base = build_dataset(sub, root, modality, False, cache=cache, on_error=on_error, run_dir=run_dir, **options)
            parts.append(ViewsDataset(base, TwoViews(view_chain(modality, size, **view_overrides))))
            info.append({"manifest": str(m.source) if m.source else None, "modality": modality, "dims": dims,
                         "splits": list(splits), "rows": len(sub), "items": len(base), "hash": sub.content_hash(),
                         "preset_options": options, "domains": sorted({r.domain for r in sub})})
    return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), {"parts": info}


__all__ = ["SECOND_VIEW", "VIEW_PRESETS", "RandResizedCropd", "TwoViews", "ViewsDataset", "view_chain",
           "view_options", "views_dataset"]
