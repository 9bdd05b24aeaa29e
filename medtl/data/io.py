"""Readers for the raw formats: PNG/JPEG, DICOM (single files and series) and NIfTI.

Every reader returns float32 pixels plus the geometry it knows, and turns every failure into a
``MedtlError`` that names the file and the reason. Nothing here resizes or normalises: that is the
job of the MONAI transform chains in ``medtl.data.transforms``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtl.errors import MedtlError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Image:
    """Pixels (2D ``(H, W)`` or 3D ``(X, Y, Z)`` in the affine's voxel order) and their geometry."""

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))  # voxel -> RAS+ millimetres
    meta: dict = field(default_factory=dict)


ARRAY_MEMBER = "::"  # "<file>.npz::<array>/<index>": one image of an array archive (e.g. MedMNIST)


# Suffixes that may hold DICOM (archives often store it with none): such a file that is not DICOM is bad
# input; any other file that is neither an image nor DICOM (notes.txt, Thumbs.db) is not an input at all.
DICOM_LIKE = (".dcm", ".dicom", ".ima", "")


def kind_of(path: str | Path) -> str:
    """'image', 'nifti', 'dicom', 'dicom_series' (a folder) or 'array' (an .npz member), from the name."""
    if ARRAY_MEMBER in str(path):
        return "array"
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "dicom_series"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    return "dicom"


def read(path: str | Path) -> Image:
    """Read any supported file (or DICOM series folder) and check the pixels are usable."""
    p = Path(path)
    kind = kind_of(p)
    if not Path(str(p).split(ARRAY_MEMBER)[0]).exists():
        raise MedtlError("file not found", p)
    readers = {"image": read_picture, "nifti": read_nifti, "dicom": read_dicom, "dicom_series": read_dicom_series,
               "array": read_array_member}
    image = readers[kind](p)
    check_pixels(image.array, p)
    return image


def check_pixels(array: np.ndarray, where: str | Path) -> None:
    if array.size == 0:
        raise MedtlError("image has no pixels", where)
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise MedtlError(f"image holds {bad} NaN/Inf values", where)
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        raise MedtlError(f"image is constant (every pixel is {lo:g}): nothing to learn from", where)


def read_picture(path: Path) -> Image:
    """PNG/JPEG of any mode (L, I;16, RGB, RGBA, P, LA, ...) to one grey channel, values kept."""
    from PIL import Image as PILImage, UnidentifiedImageError

    try:
        with PILImage.open(path) as im:
            im.load()  # decode now, so truncated files fail here and not later
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            if im.mode in ("RGBA", "LA"):
                # Composite on black: a transparent background is empty space, like air in a scan.
                im = _over_black(im)
            if im.mode in ("RGB", "CMYK", "YCbCr", "HSV"):
                im = im.convert("L")  # ITU-R 601 luma
            array = np.asarray(im, dtype=np.float32)
    except FileNotFoundError:
        raise MedtlError("file not found", path) from None
    except UnidentifiedImageError:
        raise MedtlError("not a readable image (unknown or corrupt format)", path) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise MedtlError(f"corrupt or truncated image: {err}", path) from None
    if array.ndim != 2:
        raise MedtlError(f"expected a 2D grey image after conversion, got shape {array.shape}", path)
    return Image(array, meta={"format": "picture", "mode": mode})


def _over_black(im):
    from PIL import Image as PILImage

    rgba = im.convert("RGBA")
    black = PILImage.new("RGBA", rgba.size, (0, 0, 0, 255))
    return PILImage.alpha_composite(black, rgba).convert("RGB")


def _dcmread(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        raise MedtlError("not a DICOM file (no DICM preamble/marker)", path) from None
    except Exception as err:  # pydicom raises many types for broken headers
        raise MedtlError(f"unreadable DICOM: {err}", path) from None


def _dicom_pixels(ds, path: Path) -> np.ndarray:
    """Decoded pixels with the modality LUT applied and MONOCHROME1 inverted (bright = dense)."""
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise MedtlError("DICOM has no pixel data", path)
    try:
        pixels = ds.pixel_array
    except Exception as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        # a decoder hint only where a decoder could help: an uncompressed file that fails is damaged
        hint = (" For JPEG 2000 install a decoder such as pylibjpeg-openjpeg or Pillow built with OpenJPEG"
                if getattr(syntax, "is_compressed", True) else " The file is probably truncated or damaged")
        raise MedtlError(f"cannot decode pixel data with transfer syntax {name}: {err}.{hint}", path) from None
    pixels = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    elif photometric not in ("MONOCHROME2",) and pixels.shape[-1] == 3:
        pixels = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return pixels


def read_dicom(path: Path) -> Image:
    """One DICOM file: a 2D image, or a multi-frame file as a 3D volume (frames along depth)."""
    ds = _dcmread(path)
    pixels = _dicom_pixels(ds, path)
    meta = {
        "format": "dicom",
        "modality": str(ds.get("Modality", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
    }
    if pixels.ndim == 2:
        return Image(pixels, meta=meta)
    # Multi-frame: frames stacked along the last (slice) axis, in-plane spacing when present.
    row, col = _pixel_spacing(ds)
    thickness = float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 1.0)) or 1.0)
    volume = np.transpose(pixels, (2, 1, 0))  # (frames, rows, cols) -> (cols, rows, frames)
    affine = np.diag([-col, -row, thickness, 1.0])  # LPS rows/cols flipped to RAS, orientation unknown
    return Image(volume.astype(np.float32), affine, meta)


