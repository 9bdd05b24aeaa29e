"""Series -> model input with the model's own preset chain, on the real DICOM series."""

import shutil

import pytest
import torch

from medtl.deploy.discover import scan_folder
from medtl.deploy.inputs import SeriesLoader
from medtl.errors import MedtlError

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def real_series(dicom_root):
    return {s.modality + str(s.n_frames): s for s in scan_folder(dicom_root)}


def test_2d_model_sees_every_image_of_a_series(real_series):
    loader = SeriesLoader("cxr", {"image_size": 32})
    x = loader(real_series["MR10"])  # multi-frame: one input per frame
    assert x.shape == (10, 1, 32, 32) and torch.isfinite(x).all()
    # z-scored per image, as in training
    assert torch.allclose(x.mean((1, 2, 3)), torch.zeros(10), atol=1e-4)


def test_3d_model_gets_one_volume(real_series):
    loader = SeriesLoader("mri3d", {"spacing": [8.0, 8.0, 8.0], "volume_shape": [16, 16, 16]})
    x = loader(real_series["MR32"])  # 32 sagittal slices sorted into one volume
    assert x.shape == (1, 1, 16, 16, 16)
    assert x.abs().sum() > 0


def test_3d_model_refuses_a_single_2d_image(tmp_path, mprage_files):
    shutil.copy(mprage_files[0], tmp_path / "one.dcm")
    (series,) = scan_folder(tmp_path)
    with pytest.raises(MedtlError, match="3D model needs a volume"):
        SeriesLoader("mri3d", {"volume_shape": [16, 16, 16]})(series)


def test_series_reader_uses_only_the_series_files(tmp_path, mprage_files):
    # The series shares its folder with a broken file: the volume is still built from its own files.
    for f in mprage_files[:8]:
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "broken.dcm").write_text("garbage")
    series = [s for s in scan_folder(tmp_path) if s.error is None]
    assert len(series) == 1
    x = SeriesLoader("mri3d", {"spacing": [8.0, 8.0, 8.0], "volume_shape": [16, 16, 16]})(series[0])
    assert x.shape == (1, 1, 16, 16, 16)
