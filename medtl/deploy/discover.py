"""Finding the work: files and folders become series, and rules choose which series to predict.

A folder walk reads each DICOM header once (pixels skipped), groups instances by
SeriesInstanceUID and keeps, per series, the few header values the rules and the results need.
NIfTI/PNG/JPEG files are one-file series of their own. Files that cannot be read at all become
one-file series that carry their error, so the run reports them as error rows instead of stopping.

Identifying header values (patient name, id, birth date, accession number) are kept apart in
``Series.identifiers``: they are written out only on request, and are scrubbed from error texts.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medtl.data.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES
from medtl.deploy.uids import digest
from medtl.errors import MedtlError

log = logging.getLogger(__name__)

# Suffixes that claim to be DICOM: an unreadable one is an error row, any other unreadable file
# (notes.txt, thumbs.db) is ignored.
DICOM_LIKE = (".dcm", ".dicom", ".ima", "")
IDENTIFIER_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate",
                   "OtherPatientIDs", "PatientAddress", "ReferringPhysicianName")
# The ones also scrubbed from texts (a study date is not secret, and appears inside many UIDs).
SCRUBBED_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs",
                 "PatientAddress")
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR: an index, not an image


@dataclass
class Series:
    """One unit of work: one row in the results."""

    key: str  # unique in a run: the SeriesInstanceUID, or "file-<hash>" / a manifest path
    files: list[Path] = field(default_factory=list)
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    body_part: str = ""
    description: str = ""
    n_frames: int = 0  # slices: instances, or frames of a multi-frame instance
    sop_uids: dict[str, str] = field(default_factory=dict)  # file path -> SOPInstanceUID (for error texts)
    identifiers: dict[str, str] = field(default_factory=dict)  # never written unless asked for
    source: str = ""  # path relative to the input, for non-DICOM files and manifest rows
    extra: dict[str, str] = field(default_factory=dict)  # manifest columns carried to the results (label, split)
    error: str | None = None  # known bad before any pixel is read
    remote: tuple | None = None  # DICOMweb: (study_uid, series_uid) to retrieve

    @property
    def is_dicom(self) -> bool:
        return bool(self.series_uid)


@dataclass
class SeriesRules:
    """Which series to predict. Empty rules select everything."""

    modalities: tuple[str, ...] = ()  # e.g. ("CR", "DX")
    body_parts: tuple[str, ...] = ()  # e.g. ("CHEST",)
    description: str | None = None  # regular expression, searched case-insensitively
    min_slices: int = 0
    skip_own_sr: bool = True  # SRs that medtl stored back to a PACS are outputs, not inputs

    def reason_to_exclude(self, s: Series) -> str | None:
        if s.error:
            return None  # broken inputs are reported as errors, not silently filtered out
        if self.skip_own_sr and s.modality == "SR" and s.description.startswith("medtl "):
            return "an SR written by medtl"
        if self.modalities and s.modality.upper() not in {m.upper() for m in self.modalities}:
            return f"modality {s.modality or '(none)'} not in {list(self.modalities)}"
        if self.body_parts and s.body_part.upper() not in {b.upper() for b in self.body_parts}:
            return f"body part {s.body_part or '(none)'} not in {list(self.body_parts)}"
        if self.description and not re.search(self.description, s.description or "", re.IGNORECASE):
            return f"series description does not match {self.description!r}"
        if self.min_slices and s.n_frames < self.min_slices:
            return f"{s.n_frames} slice(s), fewer than {self.min_slices}"
        return None

    def split(self, series: Iterable[Series]) -> tuple[list[Series], list[tuple[Series, str]]]:
        chosen, excluded = [], []
        for s in series:
            why = self.reason_to_exclude(s)
            (excluded.append((s, why)) if why else chosen.append(s))
        return chosen, excluded


def header_text(ds, tag: str) -> str:
    value = ds.get(tag, "")
    return "" if value is None else str(value).strip()


def _identifiers(ds) -> dict[str, str]:
    return {t: header_text(ds, t) for t in IDENTIFIER_TAGS if header_text(ds, t)}


def _frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _walk(root: Path, skip: Path | None) -> Iterator[Path]:
    skip_resolved = skip.resolve() if skip is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # Never read our own output (an --out inside the input) or hidden folders.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (skip_resolved is None or (here / d).resolve() != skip_resolved))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield here / name


def _file_key(rel: str) -> str:
    return "file-" + digest(rel, 16)


def scan_files(paths: Iterable[Path], root: Path) -> list[Series]:
    """Group ``paths`` (files under ``root``) into series; see the module docstring."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, Series] = {}
    singles: list[Series] = []
    ignored = 0
    for path in paths:
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        lower = path.name.lower()
        if lower.endswith(IMAGE_SUFFIXES + NIFTI_SUFFIXES):
            singles.append(Series(_file_key(rel), [path], n_frames=1, source=rel))
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            if path.suffix.lower() in DICOM_LIKE:
                singles.append(Series(_file_key(rel), [path], source=rel,
                                      error="not a DICOM file (no DICM preamble/marker)"))
            else:
                ignored += 1
            continue
        except Exception as err:  # a truncated or garbled header: pydicom raises many types
            singles.append(Series(_file_key(rel), [path], source=rel, error=f"unreadable DICOM header: {err}"))
            continue
        meta = getattr(ds, "file_meta", None)
        if str(getattr(meta, "MediaStorageSOPClassUID", "")) == MEDIA_DIRECTORY or "DirectoryRecordSequence" in ds:
            ignored += 1
            continue
        if not header_text(ds, "SOPInstanceUID"):  # a truncated header reads "successfully" but empty
            singles.append(Series(_file_key(rel), [path], source=rel,
                                  error="incomplete DICOM header (no SOPInstanceUID): truncated or damaged file"))
            continue
        uid = header_text(ds, "SeriesInstanceUID")
        if not uid:  # no series: the instance stands alone
            singles.append(_new_series(_file_key(rel), ds, rel))
            singles[-1].files.append(path)
            singles[-1].sop_uids[str(path)] = header_text(ds, "SOPInstanceUID")
            continue
        s = groups.get(uid)
        if s is None:
            s = groups[uid] = _new_series(uid, ds, "")
            s.n_frames = 0
        elif header_text(ds, "StudyInstanceUID") != s.study_uid and not s.error:
            s.error = "instances of this series name different StudyInstanceUIDs"
        s.files.append(path)
        s.n_frames += _frames(ds)
        s.sop_uids[str(path)] = header_text(ds, "SOPInstanceUID")
    if ignored:
        log.info("ignored %d file(s) that are neither images nor DICOM", ignored)
    return list(groups.values()) + singles


