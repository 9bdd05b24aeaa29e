"""MONAI transform chains, one preset per modality.

Each preset is a deterministic part (loaded, reoriented, resampled, normalised, sized: cached once)
followed by a random training part (augmentation: run every epoch). Presets:

``cxr`` (chest X-ray: PNG/JPEG/DICOM, 8/16-bit, MONOCHROME1 already inverted by the reader)
    load -> one channel -> optional CLAHE -> clip to the 0.5-99.5 percentiles and scale to [0, 1]
    -> resize to ``image_size`` square -> z-score. Augment: small rotation/scale/translation,
    contrast (gamma) and Gaussian noise. No flips: the heart is on the left.
``mri2d`` (brain MRI slices: JPEG/PNG of any mode and size)
    load -> one channel -> percentile scaling -> resize -> z-score. Augment: left-right flip
    (the brain is roughly symmetric), small rotation/scale, contrast and noise.
``mri3d`` (brain MRI volumes: NIfTI or DICOM series)
    load with affine -> RAS orientation -> resample to ``spacing`` mm -> crop/pad to ``volume_shape``
    around the head (``crop="head"``: :class:`CropToHead`, which keeps the top of the head where the
    volume is taller than the field of view) -> z-score over non-zero voxels only, so the empty
    background does not dilute the statistics. Augment: left-right flip, small affine, intensity
    shift, noise. ``crop="center"`` is the chain of checkpoints that predate the option (z-score, then
    a crop/pad about the volume's centre, which cut the top of the cortex in tall head volumes).

A checkpoint records every option of its chain; :func:`recorded_options` reads an older record with
the values its medtl used (:data:`RECORDED_BEFORE`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor, get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    MapTransform,
    NormalizeIntensity,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandShiftIntensityd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    Transform,
)
from monai.transforms.utils import create_rotate, create_scale, create_shear, create_translate

from medtl.data import io
from medtl.errors import MedtlError

PRESETS = ("cxr", "mri2d", "mri3d")
DEFAULTS = {
    "cxr": {"image_size": 128, "clahe": False},
    "mri2d": {"image_size": 128},
    "mri3d": {"spacing": (2.0, 2.0, 2.0), "volume_shape": (80, 96, 80), "crop": "head"},
}
# What a checkpoint's recorded options meant before each option existed (and before every option was
# recorded): the defaults of that time. A record's own values always win over these.
RECORDED_BEFORE = {**DEFAULTS, "mri3d": {**DEFAULTS["mri3d"], "crop": "center"}}
CROPS = ("head", "center")
# Bumped whenever a preset chain computes other values for the same options: caches of preprocessed images
# (medtl.data.datasets.chain_key) then miss instead of serving images of the old chain.
CHAIN_VERSION = 4  # 4: image affines rounded to float32 (a DICOM series resamples as its NIfTI does)


@dataclass(frozen=True)
class Preset:
    """A modality's preset: what it reads (``spatial_dims``) and which options it takes.

    The one place that knows a modality's dimensionality; pipeline, engine, deploy and similarity ask it.
    """

    name: str

    def __post_init__(self):
        if self.name not in PRESETS:
            raise MedtlError(f"unknown modality preset {self.name!r}; known: {list(PRESETS)}", "modality")

    @property
    def spatial_dims(self) -> int:
        return 3 if self.name == "mri3d" else 2

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(DEFAULTS[self.name])

    def options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The options of ``given`` this preset takes (a data spec names both 2D and 3D ones)."""
        return {k: v for k, v in given.items() if k in DEFAULTS[self.name]}

    def resolved(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option of this preset: ``options`` over the defaults (None means the default); refuses others."""
        unknown = set(options) - set(DEFAULTS[self.name])
        if unknown:
            raise MedtlError(f"unknown option(s) {sorted(unknown)} for preset {self.name!r}", "transforms")
        return {**DEFAULTS[self.name], **{k: v for k, v in options.items() if v is not None}}


def voxel_spacing(volume_shape: Sequence[int], spacing=None) -> tuple[float, float, float]:
    """The voxel size (mm) of a 3D input of ``volume_shape``: ``spacing`` (one value or three, all positive), else
    the size at which it covers the mri3d preset's field of view (160x192x160 mm): a smaller input sees the whole
    head coarser, not the top of it at 2 mm."""
    if spacing is None:
        default = DEFAULTS["mri3d"]
        return tuple(s * n / m for s, n, m in zip(default["spacing"], default["volume_shape"], volume_shape))
    values = [float(x) for x in (spacing if isinstance(spacing, (list, tuple)) else [spacing])]
    values = values * 3 if len(values) == 1 else values
    if len(values) != 3 or min(values) <= 0:
        raise MedtlError(f"give one or three positive voxel sizes in mm, got {spacing!r}", "--spacing")
    return tuple(values)


def recorded_options(intensity: Mapping[str, Any], missing: Mapping[str, dict] = RECORDED_BEFORE) -> dict[str, Any]:
    """A checkpoint's recorded preprocessing (``{"preset": ..., **options}``) with every option of its preset:
    one it lacks takes the value the medtl that wrote it used (:data:`RECORDED_BEFORE`), not today's default.
    ``missing=DEFAULTS`` completes a record being written now (what the chain ran with)."""
    name = intensity["preset"]
    Preset(name)  # refuses an unknown preset
    options = {k: v for k, v in intensity.items() if k != "preset" and v is not None}
    return {"preset": name, **missing[name], **options}


class LoadMedicalImage(Transform):
    """Path -> channel-first MetaTensor (2D ``(1, H, W)`` or 3D ``(1, X, Y, Z)`` with its affine).

    ``ndim`` (2 or 3), when given, refuses files of the other dimensionality with a clear error.
    """

    def __init__(self, ndim: int | None = None):
        self.ndim = ndim

    def __call__(self, path) -> MetaTensor:
        image = io.read(path)
        if self.ndim is not None and image.array.ndim != self.ndim:
            raise MedtlError(f"expected a {self.ndim}D image, got shape {image.array.shape}", path)
        if image.array.ndim == 3:
            io.require_geometry(image, path)
        tensor = torch.from_numpy(np.ascontiguousarray(image.array))[None]
        meta = {"filename_or_obj": str(path), "format": image.meta.get("format", "")}
        return MetaTensor(tensor, affine=torch.as_tensor(image.affine, dtype=torch.float64), meta=meta)


class LoadMedicalImaged(MapTransform):
    def __init__(self, keys, ndim: int | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(ndim)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


class CLAHE(Transform):
    """Contrast-limited adaptive histogram equalisation (scikit-image), per channel, output in [0, 1]."""

    def __init__(self, clip_limit: float = 0.01, kernel_fraction: float = 1 / 8):
        self.clip_limit = clip_limit
        self.kernel_fraction = kernel_fraction

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        from skimage.exposure import equalize_adapthist

        arr = img.detach().cpu().numpy().astype(np.float64)
        out = np.empty_like(arr)
        for c in range(arr.shape[0]):
            ch = arr[c]
            lo, hi = ch.min(), ch.max()
            scaled = (ch - lo) / (hi - lo) if hi > lo else np.zeros_like(ch)
            kernel = max(8, int(min(ch.shape) * self.kernel_fraction))
            out[c] = equalize_adapthist(scaled, kernel_size=kernel, clip_limit=self.clip_limit)
        result = torch.as_tensor(out, dtype=torch.float32)
        return MetaTensor(result, meta=getattr(img, "meta", {})) if isinstance(img, MetaTensor) else result


class CLAHEd(MapTransform):
    def __init__(self, keys: Sequence[str], clip_limit: float = 0.01, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.clahe = CLAHE(clip_limit)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clahe(d[key])
        return d


def preset(modality: str, train: bool, **options) -> tuple[list, list]:
    """(deterministic transforms, random transforms) for ``modality``; see the module docstring."""
    spec = Preset(modality)  # refuses an unknown modality
    dims, opts = spec.spatial_dims, spec.resolved(options)
    k = ["image"]
    if dims == 2:
        size = (int(opts["image_size"]),) * 2
        det = [LoadMedicalImaged(k, ndim=2)]
        if opts.get("clahe"):
            det.append(CLAHEd(k))
        det += [
            _percentile_scaled(k, lower=0.5, upper=99.5),
            Resized(k, spatial_size=size, mode="area"),
            NormalizeIntensityd(k),
        ]
        rand = [
            FastRandAffined(k, prob=0.5, rotate_range=0.17, scale_range=0.1, translate_range=size[0] // 16,
                            padding_mode="border"),
            RandAdjustContrastd(k, prob=0.3, gamma=(0.8, 1.25)),
            RandGaussianNoised(k, prob=0.2, std=0.05),
        ]
        if modality == "mri2d":
            rand.insert(0, RandFlipd(k, prob=0.5, spatial_axis=1))
    else:
        shape = tuple(int(n) for n in opts["volume_shape"])
        if opts["crop"] not in CROPS:
            raise MedtlError(f"crop must be one of {list(CROPS)}, got {opts['crop']!r}", "transforms")
        det = [
            LoadMedicalImaged(k, ndim=3),
            Orientationd(k, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(k, pixdim=tuple(opts["spacing"]), mode="bilinear"),
        ]
        if opts["crop"] == "head":
            det += [CropToHeadd(k, shape), _nonzero_z_scored(k)]
        else:  # the chain before crop="head": z-score the whole volume, then crop about its centre
            det += [_nonzero_z_scored(k), ResizeWithPadOrCropd(k, spatial_size=shape)]
        rand = [
            RandFlipd(k, prob=0.5, spatial_axis=0),  # RAS axis 0 is left-right
            RandAffined(k, prob=0.3, rotate_range=0.1, scale_range=0.05, padding_mode="zeros"),
            RandShiftIntensityd(k, offsets=0.1, prob=0.3),
            RandGaussianNoised(k, prob=0.2, std=0.05),
        ]
    return det, (rand if train else [])


# MONAI's switch for metadata tracking is one flag for the whole process: a thread that turned it off
# would strip the affine from another thread's resampling. Whoever changes it, or runs transforms that
# read the affine beside threads that may change it, holds this lock.
METADATA_LOCK = threading.RLock()


@contextlib.contextmanager
def untracked_meta():
    """MONAI transforms without metadata bookkeeping (plain tensors in, plain tensors out).

    A MetaTensor sends every small tensor operation through Python bookkeeping: half of a 2D training
    item's augmentation time, most of its collation and a third of its caching. Only orientation and
    resampling read the metadata (the affine); everything after them runs without it.
    """
    with METADATA_LOCK:
        previous = get_track_meta()
        set_track_meta(False)
        try:
            yield
        finally:
            set_track_meta(previous)


def split_at_metadata(transforms: list) -> tuple[list, list]:
    """``(tracked, untracked)``: a deterministic chain cut after its last transform that may read metadata.

    The untracked part holds only transforms whose result does not depend on the image's metadata
    (scaling, resizing, z-scores, CLAHE); orientation, resampling and any transform added to a preset
    later stay in the tracked part, on a MetaTensor. Run the untracked part under :func:`untracked_meta`.
    """
    meta_free = (ScaleIntensityRangePercentilesd, Resized, NormalizeIntensityd, ResizeWithPadOrCropd, CLAHEd,
                 CropToHeadd)
    cut = len(transforms)
    while cut > 0 and type(transforms[cut - 1]) in meta_free:
        cut -= 1
    return list(transforms[:cut]), list(transforms[cut:])


class SplitChain:
    """A deterministic chain run the fast way: its ``tracked`` part (the loader, orientation, resampling:
    :func:`split_at_metadata`) on MetaTensors, the rest without metadata; the image comes out as a plain
    float32 tensor. The one runner for the dataset cache and batch inference.

    One item at a time: the untracked part turns MONAI's process-wide metadata switch off, so the whole
    call holds :data:`METADATA_LOCK`; threads would take turns, so the memory cache is filled by worker
    processes (``medtl.data.datasets.fill_cache``).
    """

    def __init__(self, transforms: list):
        self.tracked, self.untracked = split_at_metadata(transforms)

    def __call__(self, data: dict) -> dict:
        with METADATA_LOCK:
            for t in self.tracked:
                data = t(data)
            data = {**data, "image": plain_tensor(data["image"])}
            if self.untracked:
                with untracked_meta():
                    for t in self.untracked:
                        data = t(data)
                data = {**data, "image": plain_tensor(data["image"])}
        return data


def plain_tensor(x) -> torch.Tensor:
    """A MetaTensor (or array) as a plain contiguous float32 tensor."""
    x = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
    return x.float().contiguous()


class PercentileScale(ScaleIntensityRangePercentiles):
    """MONAI's percentile scaling with both percentiles from one ``np.percentile`` call.

    MONAI computes each percentile with ``torch.quantile`` (a full sort, twice per image: most of a
    2D image's preprocessing time, 12 ms for a 224 px JPEG); numpy selects (``np.partition``) once
    for both. Same definition (linear interpolation), same values up to float rounding
    (tests/data/test_fast_transforms.py compares with MONAI's own on real images).
    """

    def _normalize(self, img):
        array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        a_min, a_max = (float(v) for v in np.percentile(array, [self.lower, self.upper]))
        scaled = ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=self.b_min, b_max=self.b_max, clip=self.clip,
                                     dtype=self.dtype)(img)
        return scaled.as_tensor() if isinstance(scaled, MetaTensor) else torch.as_tensor(scaled)


class NonzeroZScore(NormalizeIntensity):
    """MONAI's z-score over the nonzero voxels (``nonzero=True``), without selecting them.

    MONAI gathers the nonzero voxels (a boolean index: most of a volume's preprocessing time) and
    scatters the result back; here the mean and spread come from masked sums (in float64) and
    ``torch.where`` writes the result: the same values up to float rounding (tests/data/test_fast_transforms.py).
    """

    def __init__(self):
        super().__init__(nonzero=True)

    def _normalize(self, img, sub=None, div=None):
        if sub is not None or div is not None or not isinstance(img, torch.Tensor):
            return super()._normalize(img, sub, div)
        img = img.float()
        mask = img != 0
        n = int(mask.sum())
        if n == 0:
            return img
        mean = float(img.sum(dtype=torch.float64)) / n
        std = float((((img.double() - mean) * mask).square().sum() / n).sqrt())
        return torch.where(mask, (img - mean) / (std if std != 0.0 else 1.0), img)


class CropToHead(Transform):
    """Crop or pad a volume ``(C, X, Y, Z)`` in RAS orientation to ``spatial_size`` about the head it holds.

    The head is the largest connected blob of voxels brighter than ``fraction`` of the way from the volume's 1st
    to its 99th percentile, found at half resolution (every other voxel: an 8th of them) after a 3x3x3 mean
    filter there; its box is the slices (along each axis) that hold at least 1% as many of the blob's bright
    full-resolution voxels as the fullest slice. The filter and the blob keep a raw scanner's background noise
    (Rician, a few % of the tissue's brightness: without them it filled every slice and the window kept air
    above the head) and ghosts beside the head from moving it. Along each axis the
    output is centred on the head, except that a head taller (axis 2, inferior -> superior) than the field
    of view keeps its top: the cortex matters more to a brain model than the neck. Padding is 0, as the
    z-score that follows leaves the background. A volume with no such head is centred as it is.
    """

    def __init__(self, spatial_size: Sequence[int], fraction: float = 0.1):
        self.spatial_size = tuple(int(n) for n in spatial_size)
        self.fraction = fraction

    def head_box(self, img: torch.Tensor) -> list[tuple[int, int] | None]:
        """``[(first, last + 1)]`` of the head along each spatial axis; None where no head is found."""
        from scipy import ndimage

        x = img.detach().float().amax(0).numpy()  # channels (one for MRI) -> one volume
        # the blob at an 8th of the cost: every other voxel, whose 3x3x3 means (6 mm at 2 mm) average the noise
        smooth = ndimage.uniform_filter(np.ascontiguousarray(x[::2, ::2, ::2]), 3, mode="nearest")
        # percentiles, not the extremes: a fill value or a few outliers (a resampler's corner) must not move it
        lo, hi = (float(v) for v in np.quantile(smooth[::2, ::2, ::2], [0.01, 0.99]))
        threshold = lo + self.fraction * (hi - lo)
        blobs, n = ndimage.label(smooth > threshold)
        blob = blobs == int(np.bincount(blobs.ravel())[1:].argmax()) + 1 if n else blobs > 0
        # back to full resolution, where the box is read: the blob's bright voxels, not its 2-voxel blocks
        head = blob.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: x.shape[0], : x.shape[1], : x.shape[2]]
        head &= x > threshold
        box = []
        for axis in range(3):
            counts = head.sum(axis=tuple(a for a in range(3) if a != axis))
            kept = np.flatnonzero(counts >= max(1.0, 0.01 * float(counts.max())))
            box.append((int(kept[0]), int(kept[-1]) + 1) if hi > lo and len(kept) else None)
        return box

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        out = img.new_zeros((img.shape[0], *self.spatial_size))
        src, dst = [], []
        for axis, (found, size) in enumerate(zip(self.head_box(img), self.spatial_size)):
            n = img.shape[1 + axis]
            first, last = found or (0, n)  # no head found: the volume's centre
            tall = found is not None and axis == 2 and last - first > size
            start = last - size if tall else (first + last) // 2 - size // 2
            a, b = max(start, 0), min(start + size, n)  # the part of the window inside the volume
            src.append(slice(a, b))
            dst.append(slice(a - start, b - start))
        out[(slice(None), *dst)] = img[(slice(None), *src)]
        return out


class CropToHeadd(MapTransform):
    def __init__(self, keys: Sequence[str], spatial_size: Sequence[int], fraction: float = 0.1,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.cropper = CropToHead(spatial_size, fraction)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cropper(d[key])
        return d


class FastRandAffined(RandAffined):
    """MONAI's ``RandAffined`` on a plain 2D image (no metadata) in one ``affine_grid`` + ``grid_sample`` call.

    MONAI builds a coordinate grid for every item, multiplies it by the affine and resamples: 0.4 ms
    per 128 px image it moves, most of a 2D training item's augmentation. Here MONAI's own draws, made
    in MONAI's order (a seed gives the same augmentations as MONAI's transform), become one 2x3 matrix
    in grid_sample's coordinates: the same images up to float rounding, in half the time
    (tests/data/test_fast_transforms.py). Anything else (a MetaTensor, 3D, a GPU tensor, several keys,
    lazy resampling, a fixed output size, another interpolation, numpy-style padding names) runs MONAI's
    own code.
    """

    def __call__(self, data, lazy=None):
        img = data.get(self.keys[0]) if len(self.keys) == 1 else None
        if not (type(img) is torch.Tensor and img.ndim == 3 and img.device.type == "cpu" and not get_track_meta()
                and not (lazy or self.lazy) and self.rand_affine.spatial_size is None and self.mode[0] == "bilinear"
                and self.padding_mode[0] in ("zeros", "border", "reflection")):
            return super().__call__(data, lazy)
        d = dict(data)
        self.randomize(None)
        self.rand_affine.randomize()
        if not self._do_transform:
            d[self.keys[0]] = img.float()
            return d
        # MONAI draws the parameters again when it builds the grid (those are the ones used) and once
        # more in its resampling call: making the same draws keeps the random streams in step.
        grid = self.rand_affine.rand_affine_grid
        grid.randomize()
        # composed as MONAI's AffineGrid does, from its own matrices (its lazy call costs 0.05 ms more per item)
        affine = np.eye(3)
        for params, create in ((grid.rotate_params, create_rotate), (grid.shear_params, create_shear),
                               (grid.translate_params, create_translate), (grid.scale_params, create_scale)):
            if params:
                affine = affine @ create(2, params, backend="numpy")
        self.rand_affine.randomize()
        d[self.keys[0]] = resample_affine(img.float(), affine, self.padding_mode[0])
        return d


def resample_affine(img: torch.Tensor, affine: np.ndarray, padding_mode: str) -> torch.Tensor:
    """``img`` (C, H, W) sampled bilinearly at ``affine`` @ (centred output pixel), as MONAI's ``Resample``.

    grid_sample's coordinate of pixel i on an axis of n pixels is (2i + 1)/n - 1 (align_corners=False):
    the centred coordinate times 2/n; its axes run (x, y), the array's in reverse.
    """
    n = np.array([max(2, s) for s in img.shape[1:]], dtype=np.float64)
    linear = affine[:2, :2] * n[None, :] / n[:, None]
    theta = np.concatenate([linear[::-1, ::-1], (affine[:2, 2] * 2.0 / n)[::-1, None]], axis=1)
    grid = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32)[None], [1, *img.shape], align_corners=False)
    return F.grid_sample(img[None], grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)[0]


def _percentile_scaled(keys, lower: float, upper: float) -> ScaleIntensityRangePercentilesd:
    """Clip to the ``lower``-``upper`` percentiles and scale to [0, 1], with :class:`PercentileScale`."""
    t = ScaleIntensityRangePercentilesd(keys, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)
    t.scaler = PercentileScale(lower, upper, 0.0, 1.0, clip=True)
    return t


def _nonzero_z_scored(keys) -> NormalizeIntensityd:
    """Z-score over the nonzero voxels, with :class:`NonzeroZScore`."""
    t = NormalizeIntensityd(keys, nonzero=True)
    t.normalizer = NonzeroZScore()
    return t


def preset_chain(modality: str, train: bool, **options) -> Compose:
    det, rand = preset(modality, train, **options)
    return Compose(det + rand)
