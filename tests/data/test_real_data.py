"""The project's manifests against the real data under MEDTL_DATA_ROOT."""

import pytest
import torch

from medtl.data import Manifest, build_dataset
from medtl.data.build import build_manifest
from medtl.data.check import check_manifest

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
    """Skull-stripped, aligned IXI brains share their shape: at 16^3 thumbnails two subjects correlated up to
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
