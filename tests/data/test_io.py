import copy
import shutil
from pathlib import Path

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
    with pytest.raises(MedtlError, match=r"no pixel data, though its SOP class \(CT Image Storage\) holds an "
                                         "image: the file is probably truncated"):
        io.read(tmp_path / "nopix.dcm")
    # A file cut off inside its header reads as far as it goes: no pixels, and the same reason
    whole = pydicom.data.get_testdata_file("CT_small.dcm")
    cut = tmp_path / "cut.dcm"
    with open(whole, "rb") as f:
        cut.write_bytes(f.read()[:1500])
    with pytest.raises(MedtlError, match="probably truncated"):
        io.read(cut)


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
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float32)
    out = io.read(path).array
    # inverted over the stored bit range (one offset for every image), so bright means dense
    np.testing.assert_allclose(out, (2 ** ds.BitsStored - 1) - raw)


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
    with pytest.raises(MedtlError, match="contains '..': manifest paths lead down from the data root, never up"):
        resolve_inside(tmp_path, "../a.npz::train_images/0")
    with pytest.raises(MedtlError, match="contains '..'"):  # ends inside the root: still refused, and not as escaping
        resolve_inside(tmp_path, "x/../a.npz::train_images/0")


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


# -- DICOM geometry and pixel values against pydicom/numpy references (the series is a real sagittal
# MPRAGE of 32 slices; the variants are copies made here) ------------------------------------------


def _mprage(data_root):
    files = sorted((data_root / "dicom/mr_series_t1_mprage").glob("*.dcm"))
    return [pydicom.dcmread(f) for f in files]


def _save_series(folder, datasets):
    folder.mkdir()
    for k, ds in enumerate(datasets):
        ds.save_as(folder / f"{k:03d}.dcm")
    return folder


@pytest.mark.real_data
def test_monochrome1_series_is_inverted_with_one_offset_for_every_slice(data_root, tmp_path):
    """Inverting each slice over its own range banded the volume and lost its zero background."""
    dss = _mprage(data_root)
    for ds in dss:  # the same values stored inverted: 12 bits, so 4095 - x
        ds.PixelData = (4095 - ds.pixel_array).astype(np.uint16).tobytes()
        ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = io.read(_save_series(tmp_path / "mono1", dss)).array
    np.testing.assert_array_equal(inverted, io.read(data_root / "dicom/mr_series_t1_mprage").array)


@pytest.mark.real_data
@pytest.mark.parametrize("damage, message", [
    ("duplicate", "two slices in one place"),
    ("missing", "mm apart: a slice is missing"),
    ("uneven", "off the series' even spacing"),
    ("orientation", "is oriented"),
    ("spacing", "pixel spacing"),
])
def test_a_series_that_is_not_one_regular_grid_is_refused_naming_the_instance(data_root, tmp_path, damage, message):
    dss = _mprage(data_root)
    if damage == "duplicate":  # a second instance at the position of another (a repeated acquisition)
        extra = copy.deepcopy(dss[5])
        extra.SOPInstanceUID = pydicom.uid.generate_uid()
        dss.append(extra)
    elif damage == "missing":
        dss.pop(10)
    elif damage == "uneven":  # one slice 40% of a step out of line: no gap of a whole slice
        normal = np.cross(np.asarray(dss[0].ImageOrientationPatient[:3], float),
                          np.asarray(dss[0].ImageOrientationPatient[3:], float))
        step = abs(float(np.dot(np.subtract(dss[1].ImagePositionPatient, dss[0].ImagePositionPatient), normal)))
        dss[12].ImagePositionPatient = list(np.asarray(dss[12].ImagePositionPatient, float) + 0.4 * step * normal)
    elif damage == "orientation":
        dss[7].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    else:
        dss[7].PixelSpacing = [0.5, 0.5]
    folder = _save_series(tmp_path / damage, dss)
    with pytest.raises(MedtlError, match=message) as err:
        io.read(folder)
    assert Path(err.value.where).parent == folder  # the instance, not just the folder


