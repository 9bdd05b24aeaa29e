"""medtl.data.check: a manifest against its files (labels, splits, leakage, copies, a wrong data root)."""

from dataclasses import replace

import pytest

from medtl.cli import main
from medtl.data.build import build_manifest
from medtl.data.check import CheckReport, check_manifest, wrong_root_hint
from medtl.data.manifest import Manifest, ManifestRow


def test_wrong_root_hint_only_when_most_files_are_missing():
    assert wrong_root_hint(0, 0, "/data") is None
    assert wrong_root_hint(5, 10, "/data") is None  # half missing: those files are missing, not the root wrong
    hint = wrong_root_hint(6, 10, "/data")
    assert hint.startswith("6 of 10 files are missing under the data root /data") and "--data-root" in hint


def test_a_data_root_that_is_not_a_folder_is_the_one_error(tmp_path):
    m = Manifest([ManifestRow("a.png", "x", "p", "d", "train", "cxr")], ["x"])
    report = check_manifest(m, tmp_path / "nowhere")
    assert report.errors == [f"data root {tmp_path / 'nowhere'} is not a folder"] and not report.ok


def test_bad_splits_and_modalities_are_listed_by_line(folder_root):
    rows = [ManifestRow("site/neg/img00.png", "neg", "A", "d", "training", "cxr"),
            ManifestRow("site/neg/img01.png", "neg", "B", "d", "train", "xray")]
    report = check_manifest(Manifest(rows, ["neg"]), folder_root)
    assert "splits other than ['train', 'val', 'test']: line 2 ('training')" in report.errors
    assert any(e.startswith("modalities other than") and "line 3 ('xray')" in e for e in report.errors)


def test_the_report_renders_counts_and_its_verdict():
    report = CheckReport(None, counts={"train": {"neg": 3, "pos": 1}, "val": {"neg": 1}, "test": {}})
    assert report.table().splitlines() == ["label  train    val  total", "neg        3      1      4",
                                           "pos        1      0      1", "total      4      1      5"]
    assert report.render().endswith("OK")
    report.errors.append("bad")
    assert report.render().endswith("ERROR bad\nFAILED with 1 error(s)")


def test_without_grouping_the_near_copy_is_reported(folder_root):
    m = build_manifest(folder_root / "site", folder_root, seed=1, group_near_copies=False)
    rows = [r if r.path != "site/pos/copy.jpg" else ManifestRow(r.path, r.label, r.patient_id, r.domain,
            "test" if dict((x.path, x.split) for x in m)["site/pos/img00.png"] != "test" else "train", r.modality,
            r.extras) for r in m]
    report = check_manifest(Manifest(rows, m.label_names), folder_root)
    assert report.near_copy_groups_across_splits == 1
    assert any("near-copy" in w for w in report.warnings)


def test_leakage_is_refused_naming_the_patients(folder_root, tmp_path, write_csv):
    rows = [
        {"path": "site/neg/img00.png", "label": "neg", "patient_id": "P7", "domain": "d", "split": "train", "modality": "cxr"},
        {"path": "site/neg/img01.png", "label": "neg", "patient_id": "P7", "domain": "d", "split": "test", "modality": "cxr"},
        {"path": "site/pos/img01.png", "label": "pos", "patient_id": "P8", "domain": "d", "split": "test", "modality": "cxr"},
    ]
    path = write_csv(tmp_path / "leaky.csv", rows)
    report = check_manifest(Manifest.load(path), folder_root)
    assert not report.ok
    assert any("leakage" in e and "P7" in e and "P8" not in e for e in report.errors)
    assert main(["manifest", "check", str(path), "--data-root", str(folder_root)]) == 1


