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

    def __post_init__(self):
        # At the precision NIfTI stores (float32): a DICOM series and its NIfTI conversion then resample onto
        # one grid. MONAI's Spacingd places an oblique volume's grid by an exact test on the corner, which the
        # float32 rounding of the same affine flipped (a half-voxel shift: inputs correlating 0.75).
        self.affine = np.asarray(self.affine, dtype=np.float32).astype(np.float64)


ARRAY_MEMBER = "::"  # "<file>.npz::<array>/<index>": one image of an array archive (e.g. MedMNIST)


def stored_file(path: str | Path) -> Path:
    """The file on disk behind a path: an array member's archive, else the path itself."""
    return Path(str(path).partition(ARRAY_MEMBER)[0])


# Suffixes that may hold DICOM (archives often store it with none): such a file that is not DICOM is bad
# input; any other file that is neither an image nor DICOM (notes.txt, Thumbs.db) is not an input at all.
DICOM_LIKE = (".dcm", ".dicom", ".ima", "")
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG")  # DICOM modalities of projection radiographs (the cxr preset)


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
    if not stored_file(p).exists():
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
    from PIL import Image as PILImage, ImageOps, UnidentifiedImageError

    try:
        with PILImage.open(path) as im:
            im.load()  # decode now, so truncated files fail here and not later
            mode = im.mode
            # a photo's EXIF orientation (a phone or camera that stores pixels sideways) turns it upright, as
            # every viewer shows it; scanner and PACS exports carry none
            im = ImageOps.exif_transpose(im)
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
    except PILImage.DecompressionBombError as err:  # an Exception, not an OSError: a tiny file of a huge picture
        raise MedtlError(f"refused to decode: {err}", path) from None
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
        suffix = Path(path).suffix.lower()
        if suffix not in DICOM_LIKE and not suffix[1:].isdigit():  # README.md, not a file named by its UID (1.2.840.5)
            raise MedtlError(f"not an image medtl reads: {suffix} is neither a picture (PNG, JPEG, ...), "
                             "NIfTI nor DICOM", path) from None
        raise MedtlError("not a DICOM file (no DICM preamble/marker)", path) from None
    except Exception as err:  # pydicom raises many types for broken headers
        raise MedtlError(f"unreadable DICOM: {err}", path) from None


# transfer syntaxes the installed decoders cannot read, with what would read them
_DECODER_HINTS = {
    "1.2.840.10008.1.2.4.51": "12-bit JPEG Extended needs pylibjpeg with pylibjpeg-libjpeg (GPL); "
                              "or convert the study to JPEG Lossless or JPEG 2000",
}


def _dicom_pixels(ds, path: Path) -> np.ndarray:
    """Decoded pixels as values a model can compare across slices: the modality LUT or rescale applied
    (per frame in an enhanced multi-frame file), then MONOCHROME1 inverted over the range those values
    can take (bright = dense, with one offset for every slice of a series); colour and palette images
    as the grey they display. Window settings (VOI LUT) are not applied: the preset chains scale each
    image to its own percentiles."""
    from pydicom.pixels import apply_color_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop_class = getattr(ds.get("SOPClassUID"), "name", "")
        if "Image Storage" in sop_class:  # an image object must hold pixels: its file was cut off before them
            raise MedtlError(f"DICOM has no pixel data, though its SOP class ({sop_class}) holds an image: the file "
                             "is probably truncated", path)
        raise MedtlError("DICOM has no pixel data", path)
    try:
        pixels = ds.pixel_array
    except Exception as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        # a decoder hint only where a decoder could help: an uncompressed file that fails is damaged
        if not getattr(syntax, "is_compressed", True):
            hint = "the file is probably truncated or damaged"
        else:
            hint = _DECODER_HINTS.get(str(syntax), "no installed decoder reads it (medtl installs python-gdcm, "
                                                   "which reads JPEG Lossless, JPEG-LS and JPEG 2000)")
        raise MedtlError(f"cannot decode pixel data with transfer syntax {name}: {err}. {hint}", path) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if int(ds.get("SamplesPerPixel", 1)) == 3 or photometric == "PALETTE COLOR":
        return np.asarray(pixels, dtype=np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    values = _modality_values(pixels, ds)
    if photometric == "MONOCHROME1":
        bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 16))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2 ** bits - 1])
        ends = _modality_values(stored, ds, frame=0)  # the range the values can take, through the same LUT
        values = np.float32(ends.min() + ends.max()) - values
    return values


