"""A DICOM Comprehensive SR per series: the model's classification and its probabilities.

Content (TID 1500 Imaging Measurement Report, built with highdicom):

- observer: the model, as a device (name, version, manufacturer "medtl");
- one measurement group (TID 1501) per class, with the class as finding type, its probability
  (DCM 122157 "Probability", unit UCUM "1"), and a qualitative evaluation "Presence of property"
  (DCM 121052) = Present for the predicted class, Absent for the others; the algorithm (name, version, threshold) is identified;
- every source instance referenced, in each group and in the evidence sequence.

The SR's UIDs derive from the source series and the model (``uids.derived_uid``), so writing it
again (a resumed run) gives the same object, and a PACS keeps one copy. The SOP Instance UID also
derives from what the SR says (decision, threshold, probabilities to 3 decimals, the source
instances): an SR with other content is another instance in the same SR series, never a silent
overwrite the PACS may refuse or ignore while the run reports it stored.
Classes are coded in a private scheme ``99MEDTL`` (the model's label names are not standard codes).
"""

from __future__ import annotations

import copy
from pathlib import Path

from medtl.deploy.uids import derived_uid, is_valid_uid
from medtl.errors import MedtlError

SCHEME = "99MEDTL"
SR_SERIES_NUMBER = 9901


def _concept(index: int, label: str):
    import highdicom as hd

    # CodeValue is SH (16 chars): an index-based code; the label itself is the meaning (LO, 64 chars).
    return hd.sr.CodedConcept(value=f"L{index}", scheme_designator=SCHEME, meaning=str(label)[:64] or f"class {index}")


