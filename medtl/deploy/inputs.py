"""A series' files -> the model's input tensor, with the model's own preprocessing.

The preprocessing is the data layer's preset chain (``medtl.data.transforms.preset``) with the
options the checkpoint recorded, so inference sees images prepared exactly as in training. Only the
chain's first step, which loads a path, is replaced: batch inference has already grouped the files
of a series and builds the image itself.

- 2D models (presets ``cxr``, ``mri2d``): every 2D image of the series (each single-frame instance,
  each frame of a multi-frame instance) is one input; the series' probabilities are their mean
  (or max). Constant frames (blank edge slices) are left out.
- 3D models (``mri3d``): the series is one volume (a multi-frame instance, a NIfTI file, or the
  instances sorted along the slice normal by ``medtl.data.io.read_dicom_series``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from medtl.data import io
from medtl.data.transforms import LoadMedicalImaged, Preset, SplitChain, preset
from medtl.deploy.discover import Series
from medtl.errors import MedtlError


MIN_COVERAGE = 0.5  # a volume filling less of the model's field of view gets a note on its result row


def field_of_view_coverage(image: io.Image, spacing, volume_shape) -> float:
    """The fraction of the model's field of view (``volume_shape`` voxels of ``spacing`` mm, after resampling
    to RAS) that the volume's own extent fills, wherever the chain places the window."""
    axes = np.asarray(image.affine, dtype=float)[:3, :3]
    extent = np.zeros(3)
    for i in range(3):  # voxel axis i runs mostly along one RAS axis
        extent[int(np.argmax(np.abs(axes[:, i])))] = image.array.shape[i] * np.linalg.norm(axes[:, i])
    field = np.asarray(volume_shape, dtype=float) * np.asarray(spacing, dtype=float)
    return float(np.prod(np.minimum(1.0, extent / field)))


class SeriesLoader:
    """``loader(series, files) -> Tensor (N, C, *spatial)``; raises :class:`MedtlError` for bad input."""

    def __init__(self, preset_name: str, options: dict, spatial_dims: int | None = None):
        det, _ = preset(preset_name, False, **options)
        if not det or not isinstance(det[0], LoadMedicalImaged):  # the contract this module relies on
            raise MedtlError(f"preset {preset_name!r} no longer starts with its loader; update medtl.deploy.inputs",
                             "preprocess")
        self.chain = Compose(det[1:])  # the reference: what training ran (tests compare the split chain to it)
        self.spatial_dims = spatial_dims or Preset(preset_name).spatial_dims
        self.chain_options = Preset(preset_name).resolved(options)
        self.steps = SplitChain(det[1:])  # the same transforms, computed the fast way

    def __call__(self, series: Series, files: list[Path] | None = None, notes: list[str] | None = None) -> torch.Tensor:
        """The model's input; ``notes`` (when given) gets what the result's reader should know (a volume that
        covers little of the model's field of view)."""
        files = list(files if files is not None else series.files)
        if not files:
            raise MedtlError("series has no files")
        images = self._images_2d(files) if self.spatial_dims == 2 else [self._volume(series, files)]
        if self.spatial_dims == 3 and notes is not None:
            notes += self._coverage_notes(images[0])
        # One image at a time, from the reader to the model's input size: a series of large images
        # never sits in memory at full resolution all at once (see limits in docs/batch.md).
        out = [self._prepare(image) for image in images]
        if not out:
            raise MedtlError("every image of the series is constant")
        batch = torch.stack(out)
        if not torch.isfinite(batch).all():
            raise MedtlError("preprocessing produced NaN/Inf values")
        return batch

    def _coverage_notes(self, image: io.Image) -> list[str]:
        options = self.chain_options
        covered = field_of_view_coverage(image, options["spacing"], options["volume_shape"])
        if covered >= MIN_COVERAGE:
            return []
        mm = "x".join(f"{s * v:g}" for s, v in zip(options["spacing"], options["volume_shape"]))
        return [f"the volume covers {covered:.0%} of the model's {mm} mm field of view; the rest is padding (a slab "
                "or partial acquisition?), so this prediction rests on little of the anatomy the model learned"]

    def _prepare(self, image: io.Image) -> torch.Tensor:
        """The preset chain on one image (:class:`medtl.data.transforms.SplitChain`)."""
        tensor = torch.from_numpy(np.ascontiguousarray(image.array, dtype=np.float32))[None]
        if self.steps.tracked:  # transforms that read the affine (orientation, spacing) get a MetaTensor
            tensor = MetaTensor(tensor, affine=torch.as_tensor(image.affine, dtype=torch.float64))
        return self.steps({"image": tensor})["image"].clone()

    def _images_2d(self, files: list[Path]):
        """Every usable 2D image of the files, lazily (a generator: one file decoded at a time)."""
        for f in files:
            image = _read_one(f)
            if image.array.ndim == 2:
                frames = [image.array]
            else:  # multi-frame: readers give (cols, rows, frames); a 2D model saw (rows, cols)
                frames = [image.array[..., k].T for k in range(image.array.shape[-1])]
            for frame in frames:
                if len(files) == 1 and len(frames) == 1:
                    io.check_pixels(frame, f)  # a lone image must be usable
                elif not np.all(np.isfinite(frame)):
                    io.check_pixels(frame, f)
                elif frame.max() == frame.min():
                    continue  # blank slice of a stack: no information, and it would break scaling
                yield io.Image(frame)
            del image, frames

    def _volume(self, series: Series, files: list[Path]) -> io.Image:
        if len(files) == 1:
            image = _read_one(files[0])
            if image.array.ndim != 3:
                raise MedtlError(f"a 3D model needs a volume; this series is one 2D image {image.array.shape}",
                                 files[0])
            io.require_geometry(image, files[0])
        else:
            image = read_instances(files, series.series_uid)
        io.check_pixels(image.array, files[0])
        return image


def _read_one(path: Path) -> io.Image:
    from medtl.deploy.discover import regular_file

    if io.ARRAY_MEMBER in str(path):  # one image of an array archive (a manifest row)
        return io.read(path)
    kind = io.kind_of(path)
    reader = {"image": io.read_picture, "nifti": io.read_nifti, "dicom": io.read_dicom}[kind]
    if kind == "nifti":  # nibabel needs the real name (.nii or .nii.gz)
        return reader(Path(path))
    try:
        with regular_file(Path(path)) as readable:
            return reader(readable)
    except MedtlError as err:  # name the file, not the /proc/self/fd path it was read through
        raise MedtlError(err.reason, path) from None


def read_instances(files: list[Path], series_uid: str) -> io.Image:
    """``io.read_dicom_series`` on exactly these files, not on everything in their folders.

    Why a folder of links: the data layer's series reader takes a folder, and the instances of one
    series may share their folder with other series and broken files.
    """
    with tempfile.TemporaryDirectory(prefix="medtl-series-") as tmp:
        links = {}
        for i, f in enumerate(files):
            link = Path(tmp) / f"{i:06d}.dcm"
            try:
                os.symlink(Path(f).resolve(), link)
            except OSError:  # no symlinks here (some file systems): copy
                import shutil

                shutil.copyfile(f, link)
            links[str(link)] = str(f)
        try:
            return io.read_dicom_series(Path(tmp), series_uid or None, names=links)
        except MedtlError as err:
            # Name the real file, not the temporary link (nor the temporary folder).
            real = err.where if err.where in links.values() else links.get(err.where or "", str(files[0]))
            raise MedtlError(err.reason, real) from None