@pytest.mark.real_data
def test_positions_written_with_few_decimals_still_make_one_volume(data_root, tmp_path):
    """A 0.625 mm axial step written to one decimal gives gaps of 0.6 and 0.7 mm: rounding, not a missing slice."""
    dss = _mprage(data_root)[:20]
    for k, ds in enumerate(dss):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100, -100, round(-50 + 0.625 * k, 1)]
    volume = io.read(_save_series(tmp_path / "rounded", dss))
    assert volume.array.shape == (256, 256, 20)
    assert volume.affine[2, 2] == pytest.approx(0.625, abs=0.01)


@pytest.mark.real_data
def test_monochrome1_is_inverted_after_its_modality_lut(data_root, tmp_path):
    """Inverting the stored values before a (non-linear) LUT looked them up where it was never defined."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_modality_lut
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(data_root / "dicom/mr_series_t1_mprage/00085.dcm")
    x = ds.pixel_array.astype(np.int64)
    ds.PhotometricInterpretation, ds.BitsStored, ds.HighBit = "MONOCHROME1", 16, 15
    ds.PixelData = (4095 - x).astype(np.uint16).tobytes()
    lut = Dataset()
    lut.LUTDescriptor, lut.ModalityLUTType = [4096, 0, 16], "US"
    lut.LUTData = (np.sqrt(np.arange(4096)) * 1000).astype(np.uint16).tobytes()
    lut["LUTData"].VR = "OW"
    ds.ModalityLUTSequence = Sequence([lut])
    ds.save_as(tmp_path / "lut.dcm")
    shown = apply_modality_lut((4095 - x).astype(np.uint16), ds).astype(np.float64)
    top = float(np.sqrt(4095) * 1000 // 1)  # the LUT's last entry: every stored value above 4095 maps there
    np.testing.assert_allclose(io.read(tmp_path / "lut.dcm").array, top - shown)


@pytest.mark.real_data
def test_a_series_read_from_chosen_files_names_the_real_files(data_root, tmp_path):
    from medtl.deploy.inputs import read_instances

    dss = _mprage(data_root)[:6]
    dss[4].ImagePositionPatient = dss[2].ImagePositionPatient
    folder = _save_series(tmp_path / "chosen", dss)
    files = sorted(folder.iterdir())
    with pytest.raises(MedtlError) as err:
        read_instances(files, str(dss[0].SeriesInstanceUID))
    assert err.value.where in (str(files[2]), str(files[4]))
    assert "lies where" in err.value.reason and ("002.dcm" in err.value.reason or "004.dcm" in err.value.reason)


@pytest.mark.real_data
def test_enhanced_multiframe_volume_matches_the_same_slices_as_a_series(data_root, tmp_path):
    """Frames placed by the functional groups are ordered along the normal with their orientation, and
    the rescale stored there is applied, as for a series (it was read as axial, in file order, unscaled)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    dss = _mprage(data_root)
    mf = copy.deepcopy(dss[0])
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceLocation"):
        delattr(mf, kw)
    mf.SOPClassUID = mf.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR
    mf.NumberOfFrames = len(dss)
    shared, orient, measures, rescale = Dataset(), Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = dss[0].ImageOrientationPatient
    measures.PixelSpacing = dss[0].PixelSpacing
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 2, -1024, "US"
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([rescale])
    mf.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for ds in reversed(dss):  # frames in another order than the files
        frame, position = Dataset(), Dataset()
        position.ImagePositionPatient = ds.ImagePositionPatient
        frame.PlanePositionSequence = Sequence([position])
        frames.append(frame)
    mf.PerFrameFunctionalGroupsSequence = Sequence(frames)
    mf.PixelData = np.stack([ds.pixel_array for ds in reversed(dss)]).astype(np.uint16).tobytes()
    mf.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)

    volume, series = io.read(tmp_path / "enhanced.dcm"), io.read(data_root / "dicom/mr_series_t1_mprage")
    np.testing.assert_array_equal(volume.array, 2 * series.array - 1024)
    np.testing.assert_allclose(volume.affine, series.affine, atol=1e-9)


