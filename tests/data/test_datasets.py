import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medtl.data import Manifest, ManifestRow, build_dataset
from medtl.data.datasets import chain_key
from medtl.data.transforms import CLAHE, preset
from medtl.errors import MedtlError


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "img" / "broken.png").write_bytes((tmp_path / "img" / "0.png").read_bytes()[:60])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img" / "blank.png")
    vol = rng.random((20, 24, 16)).astype(np.float32) * (rng.random((20, 24, 16)) > 0.3)
    nib.save(nib.Nifti1Image(vol, np.diag([3.0, 3.0, 3.0, 1.0])), tmp_path / "img" / "v.nii.gz")
    return tmp_path


def _manifest(paths, modality="mri2d"):
    rows = [ManifestRow(p, "b" if i % 2 else "a", str(i), "d", "train", modality) for i, p in enumerate(paths)]
    return Manifest(rows, ["a", "b"])


def test_2d_items_are_sized_normalised_and_labelled(root):
    ds = build_dataset(_manifest([f"img/{i}.png" for i in range(4)]), root, image_size=32)
    item = ds[1]
    assert item["image"].shape == (1, 32, 32) and item["label"].item() == 1
    assert item["case_id"] == "img/1.png" and item["domain"] == "d"
    assert abs(float(item["image"].mean())) < 1e-5 and abs(float(item["image"].std()) - 1) < 0.02


def test_3d_volume_resampled_normalised_over_brain_and_padded(root):
    ds = build_dataset(_manifest(["img/v.nii.gz"], "mri3d"), root, spacing=(1.5, 1.5, 1.5), volume_shape=(48, 32, 40))
    img = ds[0]["image"]
    assert img.shape == (1, 48, 32, 40)
    inside = img[img != 0]
    assert abs(float(inside.mean())) < 0.05 and abs(float(inside.std()) - 1) < 0.05


def test_4d_expectations_and_wrong_dimensionality(root):
    with pytest.raises(MedtlError, match="expected a 3D image"):
        build_dataset(_manifest(["img/0.png"], "mri3d"), root)


