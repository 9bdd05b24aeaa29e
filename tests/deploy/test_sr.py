"""The Comprehensive SR: content read back, and every SR checked by dciodvfy (dicom3tools)."""

import pydicom
import pytest

from medtl.deploy.discover import scan_folder
from medtl.deploy.sr import build_sr, read_headers, sr_summary

pytestmark = pytest.mark.real_data


@pytest.mark.parametrize("modality", ["CR2", "MR10", "MR32"])
def test_sr_for_each_real_series_is_valid(dicom_root, tmp_path, modality, dciodvfy):
    series = {s.modality + str(s.n_frames): s for s in scan_folder(dicom_root)}[modality]
    headers = read_headers(series.files)
    ds = build_sr(headers, {"no_finding": 0.25, "pneumonia": 0.75}, "pneumonia", model_name="tiny", model_version="v1",
                  threshold=0.5)
    path = tmp_path / "sr.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    assert dciodvfy(path) == []
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert back.StudyInstanceUID == series.study_uid and back.SeriesInstanceUID != series.series_uid
    assert sr_summary(back) == {"probabilities": {"no_finding": 0.25, "pneumonia": 0.75}, "prediction": "pneumonia",
                                "observer": "tiny"}
    # Every source instance is referenced, in the evidence and in the measurement groups.
    evidence = {ref.ReferencedSOPInstanceUID for study in back.CurrentRequestedProcedureEvidenceSequence
                for ser in study.ReferencedSeriesSequence for ref in ser.ReferencedSOPSequence}
    assert evidence == {h.SOPInstanceUID for h in headers}
    # Same series, model and content: same UIDs (a resumed run stores the same object again), float noise
    # in the probabilities included.
    again = build_sr(headers, {"no_finding": 0.25 + 1e-7, "pneumonia": 0.75 - 1e-7}, "pneumonia",
                     model_name="tiny", model_version="v1", threshold=0.5)
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (back.SOPInstanceUID, back.SeriesInstanceUID)
    # Other content is another instance in the same SR series: another threshold and decision, or the
    # series' instances as they were before one more arrived. (One UID for both let a PACS keep the old SR
    # while the run reported the new one stored.)
    changed = [build_sr(headers, {"no_finding": 0.25, "pneumonia": 0.75}, "no_finding", model_name="tiny",
                        model_version="v1", threshold=0.8)]
    if len(headers) > 1:
        changed.append(build_sr(headers[:-1], {"no_finding": 0.25, "pneumonia": 0.75}, "pneumonia",
                                model_name="tiny", model_version="v1", threshold=0.5))
    for other in changed:
        assert other.SeriesInstanceUID == back.SeriesInstanceUID and other.SOPInstanceUID != back.SOPInstanceUID


def test_a_source_without_its_type2_patient_and_study_attributes_still_gets_a_valid_sr(dicom_root, tmp_path, dciodvfy):
    """De-identified exports often drop PatientID and the like altogether; the SR carries them empty (Type 2)."""
    from medtl.deploy.sr import TYPE2_COPIED

    series = {s.modality + str(s.n_frames): s for s in scan_folder(dicom_root)}["CR2"]
    headers = read_headers(series.files)
    for h in headers:
        for tag in TYPE2_COPIED:
            if tag in h:
                delattr(h, tag)
    ds = build_sr(headers, {"no_finding": 0.25, "pneumonia": 0.75}, "pneumonia", model_name="tiny", model_version="v1")
    path = tmp_path / "sr.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    assert dciodvfy(path) == []
    back = pydicom.dcmread(path)
    assert back.PatientID == "" and str(back.PatientName) == "" and back.AccessionNumber == ""
    assert all("PatientID" not in h for h in headers)  # the caller's headers are left as they were


def test_placeholder_and_acr_nema_dates_and_times_still_get_a_valid_sr(dicom_root, tmp_path, dciodvfy):
    """'00000000' (a vendor's unknown birth date), '1955', '18:50:59' left no SR for the patient ('cannot build the
    SR: year 0 is out of range'). A date or time in the ACR-NEMA form loses its separators (PS3.5 6.2), one that
    is no date at all is empty (Type 2: unknown)."""
    series = {s.modality + str(s.n_frames): s for s in scan_folder(dicom_root)}["CR2"]
    for birth, time, want_birth, want_time in (("00000000", "18:50:59", "", "185059"),
                                               ("1955", "185059.25", "", "185059.25"),
                                               ("1955.01.02", "99", "19550102", "")):
        headers = read_headers(series.files)
        for h in headers:
            h.PatientBirthDate, h.StudyTime = birth, time
        ds = build_sr(headers, {"no_finding": 0.25, "pneumonia": 0.75}, "pneumonia", model_name="tiny",
                      model_version="v1")
        path = tmp_path / "sr.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        assert dciodvfy(path) == [], (birth, time)
        back = pydicom.dcmread(path)
        assert (back.PatientBirthDate, back.StudyTime) == (want_birth, want_time)
        assert headers[0].PatientBirthDate == birth  # the caller's headers are left as they were
