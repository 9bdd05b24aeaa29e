import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from medtl.data import io
from medtl.errors import MedtlError


def _png(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)
    return path


@pytest.fixture
def gradient():
    return (np.arange(64 * 48).reshape(48, 64) % 251).astype(np.uint8)


def test_grey_png_values_kept(tmp_path, gradient):
    out = io.read(_png(tmp_path / "a.png", gradient))
    np.testing.assert_array_equal(out.array, gradient.astype(np.float32))


def test_16bit_png_keeps_full_range(tmp_path):
    arr = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = io.read(tmp_path / "a.png")
    assert out.array.max() == arr.max() > 255


def test_rgb_rgba_and_palette_become_one_channel(tmp_path, gradient):
    rgb = np.stack([gradient, gradient, gradient], axis=-1)
    np.testing.assert_allclose(io.read(_png(tmp_path / "rgb.png", rgb)).array, gradient, atol=1)
    rgba = np.concatenate([rgb, np.full(gradient.shape + (1,), 255, np.uint8)], axis=-1)
    np.testing.assert_allclose(io.read(_png(tmp_path / "rgba.png", rgba)).array, gradient, atol=1)
    # fully transparent pixels are empty space: black
    rgba[:10, :, 3] = 0
    out = io.read(_png(tmp_path / "rgba2.png", rgba)).array
    assert np.all(out[:10] == 0) and np.allclose(out[10:], gradient[10:], atol=1)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert io.read(tmp_path / "p.png").array.shape == gradient.shape


def test_truncated_png_and_jpeg_name_the_file(tmp_path, gradient):
    for suffix in ("png", "jpg"):
        good = tmp_path / f"good.{suffix}"
        Image.fromarray(gradient).save(good)
        bad = tmp_path / f"bad.{suffix}"
        bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
        with pytest.raises(MedtlError, match="truncated|corrupt") as err:
            io.read(bad)
        assert str(bad) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(MedtlError, match="not found") as err:
        io.read(tmp_path / "nope.png")
    assert "nope.png" in str(err.value)


def test_constant_image_refused(tmp_path):
    with pytest.raises(MedtlError, match="constant"):
        io.read(_png(tmp_path / "c.png", np.full((8, 8), 7, np.uint8)))


def test_non_dicom_with_dcm_suffix(tmp_path):
    fake = tmp_path / "x.dcm"
    fake.write_text("this is not DICOM")
    with pytest.raises(MedtlError, match="not a DICOM") as err:
        io.read(fake)
    assert "x.dcm" in str(err.value)


def test_dicom_without_pixel_data(tmp_path):
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(MedtlError, match="no pixel data"):
        io.read(tmp_path / "nopix.dcm")


def test_dicom_modality_lut_applied():
    path = pydicom.data.get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(io.read(path).array, expected)


def _nifti(path, data, slope=None):
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    if slope is not None:
        img.header.set_slope_inter(slope, 10.0)
    nib.save(img, path)
    return path


