"""Resource bounds, checked from headers before anything is decoded.

A 2 MB deflated DICOM can inflate to gigabytes, an RLE or JPEG DICOM can declare 16000 x 16000
pixels, and a 600 KB PNG can hold 150 megapixels. Each is caught here, from what the file
declares, and becomes an error row; nothing is decoded or allocated first:

- DICOM: decoded bytes per instance (Rows x Columns x Frames x Samples x Bits/8) and per series
  (the sum); a deflated data set is inflated in bounded steps to count its size first;
- PNG/JPEG: pixels (width x height from the header; Pillow only warns below 179 Mpx), counted as 8-bit grey
  ones: a pixel of several samples (RGB, RGBA) or of 16 or 32 bits counts as that many bytes;
- NIfTI: voxels (the product of the header's dims), counted as 32-bit ones: a float64 voxel counts twice;
  a complex-valued volume is refused.

Defaults (``Limits()``) keep one run under 2 GB of memory; ``medtl predict --max-...`` changes
them (docs/batch.md, "Security and data protection").
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from medtl.errors import MedtlError

MiB = 1 << 20
DEFLATED = ("1.2.840.10008.1.2.1.99",)  # Deflated Explicit VR Little Endian


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one input may make a run decode. The defaults keep the peak memory of a
    run under 2 GB (measured: docs/batch.md, "Security and data protection")."""

    instance_bytes: int = 128 * MiB  # decoded pixel data of one DICOM instance
    series_bytes: int = 1024 * MiB  # ... of one DICOM series, for a 2D model (read one image at a time)
    volume_bytes: int = 96 * MiB  # ... of one DICOM series read as one volume by a 3D model (held and resampled whole)
    picture_pixels: int = 50_000_000  # width x height of one PNG/JPEG
    volume_voxels: int = 48_000_000  # voxels of one NIfTI volume


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n} bytes"


def dicom_decoded_bytes(ds) -> int:
    """What decoding the pixel data of ``ds`` would allocate, from its header alone (0 when it has none)."""
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")) and "Rows" not in ds:
        return 0

    def number(tag: str, default: int) -> int:
        try:
            value = ds.get(tag, default)
            return int(value if value not in (None, "") else default)
        except (TypeError, ValueError):
            raise MedtlError(f"header value {tag} is not a number") from None

    rows, cols = number("Rows", 0), number("Columns", 0)
    frames, samples = max(1, number("NumberOfFrames", 1)), max(1, number("SamplesPerPixel", 1))
    bits = number("BitsAllocated", 16)
    if "FloatPixelData" in ds:
        bits = 32
    elif "DoubleFloatPixelData" in ds:
        bits = 64
    if min(rows, cols, bits) < 0:
        raise MedtlError("negative Rows, Columns or BitsAllocated in the header")
    return rows * cols * frames * samples * max(1, math.ceil(bits / 8))


def check_dicom(ds, limits: Limits) -> int:
    """Decoded bytes of ``ds``; raises :class:`MedtlError` when over ``limits.instance_bytes``."""
    n = dicom_decoded_bytes(ds)
    if n > limits.instance_bytes:
        raise MedtlError(
            f"decoded pixel data would be {_mib(n)} ({ds.get('Rows')} x {ds.get('Columns')} x "
            f"{ds.get('NumberOfFrames', 1) or 1} frame(s) x {ds.get('SamplesPerPixel', 1)} sample(s) x "
            f"{ds.get('BitsAllocated')} bits), over the limit of {_mib(limits.instance_bytes)} per instance "
            "(--max-instance-mb): not decoded")
    return n


def check_series(total: int, limits: Limits, volume: bool = False) -> None:
    """``volume``: the series is read as one volume (a 3D model), which needs several times its size."""
    if volume and total > limits.volume_bytes:
        raise MedtlError(f"decoded pixel data of the series would be {_mib(total)}, over the limit of "
                         f"{_mib(limits.volume_bytes)} per volume for a 3D model (--max-volume-mb): not decoded")
    if total > limits.series_bytes:
        raise MedtlError(f"decoded pixel data of the series would be {_mib(total)}, over the limit of "
                         f"{_mib(limits.series_bytes)} per series (--max-series-mb): not decoded")


