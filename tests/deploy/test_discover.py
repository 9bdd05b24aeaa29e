"""Folder walks, series grouping, selection rules and manifests, on the real DICOM files."""

import shutil

import pytest

from medtl.deploy.discover import SeriesRules, scan_folder, scan_manifest

pytestmark = pytest.mark.real_data


def test_real_folder_groups_instances_by_series(dicom_root):
    series = {s.modality + str(len(s.files)): s for s in scan_folder(dicom_root)}
    # CR: RG1_UNCR and RG1_J2KI share one SeriesInstanceUID; the MPRAGE series has 32 slices.
    assert sorted(series) == ["CR2", "MR1", "MR32"]
    mprage, multiframe, cr = series["MR32"], series["MR1"], series["CR2"]
    assert mprage.n_frames == 32 and multiframe.n_frames == 10
    assert cr.body_part == "CHEST" and mprage.description == "t1_MPRAGEcr_noGRAPPA"
    assert mprage.key == mprage.series_uid and mprage.study_uid
    assert all(s.error is None for s in series.values())
    # Identifying values are kept apart, never in the public fields.
    assert mprage.identifiers["PatientName"] == "Upgrade Test^Rorden"
    assert mprage.source == "" and len(mprage.sop_uids) == 32


def test_rules_select_by_modality_body_part_description_and_slices(dicom_root):
    series = scan_folder(dicom_root)

    def chosen(**kw):
        return sorted(s.modality + str(s.n_frames) for s in SeriesRules(**kw).split(series)[0])

    assert chosen() == ["CR2", "MR10", "MR32"]
    assert chosen(modalities=("cr", "DX")) == ["CR2"]
    assert chosen(body_parts=("HEAD",)) == ["MR10"]
    assert chosen(description="mprage") == ["MR32"]
    assert chosen(modalities=("MR",), min_slices=16) == ["MR32"]
    excluded = SeriesRules(min_slices=16).split(series)[1]
    assert sorted(why for _, why in excluded) == ["10 slice(s), fewer than 16", "2 slice(s), fewer than 16"]


def test_bad_and_foreign_files(tmp_path, mprage_files):
    shutil.copy(mprage_files[0], tmp_path / "good.dcm")
    (tmp_path / "notes.txt").write_text("not an image")  # ignored
    (tmp_path / "fake.dcm").write_text("not DICOM either, but claims to be")
    (tmp_path / "truncated.dcm").write_bytes(mprage_files[1].read_bytes()[:300])  # header cut short
    (tmp_path / ".hidden.dcm").write_text("hidden files are skipped")
    (tmp_path / "empty.dcm").write_bytes(b"")  # an export that never arrived: said so (a review)
    found = {s.source or s.modality: s for s in scan_folder(tmp_path)}
    assert set(found) == {"MR", "fake.dcm", "truncated.dcm", "empty.dcm"}
    assert found["MR"].error is None
    assert "not a DICOM file" in found["fake.dcm"].error and found["empty.dcm"].error == "empty file (0 bytes)"
    assert found["truncated.dcm"].error
    assert found["fake.dcm"].key.startswith("file-")
    # Broken inputs are never filtered away by the rules: they must show up as error rows.
    assert len(SeriesRules(modalities=("CT",)).split(found.values())[0]) == 3


def test_output_folder_inside_the_input_is_not_walked(tmp_path, mprage_files):
    shutil.copy(mprage_files[0], tmp_path / "a.dcm")
    (tmp_path / "out").mkdir()
    shutil.copy(mprage_files[1], tmp_path / "out" / "b.dcm")
    assert sum(len(s.files) for s in scan_folder(tmp_path, skip=tmp_path / "out")) == 1


def test_manifest_rows_are_units(data_root, manifests_dir, tmp_path):
    rows = {s.key: s for s in scan_manifest(manifests_dir / "dicom.csv", data_root)}
    assert sorted(rows) == ["dicom/cr_chest/RG1_J2KI.dcm", "dicom/cr_chest/RG1_UNCR.dcm",
                            "dicom/emri_small_multiframe_mr.dcm", "dicom/mr_series_t1_mprage"]
    assert len(rows["dicom/mr_series_t1_mprage"].files) == 32
    assert rows["dicom/cr_chest/RG1_UNCR.dcm"].extra == {"label": "unlabelled", "split": "train"}
    assert [s.key for s in scan_manifest(manifests_dir / "dicom.csv", data_root, split="test")] == [
        "dicom/emri_small_multiframe_mr.dcm"]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\n../../etc/passwd,x\ndicom/missing.dcm,y\n")
    errors = {s.key: s.error for s in scan_manifest(bad, data_root)}
    assert "contains '..': manifest paths lead down from the data root" in errors["../../etc/passwd"]
    assert errors["dicom/missing.dcm"] == "file not found"


def test_a_readers_warning_names_the_file_not_its_proc_path(tmp_path, caplog):
    """pydicom warned 'End of file reached ... in file /proc/self/fd/4': an operator could not tell which file."""
    import logging
    import warnings

    from medtl.deploy.discover import regular_file

    path = tmp_path / "s250x_garbage.dcm"
    path.write_bytes(b"\0" * 200)
    logging.captureWarnings(True)
    try:
        with caplog.at_level(logging.WARNING), regular_file(path) as readable:
            logging.getLogger("pydicom").warning("End of file reached in file %s", readable)
            warnings.warn(f"Invalid value in file {readable}", UserWarning)
    finally:
        logging.captureWarnings(False)
    said = [r.getMessage() for r in caplog.records]
    assert any("in file s250x_garbage.dcm" in m for m in said) and any("value in file s250x_garbage.dcm" in m
                                                                        for m in said)
    assert not any("/proc/self/fd" in m for m in said)
    logging.getLogger("pydicom").warning("after %s", "/proc/self/fd/4")  # the filter went with the file
    assert caplog.records[-1].getMessage() == "after /proc/self/fd/4"
