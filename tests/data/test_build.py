"""medtl.data.build: manifests from folders and raw manifests, patient-level stratified splits, near copies."""

import shutil
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest

from medtl.data.build import _unite_groups, assign_splits, build_manifest, guess_modality
from medtl.data.check import check_manifest
from medtl.data.manifest import Manifest, ManifestRow
from medtl.errors import MedtlError


def test_guess_modality_from_the_domain_then_the_file_kind():
    assert guess_modality("a/b.png", "cxr_nih") == "cxr"  # the domain's prefix wins
    assert guess_modality("a/b.png", "mri3d_ixi") == "mri3d"
    assert guess_modality("a/b.nii.gz", "site") == "mri3d"
    assert guess_modality("a/b.jpg", "site") == "mri2d"
    assert guess_modality("a/b.dcm", "site") == "dicom"  # decided later from the DICOM header


def test_bad_fractions_and_sources_are_refused(folder_root, tmp_path):
    rows = [ManifestRow("a.png", "x", "p", "d", "", "cxr")]
    for fractions in [(0.5, 0.5), (0.8, 0.3, -0.1), (0.6, 0.2, 0.1)]:
        with pytest.raises(MedtlError, match="fractions"):
            assign_splits(rows, 0, fractions)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(MedtlError, match="raw manifest"):
        build_manifest(tmp_path / "notes.txt", tmp_path)
    with pytest.raises(MedtlError, match="not a folder"):
        build_manifest(folder_root / "site", tmp_path / "nowhere")
    # a raw manifest beside, not inside, the data root: the message names both folders and what to give
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "own.csv").write_text("path,label\na.png,x\n")
    with pytest.raises(MedtlError, match=r"the folder of own.csv \(its paths are relative to it\), "
                                         rf"{tmp_path / 'raw'} lies outside the data root {folder_root.resolve()}"):
        build_manifest(tmp_path / "raw" / "own.csv", folder_root)


def test_a_kept_source_split_moves_each_near_copy_group_to_its_earliest_split():
    splits = ["test", "train", "val", "val", "test"]
    groups = np.array([1, 1, 2, 2, 3])
    assert _unite_groups(splits, groups) == (["train", "train", "val", "val", "test"], 1)


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


def test_exclude_near_copies_of_another_manifest(folder_root, tmp_path):
    target = build_manifest(folder_root / "site", folder_root, seed=0)
    target = Manifest([r for r in target if r.path == "site/pos/copy.jpg"], target.label_names)
    target.save(tmp_path / "target.csv")
    source = build_manifest(folder_root / "site", folder_root, seed=0, exclude_copies_of=tmp_path / "target.csv")
    paths = {r.path for r in source}
    assert "site/pos/img00.png" not in paths and "site/pos/copy.jpg" not in paths
    assert len(source) == 23 and source.meta["excluded_rows"] == 2


def test_exclude_near_copies_of_a_manifest_under_another_root(folder_root, tmp_path):
    """A review: `--exclude-near-copies-of model/manifest.csv` read the other manifest's paths under the held-out
    folder's root, found none of its files and dropped nothing without a word, byte-identical copies included."""
    from tests.data.conftest import _image

    site = folder_root / "site"
    trained = build_manifest(site, site, seed=0)  # as medtl train builds a folder's manifest: the folder is the root
    (tmp_path / "model").mkdir()
    trained.save(tmp_path / "model" / "manifest.csv", data_root=site)
    held = tmp_path / "heldout"
    for label, copied in (("neg", "img04.png"), ("pos", "img07.png")):
        (held / label).mkdir(parents=True)
        shutil.copy(site / label / copied, held / label / f"again_{copied}")
        _image(held / label / "unseen.png", 1000 + len(label))
    m = build_manifest(held, held, fractions=(0.0, 0.0, 1.0), exclude_copies_of=tmp_path / "model" / "manifest.csv")
    assert m.meta["excluded_rows"] == 2 and {r.path for r in m} == {"neg/unseen.png", "pos/unseen.png"}

    shutil.rmtree(site / "neg")  # the other manifest's images cannot be read: refused, not passed
    with pytest.raises(MedtlError, match=r"12 of the 25 images to compare with cannot be read .*copies of them cannot "
                                         r"be found"):
        build_manifest(held, held, fractions=(0.0, 0.0, 1.0), exclude_copies_of=tmp_path / "model" / "manifest.csv")


