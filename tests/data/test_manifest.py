import csv
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from medtl.cli import main
from medtl.data.build import assign_splits, build_manifest
from medtl.data.check import check_manifest
from medtl.data.manifest import REQUIRED_COLUMNS, Manifest, ManifestRow
from medtl.errors import MedtlError
from medtl.paths import resolve_inside


def _image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)


@pytest.fixture
def folder_root(tmp_path):
    """<root>/site/<label>/<file>: 12 distinct images per class, plus one near-copy pair."""
    root = tmp_path / "root"
    for label, offset in (("neg", 0), ("pos", 100)):
        for i in range(12):
            _image(root / "site" / label / f"img{i:02d}.png", offset + i)
    # a near-copy of pos/img00: the same pixels, brightened slightly and saved as JPEG
    arr = np.asarray(Image.open(root / "site/pos/img00.png")).astype(int)
    Image.fromarray(np.clip(arr + 3, 0, 255).astype(np.uint8)).save(root / "site/pos/copy.jpg", quality=98)
    return root


def _write_csv(path, rows, columns=REQUIRED_COLUMNS):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def test_roundtrip_keeps_extra_columns(tmp_path):
    rows = [ManifestRow("a.png", "x", "p1", "d", "train", "cxr", {"age": "41", "site": "s"})]
    m = Manifest(rows, ["x", "y"], {"seed": 3})
    m.save(tmp_path / "m.csv")
    back = Manifest.load(tmp_path / "m.csv")
    assert back.rows == rows and back.rows[0].extras == {"age": "41", "site": "s"}
    assert back.label_names == ["x", "y"] and back.meta["seed"] == 3


def test_missing_column_is_named(tmp_path):
    path = _write_csv(tmp_path / "m.csv", [{"path": "a", "label": "x"}], ["path", "label"])
    with pytest.raises(MedtlError, match="patient_id") as err:
        Manifest.load(path)
    assert "m.csv" in str(err.value)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.png", "a/../../b.png", "C:/x.png"])
def test_paths_escaping_the_root_are_refused(tmp_path, bad):
    with pytest.raises(MedtlError, match="data root"):
        resolve_inside(tmp_path, bad)


def test_symlink_out_of_root_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(MedtlError, match="outside"):
        resolve_inside(root, "link.png")


def test_build_from_folder_splits_by_group_and_says_ids_are_per_image(folder_root, tmp_path):
    m = build_manifest(folder_root / "site", folder_root, seed=1)
    assert len(m) == 25 and m.label_names == ["neg", "pos"]
    assert all(r.extras["patient_id_kind"] == "per_image" and r.patient_id == r.path for r in m)
    assert m.meta["patient_ids"].startswith("per image") and m.meta["near_copy_groups"] == 1
    split = {r.path: r.split for r in m}
    assert split["site/pos/img00.png"] == split["site/pos/copy.jpg"]
    counts = m.class_counts()
    for label in ("neg", "pos"):
        assert counts["train"][label] >= 7 and counts["val"][label] >= 1 and counts["test"][label] >= 1
    report = check_manifest(m, folder_root)
    assert report.ok, report.render()
    assert "train" in report.table() and report.near_copy_groups_across_splits == 0


def test_build_names_near_copy_groups_and_check_catches_a_group_split_by_hand(folder_root):
    m = build_manifest(folder_root / "site", folder_root, seed=1)
    named = {r.path: r.extras["near_copy_group"] for r in m}
    assert named["site/pos/img00.png"] == named["site/pos/copy.jpg"] == "g1"
    assert sum(bool(g) for g in named.values()) == 2  # every other image has no copy
    by_split = m.meta["near_copy_groups_by_split"]
    home = {r.path: r.split for r in m}["site/pos/copy.jpg"]
    assert by_split[home] == {"groups": 1, "images": 2}
    assert sum(v["groups"] for v in by_split.values()) == 1
    other = "train" if home != "train" else "test"
    edited = Manifest([replace(r, split=other) if r.path == "site/pos/copy.jpg" else r for r in m], m.label_names)
    report = check_manifest(edited, folder_root)
    assert any("recorded near-copy group(s) split across splits: 1: g1" in e for e in report.errors)


def test_without_grouping_the_near_copy_is_reported(folder_root):
    m = build_manifest(folder_root / "site", folder_root, seed=1, group_near_copies=False)
    rows = [r if r.path != "site/pos/copy.jpg" else ManifestRow(r.path, r.label, r.patient_id, r.domain,
            "test" if dict((x.path, x.split) for x in m)["site/pos/img00.png"] != "test" else "train", r.modality,
            r.extras) for r in m]
    report = check_manifest(Manifest(rows, m.label_names), folder_root)
    assert report.near_copy_groups_across_splits == 1
    assert any("near-copy" in w for w in report.warnings)