def test_check_flags_unknown_label_missing_file_escape_and_identical_files(folder_root, tmp_path, write_csv):
    rows = [
        {"path": "site/neg/img00.png", "label": "neg", "patient_id": "A", "domain": "d", "split": "train", "modality": "cxr"},
        {"path": "site/neg/img00.png", "label": "neg", "patient_id": "B", "domain": "d", "split": "test", "modality": "cxr"},
        {"path": "site/neg/gone.png", "label": "neg", "patient_id": "C", "domain": "d", "split": "train", "modality": "cxr"},
        {"path": "../escape.png", "label": "neg", "patient_id": "D", "domain": "d", "split": "train", "modality": "cxr"},
        {"path": "site/pos/img00.png", "label": "maybe", "patient_id": "E", "domain": "d", "split": "val", "modality": "cxr"},
    ]
    path = write_csv(tmp_path / "bad.csv", rows)
    report = check_manifest(Manifest.load(path), folder_root, labels=["neg", "pos"])
    text = "\n".join(report.errors)
    assert "'maybe'" in text and "line 6" in text
    assert "gone.png (file not found)" in text
    assert "../escape.png" in text and "data root" in text
    assert "identical file" in text


def test_repeated_paths_empty_manifests_and_stray_modalities(folder_root):
    rows = [ManifestRow("site/neg/img00.png", "neg", "A", "d", "train", "cxr"),
            ManifestRow("site/neg/img01.png", "neg", "B", "d", "train", "cxr"),
            ManifestRow("site/neg/img00.png", "neg", "A", "d", "train", "cxr"),
            ManifestRow("site/pos/img00.png", "pos", "C", "d", "test", "mri2d")]
    report = check_manifest(Manifest(rows, ["neg", "pos"]), folder_root)
    assert any("1 repeated path(s)" in e and "line 4 repeats line 2 (site/neg/img00.png)" in e for e in report.errors)
    # a stray modality is a warning (a predict manifest may mix them), naming the line
    assert any("mixed modalities" in w and "line 5 ('mri2d')" in w for w in report.warnings)
    empty = check_manifest(Manifest([], ["neg"]), folder_root)
    assert "the manifest has no rows" in empty.errors


def test_identical_files_across_splits_are_named(folder_root):
    rows = [ManifestRow("site/neg/img00.png", "neg", "A", "d", "train", "cxr"),
            ManifestRow("site/neg/img00.png", "neg", "B", "d", "test", "cxr")]
    report = check_manifest(Manifest(rows, ["neg"]), folder_root)
    assert any("site/neg/img00.png (train) = site/neg/img00.png (test)" in e for e in report.errors)


