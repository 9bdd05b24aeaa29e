"""Identical files and near-copies.

Public image sets are full of near-copies (re-encoded, resized or sharpened versions of one slice).
Two images are near-copies when the Pearson correlation of their 64x64 grey thumbnails (3D: 32^3)
exceeds a threshold: 0.97 by default (see NEAR_COPY_CORRELATION; the data README measured its overlaps
at 0.99). Groups are the connected
components of that relation, so a split that keeps each group on one side cannot leak a copy.
"""

from __future__ import annotations

import hashlib

import numpy as np

THUMB_2D = 64
# 32 voxels a side, not 16: the IXI T1 heads (whole heads, not skull-stripped) of different people share their shape,
# and at 16^3 the IXI volumes of two subjects correlated up to 0.984 (134 pairs above 0.97: 56 of 119
# subjects in one group). At 32^3 two subjects correlate 0.953 at most, while a copy (re-quantised, noisy,
# resampled, or moved 1 voxel) still correlates above 0.99. Measured 2026-12-01 on all 119 IXI volumes.
THUMB_3D = 32
# Thumbnails of two images in one set correlating above this are near-copies, kept in one split. 0.97,
# not the data README's 0.99: a review found brain-MRI slices sharpened or re-encoded at 0.977-0.989 that
# are the same slice, and mri2d_tumor4 still chains into small groups at 0.97 (largest 22 images; cxr_nih:
# one pair at 0.97 and at 0.99). Grouping two look-alikes too many costs a little stratification; a copy
# on both sides of a split measures memorisation.
NEAR_COPY_CORRELATION = 0.97


def array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes() + str(array.shape).encode()).hexdigest()


def thumbnail(array: np.ndarray, affine: np.ndarray | None = None) -> np.ndarray:
    """Zero-mean, unit-norm thumbnail vector: dot products of two are their correlation. A volume with its
    ``affine`` is first flipped and transposed (no resampling) so its axes run as close to R, A, S as the affine
    allows: one head stored in two orientations (LPS, PIR) gives one thumbnail."""
    from skimage.transform import resize

    if array.ndim == 3 and affine is not None:
        from nibabel.orientations import apply_orientation, io_orientation

        array = apply_orientation(array, io_orientation(affine))

    size = (THUMB_2D,) * 2 if array.ndim == 2 else (THUMB_3D,) * 3
    small = resize(array.astype(np.float32), size, anti_aliasing=True, preserve_range=True).ravel()
    small = small - small.mean()
    norm = np.linalg.norm(small)
    return (small / norm if norm > 0 else small).astype(np.float32)


def head_crop(array: np.ndarray) -> np.ndarray:
    """A 2D image cut to the box of its largest bright blob (the head, the chest), so that copies of one slice
    re-cropped or padded to another frame (brain MRI collections copy each other so) line up again. The blob is
    found after a 5x5 mean filter, above 6% of the way from the 1st to the 99th percentile, opened twice to
    shed text and speckle; an image with no blob that spans a tenth of each side is returned whole."""
    from scipy import ndimage

    a = np.asarray(array, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(a, [1, 99]))
    if a.ndim != 2 or hi <= lo:
        return a
    mask = ndimage.binary_opening(ndimage.uniform_filter(a, 5) > lo + 0.06 * (hi - lo), iterations=2)
    blobs, n = ndimage.label(mask)
    if not n:
        return a
    blob = blobs == int(np.bincount(blobs.ravel())[1:].argmax()) + 1
    rows, cols = np.flatnonzero(blob.any(1)), np.flatnonzero(blob.any(0))
    if rows[-1] - rows[0] < 0.1 * a.shape[0] or cols[-1] - cols[0] < 0.1 * a.shape[1]:
        return a
    return a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def cropped_thumbnail(array: np.ndarray, most: float = 0.96) -> tuple[np.ndarray, bool] | None:
    """A 2D image's thumbnail cut to its head (:func:`head_crop`), and whether the cut took off a margin: it
    keeps at most ``most`` of the frame. None for a volume. Copies are found between two such thumbnails
    where at least one image lost a margin: a chest X-ray's body fills its frame, and comparing two uncut
    frames again at the looser cut-to-head threshold only drops different patients that look alike (a
    review: 17-24% of chest X-ray sets). Measured 2026-12-02 on the committed manifests: chest X-ray sets minus
    each other lose 5-7 rows more than by whole frames (27->32 of 738, 10->17, 7->14 of 3166); at 0.9, 4 of the
    13 cut copies a review found in mri2d_tumor4 were kept (their brains fill 93-96% of the frame)."""
    a = np.asarray(array)
    if a.ndim != 2:
        return None
    cut = head_crop(a)
    return thumbnail(cut), bool(cut.size <= most * a.size)


def near_copy_pairs(
    thumbs_a: np.ndarray, thumbs_b: np.ndarray | None = None, threshold: float = NEAR_COPY_CORRELATION
) -> np.ndarray:
    """Index pairs (i, j) whose thumbnails correlate above ``threshold``.

    Within one set (``thumbs_b`` None) only pairs with i < j are returned. Only thumbnails of the
    same length are compared (2D with 2D, 3D with 3D); the caller groups them.
    """
    same = thumbs_b is None
    b = thumbs_a if same else thumbs_b
    pairs = []
    block = 1024  # bounded memory: a 1024 x N block of correlations at a time
    for start in range(0, len(thumbs_a), block):
        corr = thumbs_a[start : start + block] @ b.T
        i, j = np.nonzero(corr > threshold)
        i = i + start
        if same:
            keep = i < j
            i, j = i[keep], j[keep]
        pairs.append(np.stack([i, j], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=int)


def cut_to_head_pairs(cut_a: list, cut_b: list | None = None, threshold: float = NEAR_COPY_CORRELATION) -> np.ndarray:
    """Index pairs of :func:`cropped_thumbnail` results (thumbnail, lost a margin) that are copies: their
    thumbnails correlate above ``threshold`` and at least one of the two lost a margin (two uncut frames are
    whole-frame thumbnails' to compare). Within one set (``cut_b`` None) only pairs with i < j."""
    lost_a = np.asarray([lost for _, lost in cut_a], dtype=bool)
    lost_b = lost_a if cut_b is None else np.asarray([lost for _, lost in cut_b], dtype=bool)
    pairs = near_copy_pairs(np.stack([t for t, _ in cut_a]),
                            None if cut_b is None else np.stack([t for t, _ in cut_b]), threshold)
    return pairs[lost_a[pairs[:, 0]] | lost_b[pairs[:, 1]]]


def connected_groups(n: int, pairs) -> np.ndarray:
    """Group id per item: connected components of the pair graph (union-find)."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)])