def test_a_missing_source_is_a_clear_error(tmp_path):
    """A review: a mistyped raw manifest path ended in a FileNotFoundError traceback."""
    with pytest.raises(MedtlError, match="not found") as err:
        build_manifest(tmp_path / "mri2d_yesn" / "manifest.csv", tmp_path)
    assert err.value.where == str(tmp_path / "mri2d_yesn" / "manifest.csv")


def test_a_folder_ignores_stray_files_but_not_broken_dicom_and_refuses_an_empty_class(folder_root, caplog):
    """notes.txt or Thumbs.db beside the images are not inputs (as in batch inference), a broken .dcm is (its
    error names it later), and a class folder without images is an error, not a class silently lost."""
    site = folder_root / "site"
    (site / "neg" / "notes.txt").write_text("scanned on the old machine")
    (site / "pos" / "Thumbs.db").write_bytes(b"\0" * 300)
    (site / ".hidden").mkdir()
    (site / "pos" / ".ipynb_checkpoints").mkdir()
    shutil.copy(site / "pos" / "img01.png", site / "pos" / ".ipynb_checkpoints" / "img01-checkpoint.png")
    with caplog.at_level("WARNING", logger="medtl.data.build"):
        m = build_manifest(site, folder_root, seed=1, group_near_copies=False)
    assert len(m) == 25 and not any(r.path.endswith((".txt", ".db")) for r in m)
    assert "ignored 2 file(s) that are neither images nor DICOM: neg/notes.txt, pos/Thumbs.db" in caplog.text
    (site / "pos" / "broken.dcm").write_bytes(b"not dicom")
    with pytest.raises(MedtlError, match="broken.dcm: unreadable DICOM header"):
        build_manifest(site, folder_root, group_near_copies=False)
    (site / "pos" / "broken.dcm").unlink()
    (site / "effusion").mkdir()
    (site / "effusion" / "readme.txt").write_text("to do")
    with pytest.raises(MedtlError, match=r"class folder\(s\) with no image files: effusion/") as err:
        build_manifest(site, folder_root, seed=1, group_near_copies=False)
    assert err.value.where == str(site) or str(site) in str(err.value)


def test_a_threshold_that_joins_most_images_into_one_group_is_refused(tmp_path):
    """Generated images correlate above 0.97 with each other: grouping them put all 16 in train, silently."""
    from medtl.data.synthetic import write_synthetic_source

    src = write_synthetic_source(tmp_path / "data", "cxr", 16, seed=0, size=32)
    with pytest.raises(MedtlError, match=r"16 of 16 images form one group of near-copies \(correlation above 0.97\)"):
        build_manifest(src, tmp_path / "data", progress=False)
    m = build_manifest(src, tmp_path / "data", group_near_copies=False, progress=False)
    assert {r.split for r in m} == {"train", "val", "test"}


def test_files_beside_the_class_folders_are_named_in_a_warning(folder_root, caplog):
    (folder_root / "site" / "notes.txt").write_text("scanner settings")
    (folder_root / "site" / "stray.png").write_bytes((folder_root / "site" / "neg" / "img00.png").read_bytes())
    with caplog.at_level("WARNING"):
        m = build_manifest(folder_root / "site", folder_root, seed=1, group_near_copies=False, progress=False)
    assert "ignored 2 file(s) beside the class folders" in caplog.text and "notes.txt, stray.png" in caplog.text
    assert not any(r.path.endswith("stray.png") for r in m)


