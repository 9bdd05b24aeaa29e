"""The project's manifests against the real data under MEDTL_DATA_ROOT."""

import shutil

import pytest
import torch

from medtl.data import Manifest, build_dataset
from medtl.data.build import build_manifest
from medtl.data.check import check_manifest
from medtl.errors import MedtlError

pytestmark = pytest.mark.real_data


def test_every_data_folder_has_a_manifest(data_root, manifests_dir):
    folders = {p.name for p in data_root.iterdir() if p.is_dir()}
    built = {Manifest.load(p).meta["built_from"].split("/")[0] for p in manifests_dir.glob("*.csv")}
    assert folders <= built, f"no manifest for {sorted(folders - built)}"


@pytest.mark.parametrize("name", ["cxr_nih", "cxr_actualmed", "cxr_kermany", "cxr_kermany_pneumoniamnist", "mri2d_yesno",
                                  "mri3d_ixi", "dicom", "mri2d_tumor4", "mri2d_tumor4_minus_yesno"])
def test_committed_manifest_passes_check(data_root, manifests_dir, name):
    manifest = Manifest.load(manifests_dir / f"{name}.csv")
    assert not any(r.path.startswith("/") or ".." in r.path.split("/") for r in manifest)
    report = check_manifest(manifest, data_root)
    assert report.ok, report.render()
    assert report.near_copy_groups_across_splits == 0


def test_committed_manifest_is_what_the_command_builds(data_root, manifests_dir):
    committed = Manifest.load(manifests_dir / "cxr_nih.csv")
    rebuilt = build_manifest(data_root / "cxr_nih/manifest.csv", data_root, seed=committed.meta["seed"],
                             near_copy_correlation=committed.meta["near_copy_correlation"])
    assert [(r.path, r.split) for r in rebuilt] == [(r.path, r.split) for r in committed]
    # patients with images in both classes (7 of them) still sit in one split
    splits = {}
    for r in committed:
        splits.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values())


def test_da_source_holds_no_copy_of_the_target(manifests_dir):
    source = Manifest.load(manifests_dir / "mri2d_tumor4_minus_yesno.csv")
    full = Manifest.load(manifests_dir / "mri2d_tumor4.csv")
    # the data README measured 623 tumour4 images that copy a yes/no image
    assert 550 <= len(full) - len(source) == source.meta["excluded_rows"] <= 700


@pytest.mark.parametrize("name,shape", [("cxr_nih", (1, 64, 64)), ("mri2d_yesno", (1, 64, 64)),
                                        ("cxr_kermany_pneumoniamnist", (1, 32, 32)),
                                        ("mri3d_ixi", (1, 48, 56, 48))])
def test_real_items_load_through_the_presets(data_root, manifests_dir, name, shape):
    manifest = Manifest.load(manifests_dir / f"{name}.csv").select(split="test")
    manifest.rows = manifest.rows[:3]
    opts = {"spacing": (4.0, 4.0, 4.0), "volume_shape": shape[1:]} if name == "mri3d_ixi" else {"image_size": shape[1]}
    ds = build_dataset(manifest, data_root, train=True, **opts)
    batch = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert batch.shape == (3, *shape) and torch.isfinite(batch).all()


def test_dicom_radiograph_and_series_load(data_root, manifests_dir):
    manifest = Manifest.load(manifests_dir / "dicom.csv")
    cxr = manifest.select()
    cxr.rows = [r for r in manifest if r.modality == "cxr"]
    ds = build_dataset(cxr, data_root, image_size=64)
    a, b = ds[0]["image"], ds[1]["image"]  # uncompressed and JPEG 2000 copies of one radiograph
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99
    mri = manifest.select()
    mri.rows = [r for r in manifest if r.path.endswith("mprage")]
    vol = build_dataset(mri, data_root, spacing=(2.0, 2.0, 2.0), volume_shape=(64, 64, 64))[0]["image"]
    assert vol.shape == (1, 64, 64, 64) and float(vol.abs().max()) > 0


def test_aligned_brain_volumes_of_different_people_are_not_near_copies(data_root, manifests_dir):
    """IXI heads of different people, at one voxel size and orientation, share their shape: at 16^3 thumbnails two subjects correlated up to
    0.984, and the default build joined 56 of 119 subjects into one group (a split with one class in val).
    At the default threshold, different subjects stay apart while a re-quantised noisy copy joins its original."""
    import numpy as np

    from medtl.data import duplicates, io
    from medtl.data.check import ScannedFile, near_copy_groups, scan

    rows = Manifest.load(manifests_dir / "mri3d_ixi.csv").rows[:40]
    scanned = scan(rows, data_root, progress=False)
    image = io.read(data_root / rows[0].path)
    original = image.array.astype(np.float32)
    copy = np.round(original * 0.9) + np.random.default_rng(0).normal(0, 0.05 * original.std(), original.shape)
    groups = near_copy_groups([*scanned, ScannedFile(thumb=duplicates.thumbnail(copy, image.affine))])
    assert len(set(groups[:40])) == 40  # 40 subjects, 40 groups
    assert groups[40] == groups[0]