def _frame_item(ds, frame: int, sequence: str):
    """The item of an enhanced multi-frame file's functional group ``sequence`` for ``frame`` (per-frame
    groups first, then the shared ones), or None."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and index < len(items) and items[index].get(sequence):
            return items[index].get(sequence)[0]
    return None


def _modality_values(pixels: np.ndarray, ds, frame: int | None = None) -> np.ndarray:
    """Stored values through the modality LUT or rescale: the top-level one, else (enhanced multi-frame)
    each frame's Pixel Value Transformation; ``frame`` applies that frame's to all of ``pixels``."""
    from pydicom.pixels import apply_modality_lut

    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds or _frame_item(ds, 0, "PixelValueTransformationSequence") is None:
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)

    def rescale(values, k):
        item = _frame_item(ds, k, "PixelValueTransformationSequence")
        if item is None:
            return values
        return values * float(item.get("RescaleSlope", 1) or 1) + float(item.get("RescaleIntercept", 0) or 0)

    values = np.asarray(pixels, dtype=np.float32)
    if frame is not None:
        return rescale(values, frame)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    stack = values.reshape((frames,) + values.shape[-2:]).copy()
    for k in range(frames):
        stack[k] = rescale(stack[k], k)
    return stack.reshape(values.shape)


def _frame_geometry(ds, frames: int):
    """Per frame (orientation, position) of an enhanced multi-frame file, or None when some frame has no
    plane position (its orientation is then unknown)."""
    orientations, positions = [], []
    for k in range(frames):
        orient = _frame_item(ds, k, "PlaneOrientationSequence")
        where = _frame_item(ds, k, "PlanePositionSequence")
        iop = orient.get("ImageOrientationPatient") if orient is not None else ds.get("ImageOrientationPatient")
        ipp = where.get("ImagePositionPatient") if where is not None else None
        if iop is None or ipp is None:
            return None
        orientations.append(iop)
        positions.append(ipp)
    return orientations, positions


def read_dicom(path: Path) -> Image:
    """One DICOM file: a 2D image, or a multi-frame file as a 3D volume.

    An enhanced multi-frame file whose functional groups place its frames on one regular grid is ordered
    along the slice normal with its orientation kept, as a series is (``meta["geometry"] == "frames"``).
    Otherwise (no plane positions, or frames that are no grid: a cine, several echoes at one position)
    the frames stay in file order along an assumed axial axis (``"unknown"``, with the reason in
    ``meta["geometry_note"]``): 2D models, which read frame by frame, use them; 3D models refuse them
    (:func:`require_geometry`)."""
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
    try:
        order, affine = frame_grid(ds, path)
        return Image(_stack([pixels[k] for k in order]), affine, {**meta, "geometry": "frames"})
    except MedtlError as err:
        note = err.reason
    row, col = _frame_spacing(ds)
    thickness = float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 1.0)) or 1.0)
    volume = np.transpose(pixels, (2, 1, 0))  # (frames, rows, cols) -> (cols, rows, frames)
    affine = np.diag([-col, -row, thickness, 1.0])  # a guess: LPS rows/cols flipped to RAS, axial
    return Image(volume.astype(np.float32), affine, {**meta, "geometry": "unknown", "geometry_note": note})


def _frame_spacing(ds) -> tuple[float, float]:
    measures = _frame_item(ds, 0, "PixelMeasuresSequence")
    return _pixel_spacing(measures if measures is not None else ds)


def frame_grid(ds, where) -> tuple[np.ndarray, np.ndarray]:
    """Frame order and RAS affine of a multi-frame file whose functional groups place its frames on one
    regular grid (from the header alone), or a MedtlError saying why they are no volume."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    geometry = _frame_geometry(ds, frames)
    if geometry is None:
        raise MedtlError("no functional groups place its frames (no plane positions)", where)
    return _grid(*geometry, [_frame_spacing(ds)] * frames, [f"frame {k + 1}" for k in range(frames)], where)