def _pixel_spacing(ds) -> tuple[float, float]:
    spacing = ds.get("PixelSpacing")
    if spacing is None:
        try:
            spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        except (AttributeError, IndexError, KeyError):
            spacing = [1.0, 1.0]
    return float(spacing[0]), float(spacing[1])


def read_dicom_series(folder: Path, series_uid: str | None = None) -> Image:
    """A folder of single-frame DICOM instances into one volume.

    Instances are grouped by SeriesInstanceUID and sorted by their position along the slice normal
    (from ImagePositionPatient and ImageOrientationPatient). The affine maps voxel (col, row, slice)
    to RAS+ millimetres, so MONAI's Orientation and Spacing transforms can use it.
    """
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    series: dict[str, list] = {}
    for f in files:
        ds = _dcmread(f)
        uid = str(ds.get("SeriesInstanceUID", ""))
        series.setdefault(uid, []).append((f, ds))
    if not series:
        raise MedtlError("folder holds no DICOM files", folder)
    if series_uid is None:
        if len(series) > 1:
            raise MedtlError(f"folder holds {len(series)} series; choose one SeriesInstanceUID", folder)
        series_uid = next(iter(series))
    if series_uid not in series:
        raise MedtlError(f"series {series_uid} not found", folder)
    instances = series[series_uid]
    first = instances[0][1]
    if "ImageOrientationPatient" not in first or "ImagePositionPatient" not in first:
        raise MedtlError("series lacks ImageOrientationPatient/ImagePositionPatient: cannot order slices", folder)
    orient = np.array(first.ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = orient[:3], orient[3:]
    normal = np.cross(row_dir, col_dir)
    positions = []
    for f, ds in instances:
        if "ImagePositionPatient" not in ds:
            raise MedtlError("instance lacks ImagePositionPatient", f)
        positions.append(np.array(ds.ImagePositionPatient, dtype=np.float64))
    order = np.argsort([p @ normal for p in positions])
    slices = []
    for i in order:
        f, ds = instances[i]
        pixels = _dicom_pixels(ds, f)
        if pixels.ndim != 2 or (slices and pixels.shape != slices[0].shape):
            raise MedtlError(f"slice shape {pixels.shape} differs from the series' {slices[0].shape}", f)
        slices.append(pixels)
    volume = np.stack(slices, axis=-1)  # (rows, cols, slices)
    volume = np.transpose(volume, (1, 0, 2))  # (cols, rows, slices): voxel i runs along the row direction
    row_spacing, col_spacing = _pixel_spacing(first)
    sorted_pos = [positions[i] for i in order]
    step = (sorted_pos[-1] - sorted_pos[0]) / (len(sorted_pos) - 1) if len(sorted_pos) > 1 else normal
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # moving one column moves along the row direction
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = sorted_pos[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI/MONAI RAS
    meta = {
        "format": "dicom_series",
        "modality": str(first.get("Modality", "")),
        "series_uid": series_uid,
        "n_instances": len(slices),
    }
    return Image(volume.astype(np.float32), affine, meta)


@functools.lru_cache(maxsize=8)
def _npz_array(archive: str, name: str) -> np.ndarray:
    with np.load(archive, allow_pickle=False) as npz:  # never unpickle: archives may be untrusted
        if name not in npz.files:
            raise MedtlError(f"array {name!r} not in archive (has {npz.files})", archive)
        return npz[name]


def read_array_member(path: Path) -> Image:
    """``archive.npz::array/index``: a 2D image (or 3D volume) stored in a NumPy archive."""
    archive, member = str(path).split(ARRAY_MEMBER, 1)
    name, _, index = member.rpartition("/")
    if not name or not index.isdigit():
        raise MedtlError("array member must look like 'archive.npz::<array>/<index>'", path)
    try:
        array = _npz_array(archive, name)
    except (OSError, ValueError) as err:
        raise MedtlError(f"unreadable array archive: {err}", archive) from None
    if int(index) >= len(array):
        raise MedtlError(f"index {index} out of range for {name} of length {len(array)}", path)
    item = np.asarray(array[int(index)], dtype=np.float32)
    if item.ndim == 3 and item.shape[-1] in (3, 4):  # RGB(A) arrays to grey, like pictures
        item = item[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return Image(item, meta={"format": "array"})


def read_nifti(path: Path) -> Image:
    """NIfTI-1/2 with scale factors honoured; a 4D file with one volume is squeezed, else refused."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)  # dataobj applies scl_slope/scl_inter
    except Exception as err:
        raise MedtlError(f"unreadable NIfTI: {err}", path) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MedtlError(f"expected a 3D volume, got {data.ndim}D with shape {data.shape}", path)
    return Image(data, np.asarray(img.affine, dtype=np.float64), {"format": "nifti"})