def test_cropped_and_padded_copies_of_the_target_are_left_out_of_a_source(data_root, tmp_path):
    """Brain-MRI collections copy slices re-cropped or padded to another frame, which a whole-frame thumbnail
    scores 0.45-0.9: the source is compared again with thumbnails cut to the head (a review found 19 such
    copies left in mri2d_tumor4_minus_yesno)."""
    from PIL import Image

    real = sorted((data_root / "mri2d_yesno" / "images" / "no_tumor").glob("*.jpg"))[:24]
    assert [f.name for f in real[:5]] == ["10_no.jpg", "11_no.jpg", "12_no.jpg", "13_no.jpg", "14_no.jpg"]
    for label, files in (("a", real[:5]), ("b", real[5:10])):
        (tmp_path / "tgt" / label).mkdir(parents=True)
        for f in files:
            shutil.copy(f, tmp_path / "tgt" / label / f.name)
    for label, files in (("a", real[10:17]), ("b", real[17:24])):
        (tmp_path / "src" / label).mkdir(parents=True)
        for f in files:
            shutil.copy(f, tmp_path / "src" / label / f.name)
    copies = {}
    for k, f in enumerate(real[:5]):  # target slices changed as the collections changed them
        im = Image.open(f).convert("L")
        w, h = im.size
        if f.name in ("10_no.jpg", "12_no.jpg"):  # padded with a black border to another aspect ratio
            canvas = Image.new("L", (int(1.4 * w), h))
            canvas.paste(im, (int(0.2 * w), 0))
            im = canvas
        elif f.name in ("11_no.jpg", "13_no.jpg"):  # background cut off each side (these are 300 px wide, the head 128)
            im = im.crop((int(0.1 * w), 0, int(0.9 * w), h))
        else:  # 14_no: 6% cut off each side, resized back (the head is touched: whole frames score 0.68 here)
            im = im.crop((int(0.06 * w), int(0.06 * h), int(0.94 * w), int(0.94 * h))).resize((w, h))
        copies[k] = tmp_path / "src" / "a" / f"copy{k}.png"
        im.save(copies[k])
    target = build_manifest(tmp_path / "tgt", tmp_path, group_near_copies=False).save(tmp_path / "tgt.csv")
    source = build_manifest(tmp_path / "src", tmp_path, group_near_copies=False, exclude_copies_of=target)
    kept = {r.path for r in source}
    assert [r.path.rsplit("/", 1)[-1] for r in source if "copy" in r.path] == []
    assert len(kept) >= 14 - 1  # the 14 other slices stay (a look-alike too many is allowed, not a dozen)
    assert source.meta["excluded_above"] == {"correlation": 0.9, "correlation_cut_to_head": 0.85}


def test_the_committed_da_source_holds_none_of_the_cropped_copies_a_review_found(manifests_dir):
    paths = {r.path.rsplit("/", 1)[-1] for r in Manifest.load(manifests_dir / "mri2d_tumor4_minus_yesno.csv")}
    found = ["Tr-no_0163", "Tr-no_1418", "Tr-no_0034", "Tr-no_1078", "Tr-me_0255", "Tr-me_0207", "Tr-me_0196",
             "Tr-no_0112", "Tr-no_1092", "Tr-no_0190", "Tr-no_0962", "Tr-no_0032", "Tr-no_1073"]
    assert not [name for name in found if f"{name}.jpg" in paths]


def test_a_series_with_a_missing_slice_is_refused_naming_the_slice_it_is_about(data_root, tmp_path):
    """The build's message named the series folder only; the reader's own message is about one instance."""
    series = tmp_path / "t" / "b" / "gap"
    shutil.copytree(data_root / "dicom" / "mr_series_t1_mprage", series)
    files = sorted(series.iterdir())
    files[len(files) // 2].unlink()
    with pytest.raises(MedtlError, match=r"t/b/gap \(\d+\.dcm: this instance lies"):
        build_manifest(tmp_path / "t", tmp_path, fractions=(0, 0, 1))


def test_a_dicom_series_and_its_nifti_conversion_give_one_model_input(data_root, tmp_path):
    """The oblique MPRAGE series and the same pixels and affine saved as NIfTI (float32, as NIfTI stores it)
    went onto grids half a voxel apart in MONAI's Spacingd (inputs correlating 0.75): a model trained on
    NIfTI and deployed on DICOM read other voxels."""
    import nibabel as nib
    import numpy as np

    from medtl.data import io
    from medtl.data.transforms import preset_chain

    series = data_root / "dicom" / "mr_series_t1_mprage"
    image = io.read(series)
    nifti = tmp_path / "mprage.nii.gz"
    img = nib.Nifti1Image(image.array, image.affine)
    img.set_sform(image.affine, code=1)
    img.set_qform(image.affine, code=1)
    nib.save(img, nifti)
    assert np.allclose(io.read(nifti).affine, image.affine, atol=1e-4)
    chain = preset_chain("mri3d", False, spacing=(4.0, 4.0, 4.0), volume_shape=(40, 48, 40))
    a, b = (chain({"image": str(p)})["image"].numpy() for p in (series, nifti))
    assert a.shape == b.shape == (1, 40, 48, 40)
    assert np.abs(a - b).max() < 1e-3


def test_cutting_to_the_head_does_not_drop_chest_xrays_of_other_patients(data_root, manifests_dir):
    """A chest X-ray's body fills its frame: comparing uncut frames again at the looser cut-to-head threshold
    dropped 123 of cxr_nih's 738 images as 'copies' of cxr_actualmed's (a Spanish hospital's), where whole
    frames drop 27. Cut thumbnails now count only where one image of the pair lost a margin."""
    from medtl.data.build import drop_near_copies_of

    nih, actualmed = (Manifest.load(manifests_dir / f"{n}.csv") for n in ("cxr_nih", "cxr_actualmed"))
    _, whole_only = drop_near_copies_of(nih.rows, actualmed, data_root, cropped_threshold=1.01)
    _, both = drop_near_copies_of(nih.rows, actualmed, data_root)
    assert whole_only == 27 and whole_only <= both <= whole_only + 10