def _new_series(key: str, ds, rel: str) -> Series:
    return Series(
        key=key,
        study_uid=header_text(ds, "StudyInstanceUID"),
        series_uid=header_text(ds, "SeriesInstanceUID"),
        modality=header_text(ds, "Modality"),
        body_part=header_text(ds, "BodyPartExamined"),
        description=header_text(ds, "SeriesDescription"),
        n_frames=_frames(ds),
        identifiers=_identifiers(ds),
        source=rel,
    )


def scan_folder(folder: str | Path, skip: Path | None = None) -> list[Series]:
    """Every series under ``folder`` (recursively); ``skip`` is a folder not to enter (the output)."""
    root = Path(folder)
    if not root.is_dir():
        raise MedtlError("input folder not found", root)
    return scan_files(_walk(root, skip), root)


def scan_manifest(manifest: str | Path, data_root: str | Path, split: str | None = None) -> list[Series]:
    """One series per manifest row (a file, or a folder holding one DICOM series), keyed by its path.

    Only the ``path`` column is required; ``label`` and ``split`` are carried into the results so a
    prediction table can be scored against them.
    """
    from medtl.paths import resolve_inside

    mpath = Path(manifest)
    try:
        with open(mpath, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise MedtlError(f"cannot read manifest: {err}", mpath) from None
    if rows and "path" not in rows[0]:
        raise MedtlError("manifest has no 'path' column", mpath)
    out: list[Series] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=2):  # line numbers as an editor shows them
        if split and (row.get("split") or "").strip() != split:
            continue
        rel = (row.get("path") or "").strip()
        extra = {k: (row.get(k) or "").strip() for k in ("label", "split") if k in row}
        if rel in seen:
            continue  # a path listed twice is predicted once
        seen.add(rel)
        try:
            full = resolve_inside(data_root, rel, f"{mpath}:{i}")
        except MedtlError as err:
            out.append(Series(rel or f"row-{i}", source=rel, extra=extra, error=err.reason))
            continue
        if not full.exists():
            out.append(Series(rel, source=rel, extra=extra, error="file not found"))
            continue
        found = scan_folder(full) if full.is_dir() else scan_files([full], full.parent)
        if len(found) == 1:
            s = found[0]
        elif not found:
            s = Series(rel, error="folder holds no images or DICOM files")
        else:
            s = Series(rel, error=f"folder holds {len(found)} series; a manifest row must be one")
        s.key, s.source, s.extra = rel, rel, extra
        out.append(s)
    return out
