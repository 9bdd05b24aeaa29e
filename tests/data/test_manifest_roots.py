"""A manifest records its own data root; missing files are named with the manifest and the root."""

import json
import shutil

import pytest

from medtl.data.manifest import Manifest, ManifestRow, data_root_for, require_files
from medtl.errors import MedtlError


def _manifest(paths):
    return Manifest([ManifestRow(p, "a", p, "d", "train", "mri2d") for p in paths], ["a"])


def test_save_records_the_root_relative_to_the_manifest_and_absolute(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.png").write_bytes(b"x")
    path = _manifest(["a/1.png"]).save(tmp_path / "project" / "m.csv", data_root=root)
    meta = json.loads((tmp_path / "project" / "m.meta.json").read_text())
    assert meta["data_root"] == "../data" and meta["data_root_absolute"] == str(root.resolve())
    loaded = Manifest.load(path)
    assert loaded.recorded_root == root.resolve()
    # moved together with its data, the relative record still finds the root
    (tmp_path / "moved").mkdir()
    shutil.move(tmp_path / "project", tmp_path / "moved" / "project")
    shutil.move(root, tmp_path / "moved" / "data")
    moved = Manifest.load(tmp_path / "moved" / "project" / "m.csv")
    assert moved.recorded_root == (tmp_path / "moved" / "data").resolve()
    require_files(moved, moved.recorded_root)
    # saved elsewhere without a root, it keeps the one it recorded
    again = moved.save(tmp_path / "copy" / "m2.csv")
    assert Manifest.load(again).recorded_root == (tmp_path / "moved" / "data").resolve()


def test_data_root_for_prefers_the_given_root_then_the_recorded_then_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTL_DATA_ROOT", str(tmp_path / "env"))
    bare = _manifest(["a/1.png"])
    assert data_root_for(bare) == tmp_path / "env"
    (tmp_path / "rec").mkdir()
    bare.save(tmp_path / "m.csv", data_root=tmp_path / "rec")
    m = Manifest.load(tmp_path / "m.csv")
    assert data_root_for(m) == (tmp_path / "rec").resolve()
    assert data_root_for(m, tmp_path / "given") == tmp_path / "given"


def test_require_files_names_the_manifest_the_root_and_the_first_missing_file(tmp_path):
    (tmp_path / "no_tumor").mkdir()
    (tmp_path / "no_tumor" / "1_no.jpg").write_bytes(b"x")
    m = _manifest(["no_tumor/1_no.jpg", "no_tumor/10_no.jpg"])
    m.save(tmp_path / "mri2d_yesno.csv")
    with pytest.raises(MedtlError) as err:
        require_files(Manifest.load(tmp_path / "mri2d_yesno.csv"), tmp_path)
    assert str(err.value) == f"mri2d_yesno.csv (root {tmp_path}): no_tumor/10_no.jpg: file not found"
    m3 = _manifest(["x/1.jpg", "x/2.jpg", "x/3.jpg"])
    with pytest.raises(MedtlError, match=r"^manifest \(root .*\): x/1.jpg: file not found \(and 2 more of 3 rows, "
                                         r"e.g. x/2.jpg, x/3.jpg: is this the manifest's data root\?\)"):
        require_files(m3, tmp_path)
    with pytest.raises(MedtlError, match="the data root is not a folder"):
        require_files(m3, tmp_path / "absent")


def test_build_records_the_root_it_was_built_under(tmp_path, data_root):
    from medtl.data.build import build_manifest

    folder = tmp_path / "brain"
    for label in ("no_tumor", "tumor"):
        (folder / label).mkdir(parents=True)
        for f in sorted((data_root / "mri2d_yesno" / "images" / label).iterdir())[:3]:
            shutil.copy(f, folder / label / f.name)
    built = build_manifest(folder, folder, group_near_copies=False)
    path = built.save(tmp_path / "manifests" / "brain.csv")
    loaded = Manifest.load(path)
    assert loaded.meta["data_root"] == "../brain" and loaded.recorded_root == folder.resolve()
    require_files(loaded, data_root_for(loaded))