def test_nifti_scale_factors_honoured(tmp_path):
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    out = io.read(_nifti(tmp_path / "v.nii.gz", raw, slope=0.5))
    np.testing.assert_allclose(out.array, raw * 0.5 + 10.0)
    np.testing.assert_allclose(out.affine, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_nifti_nan_and_4d_refused(tmp_path):
    data = np.random.default_rng(0).random((4, 4, 4)).astype(np.float32)
    data[1, 1, 1] = np.nan
    with pytest.raises(MedtlError, match="NaN/Inf"):
        io.read(_nifti(tmp_path / "nan.nii.gz", data))
    data[1, 1, 1] = np.inf
    with pytest.raises(MedtlError, match="NaN/Inf"):
        io.read(_nifti(tmp_path / "inf.nii.gz", data))
    with pytest.raises(MedtlError, match="expected a 3D volume"):
        io.read(_nifti(tmp_path / "4d.nii.gz", np.ones((4, 4, 4, 3), np.float32)))
    # a 4D file holding a single volume is fine
    single = np.random.default_rng(1).random((4, 4, 4, 1)).astype(np.float32)
    assert io.read(_nifti(tmp_path / "one.nii.gz", single)).array.shape == (4, 4, 4)


@pytest.mark.real_data
def test_monochrome1_radiograph_is_inverted(data_root):
    path = data_root / "dicom/cr_chest/RG1_UNCR.dcm"
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    out = io.read(path).array
    np.testing.assert_allclose(out, raw.max() + raw.min() - raw)


@pytest.mark.real_data
def test_jpeg2000_dicom_decodes_close_to_uncompressed(data_root):
    lossless = io.read(data_root / "dicom/cr_chest/RG1_UNCR.dcm").array
    j2k = io.read(data_root / "dicom/cr_chest/RG1_J2KI.dcm").array
    assert j2k.shape == lossless.shape
    assert np.corrcoef(j2k.ravel(), lossless.ravel())[0, 1] > 0.99


@pytest.mark.real_data
def test_dicom_series_sorted_by_position_whatever_the_file_names(data_root, tmp_path):
    series = data_root / "dicom/mr_series_t1_mprage"
    files = sorted(series.iterdir())
    # copy under names whose order is the reverse of and unrelated to the slice order
    shuffled = tmp_path / "series"
    shuffled.mkdir()
    order = np.random.default_rng(0).permutation(len(files))
    for new, f in zip(order, files):
        shutil.copy(f, shuffled / f"img{new:03d}.dcm")
    a, b = io.read(series), io.read(shuffled)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.array.shape == (256, 256, len(files))
    # slices run along the normal in increasing order and voxel (0,0,0) is the first slice's corner
    datasets = [pydicom.dcmread(f) for f in files]
    orient = np.array(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(orient[:3], orient[3:])
    positions = sorted((np.array(d.ImagePositionPatient, float) for d in datasets), key=lambda p: p @ normal)
    first_ras = positions[0] * [-1, -1, 1]
    np.testing.assert_allclose(a.affine[:3, 3], first_ras, atol=1e-4)
    last_voxel = a.affine @ [0, 0, len(files) - 1, 1]
    np.testing.assert_allclose(last_voxel[:3], positions[-1] * [-1, -1, 1], atol=1e-3)
    # the pixels of the first sorted slice are the first file of that position
    first = next(d for d in datasets if np.allclose(np.array(d.ImagePositionPatient, float), positions[0]))
    np.testing.assert_array_equal(a.array[:, :, 0], first.pixel_array.T.astype(np.float32))


@pytest.mark.real_data
def test_real_formats_open(data_root):
    assert io.read(data_root / "dicom/emri_small_multiframe_mr.dcm").array.shape == (64, 64, 10)
    ixi = next((data_root / "mri3d_ixi/t1").iterdir())
    vol = io.read(ixi)
    assert vol.array.shape == (120, 120, 90) and vol.array.max() > 255  # uint8 scaled by its factor


def test_npz_members_read_and_stay_inside_the_root(tmp_path):
    from medtl.paths import resolve_inside

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", train_images=rng.integers(0, 255, (3, 8, 8), dtype=np.uint8),
             train_labels=np.array([[0], [1], [0]]))
    full = resolve_inside(tmp_path, "a.npz::train_images/2")
    out = io.read(full)
    np.testing.assert_array_equal(out.array, np.load(tmp_path / "a.npz")["train_images"][2])
    with pytest.raises(MedtlError, match="out of range"):
        io.read(resolve_inside(tmp_path, "a.npz::train_images/3"))
    with pytest.raises(MedtlError, match="not in archive"):
        io.read(resolve_inside(tmp_path, "a.npz::nope/0"))
    with pytest.raises(MedtlError, match="escapes"):
        resolve_inside(tmp_path, "../a.npz::train_images/0")


def test_npz_manifest_keeps_the_source_split(tmp_path):
    from medtl.data.build import build_manifest

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 10), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 16, 16), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None]
    arrays["test_images"][0] = arrays["train_images"][0]  # a leaked copy: must move to train
    np.savez(tmp_path / "m.npz", **arrays)
    m = build_manifest(tmp_path / "m.npz", tmp_path, label_names=["normal", "pneumonia"], keep_source_split=True,
                       modality="cxr")
    counts = m.class_counts()
    assert sum(counts["train"].values()) == 11 and sum(counts["test"].values()) == 3
    assert m.label_names == ["normal", "pneumonia"] and "1 near-copy" in m.meta["split"]


@pytest.mark.real_data
def test_a_truncated_uncompressed_dicom_is_called_damaged_not_missing_a_decoder(data_root, tmp_path):
    cut = tmp_path / "cut.dcm"
    cut.write_bytes((data_root / "dicom/cr_chest/RG1_UNCR.dcm").read_bytes()[:-100000])
    with pytest.raises(MedtlError, match="truncated or damaged") as err:
        io.read(cut)
    assert "JPEG 2000" not in str(err.value) and "cut.dcm" in str(err.value)