def test_a_spreadsheets_csv_with_a_byte_order_mark_loads_and_latin1_is_named(folder_root, tmp_path, write_csv, capsys):
    rows = [{"path": "site/neg/img00.png", "label": "neg", "patient_id": "A", "domain": "d", "split": "train",
             "modality": "cxr"}]
    plain = write_csv(tmp_path / "plain.csv", rows)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())  # Excel's "CSV UTF-8"
    assert [r.path for r in Manifest.load(bom)] == ["site/neg/img00.png"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes(plain.read_bytes().replace(b",d,", b",caf\xe9,"))
    assert main(["manifest", "check", str(latin), "--data-root", str(folder_root)]) == 2
    assert f"{latin}:2: not UTF-8 text" in capsys.readouterr().err


def test_check_judges_near_copies_at_the_threshold_the_manifest_was_built_with(folder_root):
    m = build_manifest(folder_root / "site", folder_root, seed=1, near_copy_correlation=0.999)
    assert m.meta["near_copy_correlation"] == 0.999
    assert check_manifest(m, folder_root).near_copy_correlation == 0.999
    assert check_manifest(m, folder_root, near_copy_correlation=0.9).near_copy_correlation == 0.9


def test_check_without_data_root_reads_the_root_the_manifest_records(folder_root, tmp_path, monkeypatch, capsys):
    path = build_manifest(folder_root / "site", folder_root, seed=1).save(tmp_path / "m.csv", folder_root)
    monkeypatch.setenv("MEDTL_DATA_ROOT", str(tmp_path / "elsewhere"))  # the default would miss every file
    assert main(["manifest", "check", str(path), "--no-progress"]) == 0
    assert f"data root: {folder_root.resolve()}" in capsys.readouterr().out


@pytest.mark.real_data
def test_check_refuses_a_3d_row_the_3d_loader_would_refuse(data_root):
    """emri_small is a multi-frame MR whose frames nothing places: read as frames (mri2d) it passes, as a
    volume (mri3d) a 3D model would refuse it, so check does too."""
    row = ManifestRow("dicom/emri_small_multiframe_mr.dcm", "x", "p", "dicom", "test", "mri2d")
    assert check_manifest(Manifest([row], ["x"]), data_root, near_copy_correlation=0.99).ok
    volume_row = ManifestRow(row.path, "x", "p", "dicom", "test", "mri3d")
    as_volume = check_manifest(Manifest([volume_row], ["x"]), data_root)
    assert any("guessed orientation" in e for e in as_volume.errors)


def test_check_writes_the_rows_of_groups_that_span_splits(folder_root, tmp_path, capsys):
    m = build_manifest(folder_root / "site", folder_root, seed=1, group_near_copies=False)
    split_of = {x.path: x.split for x in m}
    other = "test" if split_of["site/pos/img00.png"] != "test" else "train"
    rows = [r if r.path != "site/pos/copy.jpg" else ManifestRow(r.path, r.label, r.patient_id, r.domain, other,
                                                                 r.modality, r.extras) for r in m]
    path = Manifest(rows, m.label_names).save(tmp_path / "m.csv", folder_root)
    listed = tmp_path / "spanning.csv"
    assert main(["manifest", "check", str(path), "--spanning-csv", str(listed), "--no-progress"]) == 0
    import csv

    with open(listed, newline="") as f:
        got = list(csv.DictReader(f))
    assert {r["path"] for r in got} == {"site/pos/img00.png", "site/pos/copy.jpg"} and {r["group"] for r in got} == {"1"}
    assert "wrote" in capsys.readouterr().out


def test_labels_that_look_like_typos_are_warned_about(folder_root):
    """One row labelled 'f' beside 'F' made a third class that training learned from one image, and check said OK."""
    from medtl.data.check import label_warnings

    rows = [ManifestRow(f"site/neg/img0{i}.png", "F", f"p{i}", "d", "train", "cxr") for i in range(3)]
    rows += [ManifestRow("site/pos/img00.png", "M", "q", "d", "train", "cxr"),
             ManifestRow("site/pos/img01.png", "M ", "r", "d", "train", "cxr"),
             ManifestRow("site/pos/img02.png", "f", "s", "d", "test", "cxr")]
    m = Manifest(rows, ["F", "M", "M ", "f"])
    warnings = label_warnings(m)
    assert "labels 'F' and 'f' differ only in case or spaces (3 rows, 1 row): each is a class of its own; a typo?" \
        in warnings
    assert any(w.startswith("labels 'M' and 'M '") for w in warnings)
    assert "class(es) with a single image: 'M', 'M ', 'f'" in warnings[-1]
    assert check_manifest(m, folder_root).warnings[:3] == warnings
    two = Manifest([r for r in rows if r.label in ("F",)] + [ManifestRow("site/pos/img00.png", "G", "q", "d",
                                                                         "test", "cxr")] * 2, ["F", "G"])
    assert label_warnings(two) == []
    ages = Manifest([ManifestRow(f"site/neg/img0{i}.png", str(40 + i), f"p{i}", "d", "train", "cxr") for i in range(3)],
                    ["40", "41", "42"])
    assert label_warnings(ages) == []  # regression targets: each value once is expected


def test_a_regression_manifest_with_nan_targets_gets_one_warning_not_typo_warnings():
    """Ages with a few 'nan' (a missing age, spelt as pandas writes it) were warned about as single-image classes,
    one per value; the warning now names the non-finite targets once and says how to mark a missing one."""
    from medtl.data.check import label_warnings

    labels = ["40", "41", "42", "nan", "NaN", "inf"]
    ages = Manifest([ManifestRow(f"site/neg/img{i}.png", x, f"p{i}", "d", "train", "mri3d")
                     for i, x in enumerate(labels + ["nan"])], labels)
    assert label_warnings(ages) == ["4 row(s) hold the target 'NaN' or 'inf' or 'nan', which no model can learn or "
                                    "be scored against: write 'unlabelled' for a missing target"]


@pytest.mark.real_data
def test_one_head_saved_in_other_orientations_is_one_near_copy_group(data_root, tmp_path):
    """The same IXI head saved as LPS and PIR (nibabel as_reoriented: the same world geometry) went to different
    splits ungrouped, since thumbnails were taken in stored voxel order (3D review)."""
    import shutil

    import nibabel as nib

    from medtl.data.check import near_copy_groups, scan

    volumes = sorted((data_root / "mri3d_ixi").rglob("*.nii.gz"))[:3]
    img = nib.load(str(volumes[0]))
    for code in ("LPS", "PIR"):
        turn = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                               nib.orientations.axcodes2ornt(code))
        nib.save(img.as_reoriented(turn), tmp_path / f"o_{code}.nii.gz")
    for i, f in enumerate(volumes):
        shutil.copy(f, tmp_path / f"v{i}.nii.gz")
    names = ["o_LPS.nii.gz", "o_PIR.nii.gz", "v0.nii.gz", "v1.nii.gz", "v2.nii.gz"]
    groups = near_copy_groups(scan([ManifestRow(n, "x", n, "d", "train", "mri3d") for n in names], tmp_path,
                                   progress=False))
    assert groups[0] == groups[1] == groups[2] and len(set(groups)) == 3  # one head, and two other heads