def test_raise_mode_stops_at_first_bad_file(root):
    m = _manifest(["img/0.png", "img/broken.png", "img/1.png"])
    with pytest.raises(MedtlError, match="broken.png"):
        build_dataset(m, root)


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_skip_mode_logs_and_lists_every_skipped_item(root, tmp_path, cache, caplog):
    m = _manifest(["img/0.png", "img/broken.png", "img/blank.png", "img/1.png"])
    run = tmp_path / f"run_{cache}"
    ds = build_dataset(m, root, on_error="skip", run_dir=run, cache=cache, cache_dir=tmp_path / f"c_{cache}")
    assert len(ds) == 2 and [ds[i]["case_id"] for i in range(2)] == ["img/0.png", "img/1.png"]
    with open(run / "skipped.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == ["img/broken.png", "img/blank.png"]
    assert "truncated" in rows[0]["reason"] or "corrupt" in rows[0]["reason"]
    assert "constant" in rows[1]["reason"]
    assert "broken.png" in caplog.text


def test_the_disk_cache_lives_in_the_run_folder_one_subfolder_per_chain(root, tmp_path):
    """medtl train --cache disk gives only its run folder; MONAI keys entries by item only, so a second set of
    options in the same folder must not read the first one's images."""
    m = _manifest([f"img/{i}.png" for i in range(4)])
    run = tmp_path / "run"
    small = build_dataset(m, root, cache="disk", run_dir=run, image_size=16)
    large = build_dataset(m, root, cache="disk", run_dir=run, image_size=24)
    assert small[0]["image"].shape == (1, 16, 16) and large[0]["image"].shape == (1, 24, 24)
    assert sorted(p.name for p in (run / "cache").iterdir()) == sorted([chain_key("mri2d", {"image_size": 16}),
                                                                        chain_key("mri2d", {"image_size": 24})])
    assert chain_key("mri2d", {}) == chain_key("mri2d", {"image_size": 128})  # the default, given or not
    with pytest.raises(MedtlError, match="cache='disk' needs cache_dir"):
        build_dataset(m, root, cache="disk")


def test_unknown_label_names_the_row(root):
    m = _manifest(["img/0.png"])
    m.rows[0] = ManifestRow("img/0.png", "zebra", "0", "d", "train", "mri2d")
    with pytest.raises(MedtlError, match="zebra"):
        build_dataset(m, root)


def test_deterministic_part_cached_random_part_not(root):
    m = _manifest([f"img/{i}.png" for i in range(2)])
    ds = build_dataset(m, root, train=True, image_size=32)
    torch.manual_seed(0)
    draws = [ds[0]["image"].clone() for _ in range(6)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # augmentation differs per access
    det, rand = preset("mri2d", train=True)
    assert rand and not preset("mri2d", train=False)[1]


def test_clahe_matches_scikit_image():
    from skimage.exposure import equalize_adapthist

    img = np.random.default_rng(0).random((64, 64))
    ours = CLAHE(clip_limit=0.02)(torch.as_tensor(img[None], dtype=torch.float32))
    ref = equalize_adapthist((img - img.min()) / (img.max() - img.min()), kernel_size=8, clip_limit=0.02)
    np.testing.assert_allclose(ours[0].numpy(), ref, atol=1e-5)


def test_unknown_preset_option():
    with pytest.raises(MedtlError, match="unknown option"):
        preset("cxr", False, volume_shape=(1, 2, 3))


def test_unlabelled_rows_get_minus_one(root):
    m = _manifest(["img/0.png", "img/1.png"])
    m.rows[1] = ManifestRow("img/1.png", "unlabelled", "1", "d", "train", "mri2d")
    ds = build_dataset(m, root)
    assert [int(ds[i]["label"]) for i in range(2)] == [0, -1]


def test_cache_filled_by_worker_processes_equals_one_process(root, tmp_path):
    """The memory cache filled by two forked workers holds what one process computes, in order, and a
    bad file still becomes its error entry (skip mode lists it)."""
    paths = [f"img/{i % 4}.png" for i in range(70)] + ["img/broken.png"] + [f"img/{i % 4}.png" for i in range(3)]
    m = _manifest(paths)
    one = build_dataset(m, root, on_error="skip", run_dir=tmp_path / "one", num_workers=1, image_size=32)
    two = build_dataset(m, root, on_error="skip", run_dir=tmp_path / "two", num_workers=2, image_size=32)
    assert len(one) == len(two) == len(paths) - 1
    for a, b in zip((one[i] for i in range(len(one))), (two[i] for i in range(len(two)))):
        assert torch.equal(a["image"], b["image"]) and a["image"].dtype == b["image"].dtype == torch.float32
        assert a["label"].dtype == b["label"].dtype == torch.long and int(a["label"]) == int(b["label"])
        assert (a["case_id"], a["patient_id"], a["domain"]) == (b["case_id"], b["patient_id"], b["domain"])
    for run in ("one", "two"):
        assert "img/broken.png" in (tmp_path / run / "skipped.csv").read_text()


def test_cache_workers_follow_the_request_the_environment_and_the_ranks(monkeypatch):
    from medtl.data.datasets import cache_workers
    from medtl.runtime import usable_cpus

    monkeypatch.delenv("MEDTL_CACHE_WORKERS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cache_workers(3) == 3 and cache_workers() == usable_cpus()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * usable_cpus()))  # more ranks than CPUs: one each
    assert cache_workers() == 1
    monkeypatch.setenv("MEDTL_CACHE_WORKERS", "1")
    assert cache_workers() == 1 and cache_workers(2) == 2


def test_a_table_instead_of_a_manifest_is_refused_by_name(tmp_path):
    import pandas as pd

    from medtl.data.datasets import build_dataset
    from medtl.errors import MedtlError

    with pytest.raises(MedtlError, match="needs a Manifest .* got DataFrame"):
        build_dataset(pd.DataFrame({"path": ["a.png"], "label": ["x"]}), tmp_path, "cxr")


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_a_wrong_data_root_shows_in_the_error(tmp_path, cache):
    """The error named the manifest's relative path only, so a notebook user could not see that the root was
    wrong (notebook review); it names the full path now."""
    m = Manifest([ManifestRow("site/a.png", "x", "p", "d", "train", "cxr")], ["x"])
    with pytest.raises(MedtlError, match=f"{tmp_path / 'nope' / 'site' / 'a.png'}: file not found"):
        build_dataset(m, tmp_path / "nope", image_size=32, cache=cache)[0]


def test_a_dataset_carries_what_predict_needs_and_a_missing_label_column_is_named(root):
    ds = build_dataset(_manifest([f"img/{i}.png" for i in range(4)]), root, image_size=32)
    from medtl.data.transforms import Preset

    assert ds.deployment == {"label_names": ["a", "b"],
                             "intensity": {"preset": "mri2d", **Preset("mri2d").resolved({"image_size": 32})}}
    m = _manifest(["img/0.png"])
    m.rows[0] = ManifestRow("img/0.png", "a", "0", "d", "train", "mri2d", extras={"age": "41"})
    assert build_dataset(m, root, label_column="age", task="regression").deployment["task_name"] == "age"
    with pytest.raises(MedtlError, match=r"no column 'diagnosis'; its columns are \['path', 'label', 'patient_id', "
                                         r"'domain', 'split', 'modality', 'age'\]"):
        build_dataset(m, root, label_column="diagnosis")