def check_deflated(path: Path, limits: Limits) -> None:
    """A deflated DICOM must inflate to at most the instance limit (plus room for the header):
    counted in bounded steps, so a bomb costs a few MiB of memory, not its inflated size."""
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
    except Exception:  # no or broken file meta: pydicom's own reading reports it
        return
    if str(meta.get("TransferSyntaxUID", "")) not in DEFLATED:
        return
    length = meta.get("FileMetaInformationGroupLength")
    if length is None:
        raise MedtlError("deflated DICOM without a file meta group length: size cannot be checked before inflating")
    allowed = limits.instance_bytes + 16 * MiB
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with open(path, "rb") as f:
        f.seek(128 + 4 + 12 + int(length))  # preamble, "DICM", the group length element, the rest of group 2
        while chunk := f.read(MiB):
            while chunk:
                try:
                    total += len(inflater.decompress(chunk, 16 * MiB))
                except zlib.error as err:
                    raise MedtlError(f"corrupt deflated DICOM: {err}") from None
                chunk = inflater.unconsumed_tail
                if total > allowed:
                    raise MedtlError(f"deflated data set inflates to more than {_mib(allowed)} (limit "
                                     f"{_mib(limits.instance_bytes)} per instance, --max-instance-mb): not decoded")
            if inflater.eof:
                break


def check_picture(path: Path, limits: Limits) -> None:
    """Width x height of a PNG/JPEG from its header (Pillow reads no pixels in ``open``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                # decoded bytes per pixel: the samples ("RGBA": 4) times their bytes ("I;16": 2, "I"/"F": 4)
                depth = len(im.getbands()) * (2 if im.mode.startswith("I;16") else 4 if im.mode in ("I", "F") else 1)
    except Image.DecompressionBombError:
        raise MedtlError(f"image declares more than {Image.MAX_IMAGE_PIXELS * 2} pixels (a decompression bomb): "
                         "not decoded") from None
    except UnidentifiedImageError:
        raise MedtlError("not a readable image (unknown or corrupt format)") from None
    except OSError as err:
        raise MedtlError(f"corrupt or unreadable image: {err}") from None
    if width * height * depth > limits.picture_pixels:
        as_grey = f" ({depth} bytes a pixel in mode {im.mode}: {width * height * depth / 1e6:.0f} Mpx of 8-bit grey)" \
            if depth > 1 else ""
        raise MedtlError(f"image declares {width} x {height} = {width * height / 1e6:.0f} Mpx{as_grey}, over the limit "
                         f"of {limits.picture_pixels / 1e6:g} Mpx of 8-bit grey (--max-picture-mpx): not decoded")


def check_nifti(path: Path, limits: Limits) -> None:
    """Voxels of a NIfTI volume from its header (nibabel loads the data lazily)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape, dtype = img.shape, img.get_data_dtype()
    except Exception as err:
        raise MedtlError(f"unreadable NIfTI header: {err}") from None
    if dtype.kind == "c":
        raise MedtlError(f"a complex-valued volume ({dtype}): not an image (a k-space or phase export?): not decoded")
    voxels = math.prod(int(d) for d in shape) if shape else 0
    wide = max(1.0, dtype.itemsize / 4)  # read as float32; a float64 volume holds twice that while it converts
    if voxels * wide > limits.volume_voxels:
        what = f" of {dtype} (each counts {wide:g}x)" if wide > 1 else ""
        raise MedtlError(f"volume declares {' x '.join(str(d) for d in shape)} = {voxels / 1e6:.0f} M voxels{what}, "
                         f"over the limit of {limits.volume_voxels / 1e6:g} M 32-bit voxels (--max-volume-mvox): not "
                         "decoded")


def check_file(path: Path, limits: Limits, name: str | None = None) -> int:
    """Check one input file by kind (from ``name``, default the path's); returns the DICOM decoded
    bytes (0 for other kinds)."""
    from medtl.data.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES

    lower = (name or path.name).lower()
    if lower.endswith(NIFTI_SUFFIXES):
        check_nifti(path, limits)
        return 0
    if lower.endswith(IMAGE_SUFFIXES):
        check_picture(path, limits)
        return 0
    import pydicom

    check_deflated(path, limits)
    return check_dicom(pydicom.dcmread(path, stop_before_pixels=True), limits)