@pytest.mark.real_data
def test_a_slice_padded_to_another_frame_is_one_group_when_compared_cut_to_the_head(data_root, tmp_path):
    """mri2d_yesno's Y30.jpg is Y255.JPG padded to another frame: whole-frame thumbnails correlate 0.8, so a build
    put them in different splits (its committed manifest: train and test). Cut to the head they are one slice."""
    import shutil

    images = data_root / "mri2d_yesno" / "images"
    root = tmp_path / "root"
    picked = {"tumor": ["Y255.JPG", "Y30.jpg", *[f"Y{i}.jpg" for i in (1, 2, 3, 4, 6, 7, 8, 9)]],
              "no_tumor": [f"{i}_no.jpg" for i in (10, 11, 12, 13, 14, 15, 17, 18, 19, 20)]}
    for label, names in picked.items():
        (root / "site" / label).mkdir(parents=True)
        for name in names:
            shutil.copy(images / label / name, root / "site" / label / name)
    pair = {"site/tumor/Y255.JPG", "site/tumor/Y30.jpg"}
    cut = build_manifest(root / "site", root, seed=0)
    assert cut.meta["near_copy_cut_to_head"] is True
    group = {r.extras["near_copy_group"] for r in cut if r.path in pair}
    assert len(group) == 1 and group != {""} and len({r.split for r in cut if r.path in pair}) == 1
    whole = build_manifest(root / "site", root, seed=0, near_copy_cut_to_head=False)
    assert whole.meta["near_copy_cut_to_head"] is False
    assert all(r.extras["near_copy_group"] == "" for r in whole if r.path in pair)
    # put the two in different splits: a check as the manifest was built misses them, one cut to the head names them
    first = next(r.split for r in whole if r.path == "site/tumor/Y255.JPG")
    rows = [replace(r, split="test" if first != "test" else "train") if r.path == "site/tumor/Y30.jpg" else r
            for r in whole]
    moved = Manifest(rows, whole.label_names, dict(whole.meta))
    assert check_manifest(moved, root).near_copy_groups_across_splits == 0
    unrecorded = Manifest(rows, whole.label_names, {**whole.meta, "near_copy_cut_to_head": None})
    assert check_manifest(unrecorded, root).near_copy_groups_across_splits == 1  # no record (null): checked cut
    report = check_manifest(moved, root, cut_to_head=True)
    assert report.near_copy_groups_across_splits == 1 and {r["path"] for r in report.spanning_rows} == pair
    assert "whole frames and cut to the head) spanning splits: 1" in report.render()