@pytest.mark.real_data
def test_a_cine_of_frames_at_one_position_is_read_frame_by_frame_and_refused_as_a_volume(data_root, tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from medtl.data.transforms import LoadMedicalImage
    from medtl.deploy.inputs import SeriesLoader

    dss = _mprage(data_root)
    cine = copy.deepcopy(dss[0])
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "SliceLocation"):
        delattr(cine, kw)
    cine.NumberOfFrames = 5
    shared, orient = Dataset(), Dataset()
    orient.ImageOrientationPatient = dss[0].ImageOrientationPatient
    shared.PlaneOrientationSequence = Sequence([orient])
    cine.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for _ in range(5):  # every frame at one position: a cine, not a volume
        frame, position = Dataset(), Dataset()
        position.ImagePositionPatient = dss[10].ImagePositionPatient
        frame.PlanePositionSequence = Sequence([position])
        frames.append(frame)
    cine.PerFrameFunctionalGroupsSequence = Sequence(frames)
    cine.PixelData = np.stack([ds.pixel_array for ds in dss[:5]]).astype(np.uint16).tobytes()
    cine.save_as(tmp_path / "cine.dcm", enforce_file_format=True)
    assert SeriesLoader("mri2d", {"image_size": 32})(None, [tmp_path / "cine.dcm"]).shape == (5, 1, 32, 32)
    with pytest.raises(MedtlError, match="two slices in one place"):
        LoadMedicalImage(ndim=3)(tmp_path / "cine.dcm")


@pytest.mark.real_data
def test_multiframe_without_plane_geometry_is_refused_by_3d_models_only(data_root):
    """emri_small places none of its frames: 2D models read it frame by frame, a 3D model would guess."""
    from medtl.data.transforms import LoadMedicalImage

    path = data_root / "dicom/emri_small_multiframe_mr.dcm"
    assert io.read(path).meta["geometry"] == "unknown"
    with pytest.raises(MedtlError, match="guessed orientation"):
        LoadMedicalImage(ndim=3)(path)


@pytest.mark.real_data
def test_palette_colour_image_is_read_as_the_grey_it_displays(data_root, tmp_path):
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(data_root / "dicom/mr_series_t1_mprage/00085.dcm")
    index = (ds.pixel_array / ds.pixel_array.max() * 255).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PhotometricInterpretation = "PALETTE COLOR"
    lut = (np.arange(256)[::-1].astype(np.uint16) * 257).tobytes()  # a reversed grey palette
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut)
        ds[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"
        ds[f"{colour}PaletteColorLookupTableData"].VR = "OW"
    ds.PixelData = index.tobytes()
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "palette.dcm")
    shown = apply_color_lut(index, ds).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(io.read(tmp_path / "palette.dcm").array, shown, rtol=1e-5)


@pytest.mark.real_data
def test_jpeg_lossless_dicom_decodes_to_the_original_pixels(data_root, tmp_path):
    """JPEG Lossless (process 14), the usual lossless syntax in PACS archives, written here by GDCM."""
    import gdcm

    source = data_root / "dicom/mr_series_t1_mprage/00085.dcm"
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(tmp_path / "lossless.dcm"))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    assert pydicom.dcmread(tmp_path / "lossless.dcm").file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(io.read(tmp_path / "lossless.dcm").array, io.read(source).array)


@pytest.mark.real_data
def test_a_nifti_without_orientation_is_refused_by_3d_models(data_root, tmp_path):
    """qform_code = sform_code = 0: nibabel's affine is a guess from the voxel sizes (an IXI head read that way
    correlates 0.21 with itself in RAS), and predict wrote an ok row with no caveat (3D review); its reader
    (deploy.inputs) and manifest check refuse through the same io.require_geometry."""
    from medtl.data.transforms import LoadMedicalImage

    src = nib.load(str(next(iter(sorted((data_root / "mri3d_ixi").rglob("*.nii.gz"))))))
    img = nib.Nifti1Image(np.asarray(src.dataobj), src.affine, src.header)
    img.set_sform(src.affine, code=0)
    img.set_qform(src.affine, code=0)
    nib.save(img, tmp_path / "no_orientation.nii.gz")
    assert io.read(tmp_path / "no_orientation.nii.gz").meta["geometry"] == "unknown"
    with pytest.raises(MedtlError, match=r"no_orientation\.nii\.gz: NIfTI without an orientation \(qform_code and "
                                         r"sform_code are both 0\): a 3D model would see it in a guessed orientation"):
        LoadMedicalImage(ndim=3)(tmp_path / "no_orientation.nii.gz")
    img.set_sform(src.affine, code=1)  # either code placing the volume is enough
    nib.save(img, tmp_path / "placed.nii.gz")
    assert "geometry" not in io.read(tmp_path / "placed.nii.gz").meta
    assert LoadMedicalImage(ndim=3)(tmp_path / "placed.nii.gz").ndim == 4