def require_geometry(image: Image, where) -> None:
    """3D models need a volume and to know where each slice lies: refuse one slice (a 120x120x1 NIfTI, as a
    single 2D DICOM image is refused) and a volume whose orientation was guessed."""
    if image.array.ndim == 3 and min(image.array.shape) == 1:
        raise MedtlError(f"a 3D model needs a volume; this file is one 2D slice {image.array.shape}", where)
    if image.meta.get("geometry") != "unknown":
        return
    if image.meta.get("format") == "nifti":
        raise MedtlError("NIfTI without an orientation (qform_code and sform_code are both 0): a 3D model would see "
                         "it in a guessed orientation. Write the file again with its scanner geometry (a qform or "
                         "sform), e.g. with dcm2niix from the DICOM series", where)
    raise MedtlError(f"multi-frame DICOM whose frames are not placed on one grid ({image.meta.get('geometry_note')}): "
                     "a 3D model would see it in a guessed orientation. Export the series as single-frame "
                     "instances or NIfTI with its geometry", where)


def _pixel_spacing(ds) -> tuple[float, float]:
    spacing = ds.get("PixelSpacing")
    if spacing is None:
        try:
            spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        except (AttributeError, IndexError, KeyError):
            spacing = [1.0, 1.0]
    return float(spacing[0]), float(spacing[1])


GRID_TOLERANCE = 0.25  # of the slice step: positions written with few decimals stay on the grid, a missing slice does not


def _grid(orientations, positions, spacings, names, where=None) -> tuple[np.ndarray, np.ndarray]:
    """The slice order along the normal and the RAS affine of slices with DICOM geometry, or a refusal
    naming the slice when they are not one regular grid: another orientation or pixel spacing, two slices
    at one position, or one off the evenly spaced line from the first to the last (a missing slice moves
    every voxel after it). ``names`` are the slices' files (``where`` None: the error names the file) or
    their labels inside the file ``where``."""

    def refuse(k: int, reason: str):
        raise MedtlError(f"{'this instance' if where is None else names[k]} {reason}", names[k] if where is None else where)

    def short(k: int) -> str:
        return Path(names[k]).name if where is None else names[k]

    orients = np.asarray(orientations, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64)
    for k in range(1, len(pos)):
        if np.abs(orients[k] - orients[0]).max() > 1e-3:
            refuse(k, f"is oriented {[round(float(v), 4) for v in orients[k]]}, unlike {short(0)} "
                      f"{[round(float(v), 4) for v in orients[0]]}: not one volume")
        if not np.allclose(spacings[k], spacings[0], rtol=1e-3):
            refuse(k, f"has pixel spacing {[float(v) for v in spacings[k]]}, unlike {short(0)} "
                      f"{[float(v) for v in spacings[0]]}: not one volume")
    row_dir, col_dir = orients[0][:3], orients[0][3:]
    normal = np.cross(row_dir, col_dir)
    depth = pos @ normal
    order = np.argsort(depth, kind="stable")
    d = depth[order]
    if len(d) > 1:
        step = (d[-1] - d[0]) / (len(d) - 1)
        for k in range(1, len(d)):
            if d[k] - d[k - 1] < 1e-3 * max(step, 1e-3):
                refuse(order[k], f"lies where {short(order[k - 1])} lies ({d[k]:.2f} mm along the slice normal): "
                                 "two slices in one place")
        gaps = np.diff(d)
        usual = float(np.median(gaps))
        # about two steps where one is usual (1.75: rounded positions make gaps of 1.5 steps, which the
        # even-spacing check below judges)
        wide = np.flatnonzero(gaps > 1.75 * usual) if len(gaps) > 2 else []
        if len(wide):  # the plain case said plainly: a gap of about two slices is a missing slice
            k = int(wide[0]) + 1
            refuse(order[k], f"lies {gaps[k - 1]:.2f} mm from {short(order[k - 1])}, the slice before it, where the "
                             f"series' slices are {usual:.2f} mm apart: a slice is missing (or the spacing is "
                             "uneven): not one regular volume")
        off = d - (d[0] + step * np.arange(len(d)))
        worst = int(np.argmax(np.abs(off)))
        if abs(off[worst]) > GRID_TOLERANCE * step:
            refuse(order[worst], f"lies {off[worst]:+.2f} mm off the series' even spacing of {step:.3f} mm "
                                 "(a missing or extra slice, or uneven spacing): not one regular volume")
    step_vec = (pos[order[-1]] - pos[order[0]]) / (len(order) - 1) if len(order) > 1 else normal
    row_spacing, col_spacing = spacings[0]
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # moving one column moves along the row direction
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = step_vec
    lps[:3, 3] = pos[order[0]]
    return order, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI/MONAI RAS


