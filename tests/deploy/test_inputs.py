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


def _reference(loader: SeriesLoader, image) -> torch.Tensor:
    """The preset chain as training runs it: MONAI's transforms on a MetaTensor, metadata tracked."""
    import numpy as np
    from monai.data import MetaTensor

    tensor = MetaTensor(torch.from_numpy(np.ascontiguousarray(image.array, dtype=np.float32))[None],
                        affine=torch.as_tensor(image.affine, dtype=torch.float64))
    out = loader.chain({"image": tensor})["image"]
    return (out.as_tensor() if isinstance(out, MetaTensor) else torch.as_tensor(out)).float()


@pytest.mark.parametrize("preset,options", [("cxr", {"image_size": 128}), ("cxr", {"image_size": 64, "clahe": True}),
                                            ("mri2d", {"image_size": 96})])
def test_fast_2d_preprocessing_equals_the_training_chain(preset, options, data_root, real_series):
    # The faster path (plain tensors, no metadata tracking) computes the same values as the preset chain
    # on a MetaTensor, on real PNG chest X-rays, real JPEGs and the frames of a real DICOM.
    from medtl.data import io
    from medtl.deploy.inputs import _read_one

    loader = SeriesLoader(preset, options)
    assert not loader.steps.tracked  # no 2D transform reads the affine
    assert type(loader.steps.untracked[1 if options.get("clahe") else 0].scaler).__name__ == "PercentileScale"
    files = sorted((data_root / "cxr_nih").rglob("*.png"))[:6] + sorted((data_root / "cxr_kermany").rglob("*.jp*g"))[:2]
    images = [_read_one(f) for f in files]
    images += list(loader._images_2d(list(real_series["MR10"].files)))[:3]
    assert len(images) >= 9
    for image in images:
        image = io.Image(image.array) if image.array.ndim == 2 else image
        fast, ref = loader._prepare(image), _reference(loader, image)
        assert fast.shape == ref.shape
        assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-5), (fast - ref).abs().max()


@pytest.mark.parametrize("crop, untracked", [({}, ["CropToHeadd", "NonzeroZScore"]),  # the defaults
                                              ({"crop": "center"}, ["NonzeroZScore", "ResizeWithPadOrCropd"])])
def test_fast_3d_preprocessing_equals_the_training_chain(data_root, real_series, crop, untracked):
    from medtl.deploy.inputs import _read_one

    loader = SeriesLoader("mri3d", crop)  # RAS, 2 mm, 80x96x80
    assert [type(t).__name__ for t in loader.steps.tracked] == ["Orientationd", "Spacingd"]
    assert [type(getattr(t, "normalizer", t)).__name__ for t in loader.steps.untracked] == untracked
    nifti = sorted((data_root / "mri3d_ixi").rglob("*.nii.gz"))[:2]
    images = [_read_one(f) for f in nifti] + [loader._volume(real_series["MR32"], list(real_series["MR32"].files))]
    for image in images:
        fast, ref = loader._prepare(image), _reference(loader, image)
        assert fast.shape == ref.shape == (1, 80, 96, 80)
        assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-5), (fast - ref).abs().max()