def test_a_file_of_no_image_format_is_not_called_bad_dicom(tmp_path):
    """io.read('README.md') said 'not a DICOM file (no DICM preamble/marker)': any unknown suffix was reported as
    broken DICOM (notebook review). A DICOM-like name still gets the DICOM message."""
    (tmp_path / "notes.md").write_text("# notes\n")
    (tmp_path / "fake.dcm").write_text("# notes\n")
    with pytest.raises(MedtlError, match=r"notes\.md: not an image medtl reads: \.md is neither a picture"):
        io.read(tmp_path / "notes.md")
    with pytest.raises(MedtlError, match=r"fake\.dcm: not a DICOM file"):
        io.read(tmp_path / "fake.dcm")


def test_load_checkpoint_given_no_path_says_so():
    from medtl.models import load_checkpoint

    with pytest.raises(MedtlError, match="give the weights file's path \\(a str or Path\\), got int 123"):
        load_checkpoint(123)


def test_a_dicom_file_named_by_its_uid_is_still_called_dicom(tmp_path):
    (tmp_path / "1.2.840.113619.2.320").write_text("not dicom")
    with pytest.raises(MedtlError, match="not a DICOM file"):
        io.read(tmp_path / "1.2.840.113619.2.320")


def test_one_slice_is_not_a_volume_for_3d_models(tmp_path):
    """A 120x120x1 NIfTI reached a 3D model as a volume (an ok row with a coverage caveat) while one 2D DICOM image
    was an error row (3D review)."""
    from medtl.data.transforms import LoadMedicalImage

    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 40, 1)).astype(np.float32), np.eye(4)),
             tmp_path / "slice.nii.gz")
    with pytest.raises(MedtlError, match=r"slice\.nii\.gz: a 3D model needs a volume; this file is one 2D slice "
                                         r"\(40, 40, 1\)"):
        LoadMedicalImage(ndim=3)(tmp_path / "slice.nii.gz")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 40, 2)).astype(np.float32), np.eye(4)),
             tmp_path / "slab.nii.gz")
    assert LoadMedicalImage(ndim=3)(tmp_path / "slab.nii.gz").shape == (1, 40, 40, 2)  # a slab: read, with caveats later


def test_a_photo_is_read_upright_by_its_exif_orientation(tmp_path):
    """A phone photo of a film stores its pixels sideways with EXIF Orientation 6 (rotate 90 degrees clockwise to
    view); every viewer shows it upright, and a model trained on upright images must get it so."""
    from PIL import Image as PILImage

    from medtl.data import io

    upright = np.zeros((40, 60), np.uint8)
    upright[:10, :30] = 255  # a bright block at the top left
    stored = PILImage.fromarray(upright).transpose(PILImage.Transpose.ROTATE_90)  # what the camera wrote (60x40)
    exif = PILImage.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    stored.save(tmp_path / "photo.jpg", quality=95, exif=exif)
    array = io.read(tmp_path / "photo.jpg").array
    assert array.shape == (40, 60)
    assert np.abs(array.astype(float) - upright).mean() < 3  # JPEG's rounding aside, the upright picture
    stored.save(tmp_path / "plain.jpg", quality=95)  # no EXIF: read as stored
    assert io.read(tmp_path / "plain.jpg").array.shape == (60, 40)