def test_unreadable_files_are_refused_by_name_or_left_out_on_request(folder_root):
    """A held-out folder that medtl predict read past (error rows) must still become a labels manifest:
    --skip-unreadable leaves the bad files out, each named with its reason; without it the build refuses."""
    site = folder_root / "site"
    data = (site / "pos" / "img01.png").read_bytes()
    (site / "pos" / "cut.png").write_bytes(data[: len(data) // 2])
    (site / "neg" / "broken.dcm").write_bytes(b"not dicom")
    for group in (True, False):
        with pytest.raises(MedtlError, match="broken.dcm: unreadable DICOM header"):
            build_manifest(site, folder_root, group_near_copies=group)
    (site / "neg" / "broken.dcm").unlink()
    with pytest.raises(MedtlError, match=r"1 file\(s\) cannot be read: site/pos/cut.png \(.*\)\. Remove or repair "
                                         r"them, or leave them out: `medtl manifest build --skip-unreadable`"):
        build_manifest(site, folder_root)
    (site / "neg" / "broken.dcm").write_bytes(b"not dicom")
    for group in (True, False):
        m = build_manifest(site, folder_root, fractions=(0, 0, 1), group_near_copies=group, skip_unreadable=True)
        assert len(m) == 25 and {r.split for r in m} == {"test"}
        assert [f["path"] for f in m.meta["left_out"]] == ["site/neg/broken.dcm", "site/pos/cut.png"]
        assert "unreadable DICOM header" in m.meta["left_out"][0]["reason"]
        assert check_manifest(m, folder_root).ok  # what is left is a valid manifest


def test_skip_unreadable_still_refuses_a_missing_file(folder_root):
    """A missing file is a wrong path or data root, not a damaged file: --skip-unreadable dropped it too."""
    raw = folder_root / "raw.csv"
    rows = [f"site/{c}/img{i:02d}.png,{c}" for c in ("neg", "pos") for i in range(6)] + ["site/pos/missing.png,pos"]
    raw.write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(MedtlError, match=r"site/pos/missing.png \(file not found\)") as err:
        build_manifest(raw, folder_root, skip_unreadable=True, group_near_copies=False)
    # the refusal does not advise the flag that was given
    assert "--skip-unreadable does not leave out" in str(err.value) and "leave them out:" not in str(err.value)


def test_skip_unreadable_tells_missing_from_damaged_by_the_check_not_by_the_name(folder_root):
    """A damaged file whose name reads like the missing-file reason is still damaged: left out, not refused."""
    site = folder_root / "site"
    (site / "pos" / "file not found.png").write_bytes(b"not a png")
    m = build_manifest(site, folder_root, fractions=(0, 0, 1), group_near_copies=False, skip_unreadable=True)
    assert [f["path"] for f in m.meta["left_out"]] == ["site/pos/file not found.png"]
    (site / "pos" / "outside the data root.png").symlink_to(folder_root.parent / "elsewhere.png")
    (folder_root.parent / "elsewhere.png").write_bytes((site / "pos" / "img01.png").read_bytes())
    with pytest.raises(MedtlError, match=r"outside the data root.png \(path .* resolves outside the data root"):
        build_manifest(site, folder_root, group_near_copies=False, skip_unreadable=True)


def test_the_demo_data_passes_its_check_without_a_warning_it_cannot_act_on(tmp_path, capsys):
    """The Quickstart's first run warned that 120 generated images form a near-copy group spanning splits and
    told the newcomer to rebuild: generated images are alike by design, so only identical files are checked."""
    from medtl.demo import make_demo_data

    manifests = make_demo_data(tmp_path)
    printed = capsys.readouterr().out
    assert set(manifests) == {"cxr_synthetic", "mri2d_synthetic"} and printed.count("\nOK") == 2
    assert "WARNING" not in printed and "rebuild" not in printed
    assert printed.count("near-copies not checked (correlation 1); identical files across splits: 0") == 2


def test_manifest_build_writes_nothing_when_its_own_check_fails(folder_root, capsys):
    """A link out of the data root (not scanned without near-copy grouping) failed the check after the CSV and its
    meta were written: the next command found a manifest that `manifest check` refuses."""
    from medtl.cli import main

    outside = folder_root.parent / "outside.png"
    outside.write_bytes((folder_root / "site" / "pos" / "img01.png").read_bytes())
    (folder_root / "site" / "pos" / "link.png").symlink_to(outside)
    out = folder_root.parent / "built.csv"
    code = main(["manifest", "build", "--from", str(folder_root / "site"), "--data-root", str(folder_root),
                 "--out", str(out), "--no-group-near-copies"])
    printed = capsys.readouterr().out
    assert code == 1 and "FAILED" in printed and f"not written: {out}" in printed
    assert not out.exists() and not out.with_suffix(".meta.json").exists()
    (folder_root / "site" / "pos" / "link.png").unlink()
    assert main(["manifest", "build", "--from", str(folder_root / "site"), "--data-root", str(folder_root),
                 "--out", str(out), "--no-group-near-copies"]) == 0 and out.exists()
    # the modality (which decides the preset every later command applies) is said, and how it was guessed: a review's
    # chest X-rays in a folder not named cxr* became mri2d without a word
    printed = capsys.readouterr().out
    n = sum(1 for _ in open(out)) - 1
    assert f"modality: mri2d ({n} rows), guessed from the domain name" in printed and "--modality cxr" in printed
    assert main(["manifest", "build", "--from", str(folder_root / "site"), "--data-root", str(folder_root),
                 "--out", str(out), "--no-group-near-copies", "--modality", "cxr"]) == 0
    assert f"modality: cxr ({n} rows)\n" in capsys.readouterr().out