def build_sr(evidence: list, probabilities: dict[str, float], prediction: str, *, model_name: str,
             model_version: str, threshold: float | None = None):
    """The SR dataset for one series. ``evidence``: the series' instance headers (pixels not needed)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not evidence:
        raise MedtlError("an SR needs the source instances' headers")
    for d in evidence:
        bad = [t for t in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
               if not is_valid_uid(str(d.get(t, "")))]
        if bad:  # an SR that references them would itself be invalid DICOM
            raise MedtlError(f"the source's {', '.join(bad)} break(s) the DICOM UID grammar")
    evidence = [_with_type2_attributes(d) for d in evidence]
    first = evidence[0]
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    params = [f"threshold={threshold:g}"] if threshold is not None else None
    algorithm = hd.sr.AlgorithmIdentification(name=model_name[:64], version=str(model_version)[:64],
                                              parameters=params, manufacturer="medtl")
    sources = [hd.sr.SourceImageForMeasurementGroup(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in evidence]
    unit = hd.sr.CodedConcept("1", "UCUM", "no units")
    groups = []
    for i, (label, p) in enumerate(probabilities.items()):
        concept = _concept(i, label)
        present = codes.DCM.Present if label == prediction else codes.DCM.Absent
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(series, model_name, model_version, "class", i),
                                                         identifier=f"{label}"[:64]),
            finding_type=concept,
            algorithm_id=algorithm,
            source_images=sources,
            measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=float(p), unit=unit,
                                            algorithm_id=algorithm)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.DCM.PresenceOfProperty, present)],
        ))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", model_name, model_version), name=model_name[:64],
            manufacturer_name="medtl", model_name=str(model_version)[:64]),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    try:
        return hd.sr.ComprehensiveSR(
            evidence=evidence,
            content=report,
            series_instance_uid=derived_uid(study, series, model_name, model_version, "sr-series"),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=derived_uid(study, series, model_name, model_version, "sr-instance",
                                         *_content_key(evidence, probabilities, prediction, threshold)),
            instance_number=1,
            manufacturer="medtl",
            is_complete=True,
            series_description=f"medtl {model_name}"[:64],
        )
    except (ValueError, TypeError, AttributeError) as err:  # highdicom's checks on the source headers
        raise MedtlError(f"cannot build the SR: {err}") from None


# The Patient and General Study attributes an SR copies from its source: Type 2, so they must be present but
# may be empty. De-identified exports often drop them altogether; the SR then carries them empty.
TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
                "StudyDate", "StudyTime", "ReferringPhysicianName")


# Dates and times an SR copies, which highdicom parses: a value that does not parse left no SR for that patient
# (a review: '00000000', a vendor's placeholder for an unknown birth date, and '18:50:59').
COPIED_DATES_AND_TIMES = {"PatientBirthDate": "DA", "StudyDate": "DA", "StudyTime": "TM"}


def _conformant(value: str, vr: str) -> str:
    """``value`` as a DICOM DA/TM, without the separators of the ACR-NEMA form PS3.5 6.2 still names
    ('1955.01.02', '18:50:59'); empty where it is no date or time (all three are Type 2: unknown is empty)."""
    from pydicom.valuerep import DA, TM

    plain = value.replace(".", "") if vr == "DA" else value.replace(":", "")
    try:
        return plain if not plain or (DA if vr == "DA" else TM)(plain) is not None else ""
    except (ValueError, TypeError):
        return ""


def _with_type2_attributes(header):
    """The header (a copy when anything changes) with every attribute of :data:`TYPE2_COPIED` present and its
    dates and times conformant (:func:`_conformant`)."""
    missing = [t for t in TYPE2_COPIED if t not in header]
    given = {t: str(header.get(t) or "") for t in COPIED_DATES_AND_TIMES if t in header}
    fixed = {t: v for t, v in ((t, _conformant(given[t], COPIED_DATES_AND_TIMES[t])) for t in given) if v != given[t]}
    if not missing and not fixed:
        return header
    header = copy.deepcopy(header)
    for tag in missing:
        setattr(header, tag, "")
    for tag, value in fixed.items():
        setattr(header, tag, value)
    return header


def _content_key(evidence: list, probabilities: dict[str, float], prediction: str,
                 threshold: float | None) -> list[str]:
    """What the SR says, as text: another value here must give another SOP Instance UID (DICOM PS3.3
    C.12.1.1.1: one UID, one content). Probabilities to 3 decimals, so float noise between two runs of
    one model on one series keeps the UID."""
    return [str(prediction), "none" if threshold is None else f"{threshold:.6g}",
            *(f"{label}={float(p):.3f}" for label, p in probabilities.items()),
            *sorted(str(d.SOPInstanceUID) for d in evidence)]


def read_headers(files: list[Path]) -> list:
    import pydicom

    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def sr_summary(ds) -> dict:
    """What an SR written by :func:`build_sr` says: probabilities by class, the present class, the observer."""
    out: dict = {"probabilities": {}, "prediction": None, "observer": None}
    for group in _walk(ds):
        if group.ValueType != "CONTAINER" or group.ConceptNameCodeSequence[0].CodeValue != "125007":
            continue  # only measurement groups
        finding = prob = present = None
        for item in group.get("ContentSequence", []):
            code = item.ConceptNameCodeSequence[0].CodeValue
            if code == "121071" and item.ValueType == "CODE":  # Finding: the class
                finding = str(item.ConceptCodeSequence[0].CodeMeaning)
            elif code == "121052" and item.ValueType == "CODE":  # Presence of property
                present = item.ConceptCodeSequence[0].CodeValue == "121053"
            elif code == "122157" and item.ValueType == "NUM":  # Probability
                prob = float(item.MeasuredValueSequence[0].NumericValue)
        if finding is not None and prob is not None:
            out["probabilities"][finding] = prob
            if present:
                out["prediction"] = finding
    for item in ds.get("ContentSequence", []):
        if item.ConceptNameCodeSequence[0].CodeValue == "121013":  # Device Observer Name
            out["observer"] = str(item.TextValue)
    return out


def _walk(item):
    for child in item.get("ContentSequence", []):
        yield child
        yield from _walk(child)
