"""Manifests under different data roots are compared together; a missing file is named with its
manifest and root before any feature is extracted."""

import shutil

import pytest

from medtl.cli import main
from medtl.data.build import build_manifest
from medtl.errors import MedtlError
from medtl.similarity import images


def _folder(src, dst, n=4):
    for label in ("no_tumor", "tumor"):
        (dst / label).mkdir(parents=True)
        for f in sorted((src / label).iterdir())[:n]:
            shutil.copy(f, dst / label / f.name)
    return dst


@pytest.fixture
def two_roots(tmp_path, data_root):
    src = data_root / "mri2d_yesno" / "images"
    a = _folder(src, tmp_path / "site_a" / "images")
    b = _folder(src, tmp_path / "site_b" / "scans")
    paths = []
    for name, folder in (("a", a), ("b", b)):
        m = build_manifest(folder, folder, group_near_copies=False)
        paths.append(m.save(tmp_path / "manifests" / f"{name}.csv"))  # records its own root
    return paths


def test_manifests_under_different_roots_are_compared_with_their_recorded_roots(two_roots, one_torch_thread):
    a, b = two_roots
    result = images.compare_manifests(a, b, image_size=32, n_permutations=10, split="all")
    assert result["datasets"]["source"]["n_cases"] == 8 and result["datasets"]["target"]["n_cases"] == 8
    matrix = images.similarity_matrix([a, b], image_size=32, n_permutations=10, max_cases=4)
    assert matrix["names"] == ["a", "b"] and matrix["metrics"]["mmd2"][0][1] is not None


def test_a_missing_file_names_manifest_and_root_before_the_encoder_loads(two_roots, tmp_path, monkeypatch, capsys):
    a, b = two_roots

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder was loaded before the files were checked")

    monkeypatch.setattr(images, "load_encoder", no_encoder)
    wrong = tmp_path / "site_a"
    with pytest.raises(MedtlError) as err:
        images.compare_manifests(a, b, target_root=wrong, split="all")
    assert str(err.value).startswith(f"b.csv (root {wrong}): no_tumor/")
    assert "file not found (and 7 more of 8 rows" in str(err.value)
    with pytest.raises(MedtlError, match=r"^a.csv \(root .*\): no_tumor/.*: file not found"):
        images.similarity_matrix([a, b], data_root=tmp_path)
    # the command line says the same, with --source-root / --target-root per manifest
    assert main(["similarity", "--source", str(a), "--target", str(b), "--source-root", str(tmp_path)]) == 2
    assert f"a.csv (root {tmp_path}): no_tumor/" in capsys.readouterr().err