def test_split_is_patient_level_and_stratified():
    rng = np.random.default_rng(0)
    rows = []
    for p in range(200):
        label = "pos" if p % 3 == 0 else "neg"
        for k in range(rng.integers(1, 4)):
            rows.append(ManifestRow(f"{p}_{k}.png", label, f"P{p}", "d", "", "cxr"))
    splits = assign_splits(rows, seed=5)
    by_patient = defaultdict(set)
    for r, s in zip(rows, splits):
        by_patient[r.patient_id].add(s)
    assert all(len(s) == 1 for s in by_patient.values())
    for label in ("pos", "neg"):
        n = [sum(1 for r, s in zip(rows, splits) if r.label == label and s == name) for name in ("train", "val", "test")]
        total = sum(n)
        assert abs(n[0] / total - 0.7) < 0.06 and abs(n[1] / total - 0.15) < 0.06
    assert assign_splits(rows, seed=5) == splits and assign_splits(rows, seed=6) != splits


def test_leakage_is_refused_naming_the_patients(folder_root, tmp_path):
    rows = [
        {"path": "site/neg/img00.png", "label": "neg", "patient_id": "P7", "domain": "d", "split": "train", "modality": "cxr"},
        {"path": "site/neg/img01.png", "label": "neg", "patient_id": "P7", "domain": "d", "split": "test", "modality": "cxr"},
        {"path": "site/pos/img01.png", "label": "pos", "patient_id": "P8", "domain": "d", "split": "test", "modality": "cxr"},
    ]
    path = _write_csv(tmp_path / "leaky.csv", rows)
    report = check_manifest(Manifest.load(path), folder_root)
    assert not report.ok
    assert any("leakage" in e and "P7" in e and "P8" not in e for e in report.errors)
    assert main(["manifest", "check", str(path), "--data-root", str(folder_root)]) == 1


def test_check_flags_unknown_label_missing_file_escape_and_identical_files(folder_root, tmp_path):
    rows = [
        {"path": "site/neg/img00.png", "label": "neg", "patient_id": "A", "domain": "d", "split": "train", "modality": "cxr"},
        {"path": "site/neg/img00.png", "label": "neg", "patient_id": "B", "domain": "d", "split": "test", "modality": "cxr"},
        {"path": "site/neg/gone.png", "label": "neg", "patient_id": "C", "domain": "d", "split": "train", "modality": "cxr"},
        {"path": "../escape.png", "label": "neg", "patient_id": "D", "domain": "d", "split": "train", "modality": "cxr"},
        {"path": "site/pos/img00.png", "label": "maybe", "patient_id": "E", "domain": "d", "split": "val", "modality": "cxr"},
    ]
    path = _write_csv(tmp_path / "bad.csv", rows)
    report = check_manifest(Manifest.load(path), folder_root, labels=["neg", "pos"])
    text = "\n".join(report.errors)
    assert "'maybe'" in text and "line 6" in text
    assert "gone.png (file not found)" in text
    assert "../escape.png" in text and "data root" in text
    assert "identical file" in text


def test_exclude_near_copies_of_another_manifest(folder_root, tmp_path):
    target = build_manifest(folder_root / "site", folder_root, seed=0)
    target = Manifest([r for r in target if r.path == "site/pos/copy.jpg"], target.label_names)
    target.save(tmp_path / "target.csv")
    source = build_manifest(folder_root / "site", folder_root, seed=0, exclude_copies_of=tmp_path / "target.csv")
    paths = {r.path for r in source}
    assert "site/pos/img00.png" not in paths and "site/pos/copy.jpg" not in paths
    assert len(source) == 23 and source.meta["excluded_rows"] == 2


def test_cli_build_and_check(folder_root, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["manifest", "build", "--from", str(folder_root / "site"), "--data-root", str(folder_root),
                 "--out", str(out), "--seed", "2"]) == 0
    assert main(["manifest", "check", str(out), "--data-root", str(folder_root)]) == 0
    printed = capsys.readouterr().out
    assert "OK" in printed and "label" in printed and "total" in printed
    # --out as a folder, as for every other command: DIR/manifest.csv beside its meta
    assert main(["manifest", "build", "--from", str(folder_root / "site"), "--data-root", str(folder_root),
                 "--out", str(tmp_path / "built"), "--seed", "2"]) == 0
    assert (tmp_path / "built" / "manifest.csv").read_text() == out.read_text()
    assert (tmp_path / "built" / "manifest.meta.json").exists()


def test_default_data_root_env_then_beside_cwd_then_beside_checkout(tmp_path, monkeypatch):
    from pathlib import Path

    import medtl.paths as paths

    monkeypatch.setenv(paths.DATA_ROOT_ENV, str(tmp_path / "mine"))
    assert paths.default_data_root() == tmp_path / "mine"
    monkeypatch.delenv(paths.DATA_ROOT_ENV)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # ../shared/data exists here: it wins
    assert paths.default_data_root().resolve() == (tmp_path / "shared" / "data").resolve()
    (tmp_path / "work" / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "work" / "notebooks")  # no ../shared/data from a notebook folder
    checkout = Path(paths.__file__).resolve().parents[2] / "shared" / "data"
    expected = checkout if checkout.is_dir() else Path("../shared/data")
    assert paths.default_data_root() == expected