def _stack(slices: list[np.ndarray]) -> np.ndarray:
    """Ordered 2D slices ``(rows, cols)`` as a volume ``(cols, rows, slices)``: voxel i runs along the row direction."""
    return np.transpose(np.stack(slices, axis=-1), (1, 0, 2)).astype(np.float32)


def read_dicom_series(folder: Path, series_uid: str | None = None, names: dict[str, str] | None = None) -> Image:
    """A folder of single-frame DICOM instances into one volume.

    Instances are grouped by SeriesInstanceUID and sorted by their position along the slice normal
    (from ImagePositionPatient and ImageOrientationPatient); see :func:`_grid` for what is refused, which
    is decided from the headers before any pixels are decoded. The affine maps voxel (col, row, slice) to
    RAS+ millimetres, so MONAI's Orientation and Spacing transforms can use it. ``names`` maps a file to
    the name errors should give it (the real file behind a temporary link).
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
    modality = str(first.get("Modality", "")).upper()
    if modality in RADIOGRAPH_MODALITIES:  # several radiographs (views) are images, not the slices of a volume
        raise MedtlError(f"a {modality} series of {len(instances)} projection radiograph(s), not the slices of a "
                         "volume: read as a volume by a 3D model (which reads MR or CT volumes) or as a series folder; "
                         "a 2D model reads each radiograph's file", folder)
    if "ImageOrientationPatient" not in first or "ImagePositionPatient" not in first:
        raise MedtlError("series lacks ImageOrientationPatient/ImagePositionPatient: cannot order slices", folder)
    shown = [(names or {}).get(str(f), str(f)) for f, _ in instances]
    for (f, ds), name in zip(instances, shown):
        for tag in ("ImagePositionPatient", "ImageOrientationPatient"):
            if tag not in ds:
                raise MedtlError(f"instance lacks {tag}", name)
    order, affine = _grid([ds.ImageOrientationPatient for _, ds in instances],
                          [ds.ImagePositionPatient for _, ds in instances],
                          [_pixel_spacing(ds) for _, ds in instances], shown)
    slices = []
    for i in order:
        (f, ds), name = instances[i], shown[i]
        pixels = _dicom_pixels(ds, name)
        if pixels.ndim != 2:
            raise MedtlError(f"a multi-frame instance ({pixels.shape[0]} frames) inside a series of single "
                             "frames: read it on its own", name)
        if slices and pixels.shape != slices[0].shape:
            raise MedtlError(f"this instance has shape {pixels.shape}, unlike {Path(shown[order[0]]).name} "
                             f"{slices[0].shape}: not one volume", name)
        slices.append(pixels)
    meta = {
        "format": "dicom_series",
        "modality": str(first.get("Modality", "")),
        "series_uid": series_uid,
        "n_instances": len(slices),
    }
    return Image(_stack(slices), affine, meta)


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
    except Exception as err:
        raise MedtlError(f"unreadable NIfTI: {err}", path) from None
    if img.get_data_dtype().kind == "c":  # numpy would drop the imaginary part with a warning
        raise MedtlError(f"a complex-valued volume ({img.get_data_dtype()}): not an image (a k-space or phase "
                         "export?)", path)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)  # dataobj applies scl_slope/scl_inter
    except Exception as err:
        raise MedtlError(f"unreadable NIfTI: {err}", path) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MedtlError(f"expected a 3D volume, got {data.ndim}D with shape {data.shape}", path)
    meta = {"format": "nifti"}
    header = img.header
    if int(header.get("qform_code", 1)) == 0 and int(header.get("sform_code", 1)) == 0:
        meta["geometry"] = "unknown"  # nibabel's affine is then a guess from the voxel sizes alone
    return Image(data, np.asarray(img.affine, dtype=np.float64), meta)
