"""Finding the work: files and folders become series, and rules choose which series to predict.

A folder walk reads each DICOM header once (pixels skipped), groups instances by
SeriesInstanceUID and keeps, per series, the few header values the rules and the results need.
NIfTI/PNG/JPEG files are one-file series of their own. Files that cannot be read at all become
one-file series that carry their error, so the run reports them as error rows instead of stopping.

Identifying header values (patient name, id, birth date, accession number) are kept apart in
``Series.identifiers``: they are written out only on request, and are scrubbed from error texts.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator, MutableSequence
from dataclasses import dataclass, field
from pathlib import Path

from medtl.data.io import ARRAY_MEMBER, DICOM_LIKE, IMAGE_SUFFIXES, NIFTI_SUFFIXES, stored_file
from medtl.deploy.limits import Limits, check_deflated, check_dicom, check_file, check_series
from medtl.deploy.redact import WARNINGS_LOGGER
from medtl.deploy.uids import digest
from medtl.errors import MedtlError

log = logging.getLogger(__name__)

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
    status: str = ""  # "duplicate" for a second copy of an instance already used; else set by the run
    remote: tuple | None = None  # DICOMweb: (study_uid, series_uid) to retrieve
    decoded_bytes: int = 0  # pixel data once decoded, from the headers (limits)
    case_id: str = ""  # the key as results show it (batch: redacted, and still unique)

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

    def __post_init__(self) -> None:  # a bad pattern is a refused command, before any series is read
        if self.description:
            try:
                re.compile(self.description)
            except re.error as err:
                raise MedtlError(f"not a regular expression: {self.description!r} ({err})",
                                 "--series-description") from None

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
    """A header value as text; a multi-valued one joined by DICOM's own separator (``\\``), not as a
    Python list's text (which would hide its values from the identifier scrubber). (pydicom's
    MultiValue is a MutableSequence: no import on this path, called for every tag of every file.)"""
    value = ds.get(tag, "")
    if value is None:
        return ""
    if isinstance(value, (MutableSequence, tuple)):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _identifiers(ds) -> dict[str, str]:
    return {t: header_text(ds, t) for t in IDENTIFIER_TAGS if header_text(ds, t)}


def _frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _walk(root: Path, skip: Path | None) -> Iterator[tuple[Path, str | None]]:
    """``(path, problem)`` for every file under ``root``; ``problem`` is None for a regular, readable file.

    Never opens anything but folders: a FIFO would block a read forever, and a device or socket is
    not an image. Symbolic links are followed only when they stay inside ``root``; a folder reached
    twice (a link loop) is walked once.
    """
    root_real = root.resolve()
    skip_real = skip.resolve() if skip is not None else None
    seen = {root_real}
    stack = [root]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as it:
                names = sorted(e.name for e in it)
        except OSError as err:  # unreadable folder: its files would silently go missing
            yield here, f"folder cannot be read: {err.strerror or err}"
            continue
        folders = []
        for name in names:
            if name.startswith("."):  # hidden files and folders, our own lock and temporary folder
                continue
            path = here / name
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    try:
                        target = path.resolve(strict=True)
                    except (OSError, RuntimeError):
                        yield path, "broken symbolic link"
                        continue
                    if not target.is_relative_to(root_real):
                        yield path, "symbolic link points outside the input folder: not followed"
                        continue
                    st = os.stat(target)
            except OSError as err:
                yield path, f"cannot stat: {err.strerror or err}"
                continue
            if stat.S_ISDIR(st.st_mode):
                real = path.resolve()
                if real in seen or (skip_real is not None and real == skip_real):
                    continue  # never read our own output (an --out inside the input), nor a folder twice
                seen.add(real)
                folders.append(path)
            elif not stat.S_ISREG(st.st_mode):
                yield path, "not a regular file (a FIFO, socket or device): not read"
            elif not os.access(path, os.R_OK):
                yield path, "file cannot be read: permission denied"
            else:
                yield path, None
        stack.extend(reversed(folders))


@contextlib.contextmanager
def regular_file(path: Path) -> Iterator[Path]:
    """A path to read ``path`` through, only if it is a regular file at the moment it is opened.

    The walk already skips FIFOs, but a file swapped for one after the walk would block an ordinary
    open forever: this opens without blocking, checks the open file, and hands out /proc/self/fd/N,
    which reads that same open file (the plain path where /proc is missing).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise MedtlError(f"file cannot be read: {err.strerror or type(err).__name__}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MedtlError("not a regular file (a FIFO, socket or device): not read")
        proc = Path(f"/proc/self/fd/{fd}")
        if not proc.exists():
            yield path
            return
        # a reader's own warnings name the file it was given: the file's name, not /proc/self/fd/N
        named = _NamedFile(str(proc), path.name)
        loggers = [logging.getLogger(name) for name in ("pydicom", "py.warnings", WARNINGS_LOGGER)]
        for logger in loggers:
            logger.addFilter(named)
        try:
            yield proc
        finally:
            for logger in loggers:
                logger.removeFilter(named)
    finally:
        os.close(fd)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


class _NamedFile(logging.Filter):
    """Rewrites one /proc/self/fd path in log records to the name of the file behind it."""

    def __init__(self, proc: str, name: str):
        super().__init__()
        self.proc, self.name = proc, name

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.proc in message:
            record.msg, record.args = message.replace(self.proc, self.name), None
        return True


def file_key(rel: str) -> str:
    """The key of a file that is a unit of its own (a picture, an unreadable file), from its shown path."""
    return "file-" + digest(rel, 16)


def scan_files(paths: Iterable[Path | tuple[Path, str | None]], root: Path, limits: Limits | None = None,
               display=None, volume: bool = False) -> list[Series]:
    """Group ``paths`` (files under ``root``, or ``(file, problem)`` pairs from the walk) into series.

    Every file ends in exactly one series: a DICOM series, or a one-file series of its own (an image,
    an unreadable file, a file over the limits, a duplicate instance). ``limits`` (default
    ``Limits()``) are checked from each header before any pixel is decoded; ``display`` turns a
    path relative to ``root`` into what the results show (e.g. salted hashes, ``--redact-paths``);
    ``volume``: each series will be read as one volume (a 3D model), with its own limit.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    limits = limits or Limits()
    display = display or (lambda rel: rel)
    groups: dict[str, Series] = {}
    singles: list[Series] = []
    used_sop: dict[str, str] = {}  # SOPInstanceUID -> the file (as displayed) whose copy is used
    # SOPInstanceUID -> (that file, decoded bytes, frames), when it sits in a series (no header kept: a
    # large export holds many thousands of instances, and duplicates are rare)
    used_in_series: dict[str, tuple] = {}
    ignored = 0
    for item in paths:
        path, problem = item if isinstance(item, tuple) else (item, None)
        rel = display(path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name)

        def single(error: str | None = None, ds=None) -> Series:
            s = _new_series(file_key(rel), ds, rel) if ds is not None else Series(file_key(rel), source=rel)
            s.files.append(path)
            s.error = error
            if ds is not None:
                s.sop_uids[str(path)] = header_text(ds, "SOPInstanceUID")
            singles.append(s)
            return s

        if problem:
            single(problem)
            continue
        lower = path.name.lower()
        if lower.endswith(IMAGE_SUFFIXES + NIFTI_SUFFIXES):
            try:
                with regular_file(path) as readable:
                    # nibabel tells NIfTI from .nii.gz by the name; Pillow reads the format from the bytes
                    check_file(path if lower.endswith(NIFTI_SUFFIXES) else readable, limits, path.name)
                single().n_frames = 1
            except MedtlError as err:
                single(err.reason)
            continue
        try:
            with regular_file(path) as readable:
                check_deflated(readable, limits)
                ds = pydicom.dcmread(readable, stop_before_pixels=True)
        except InvalidDicomError:
            if path.suffix.lower() in DICOM_LIKE:
                empty = _size(path) == 0  # an export that never arrived, more likely than a stray file
                single("empty file (0 bytes)" if empty else "not a DICOM file (no DICM preamble/marker)")
            else:
                ignored += 1
            continue
        except MedtlError as err:
            single(err.reason)
            continue
        except OSError as err:
            single(f"file cannot be read: {err.strerror or type(err).__name__}")
            continue
        except Exception as err:  # a truncated or garbled header: pydicom raises many types
            single("unreadable DICOM header: " + str(err).replace(str(path), path.name))
            continue
        meta = getattr(ds, "file_meta", None)
        if str(getattr(meta, "MediaStorageSOPClassUID", "")) == MEDIA_DIRECTORY or "DirectoryRecordSequence" in ds:
            ignored += 1
            continue
        sop = header_text(ds, "SOPInstanceUID")
        if not sop:  # a truncated header reads "successfully" but empty
            single("incomplete DICOM header (no SOPInstanceUID): truncated or damaged file")
            continue
        if sop in used_sop:  # two files, one instance: use one, report the other on its own row
            swapped = _use_larger_copy(groups, used_in_series.get(sop), path, ds, limits)
            if swapped is not None:
                # The earlier copy is shorter: a truncated or partial copy would fail the whole series,
                # so the fuller one is used and the earlier one is reported as the duplicate.
                earlier = used_in_series[sop][0]
                earlier_rel = used_sop[sop]
                used_sop[sop], used_in_series[sop] = rel, swapped
                try:  # its own header for its row (it was read once already)
                    earlier_ds = pydicom.dcmread(earlier, stop_before_pixels=True)
                except Exception:  # noqa: BLE001 (gone or changed since: the copy's header says the same)
                    earlier_ds = ds
                dup = _new_series(file_key(earlier_rel), earlier_ds, earlier_rel)
                dup.files.append(earlier)
                dup.sop_uids[str(earlier)] = sop
                dup.error = (f"duplicate instance: SOP Instance UID {sop} is also in {rel}, a larger copy, which "
                             "was used; this file was not")
                dup.status = "duplicate"
                singles.append(dup)
                continue
            single(f"duplicate instance: SOP Instance UID {sop} was already read from {used_sop[sop]}, which "
                   "was used; this file was not", ds).status = "duplicate"
            continue
        try:
            size = check_dicom(ds, limits)
        except MedtlError as err:
            single(err.reason, ds)
            continue
        used_sop[sop] = rel
        uid = header_text(ds, "SeriesInstanceUID")
        if not uid:  # no series: the instance stands alone
            single(None, ds)
            continue
        s = groups.get(uid)
        if s is None:
            s = groups[uid] = _new_series(uid, ds, "")
            s.n_frames = 0
        elif header_text(ds, "StudyInstanceUID") != s.study_uid and not s.error:
            s.error = "instances of this series name different StudyInstanceUIDs"
        s.files.append(path)
        s.n_frames += _frames(ds)
        s.decoded_bytes += size
        s.sop_uids[str(path)] = sop
        used_in_series[sop] = (path, size, _frames(ds))
    for s in groups.values():
        try:
            check_series(s.decoded_bytes, limits, volume)
        except MedtlError as err:
            s.error = s.error or err.reason
    if ignored:
        log.info("ignored %d file(s) that are neither images nor DICOM", ignored)
    return list(groups.values()) + singles


def _use_larger_copy(groups: dict[str, Series], used: tuple | None, path: Path, ds, limits: Limits) -> tuple | None:
    """Put ``path`` in its series in place of the earlier copy of the same instance (``used``: that copy's
    file, decoded bytes, frames) when ``path`` is the larger file and passes the limits; returns ``path``'s
    own (file, bytes, frames), or None to keep the earlier copy."""
    if used is None:
        return None
    earlier, earlier_size, earlier_frames = used
    group = groups.get(header_text(ds, "SeriesInstanceUID"))
    try:
        if group is None or earlier not in group.files or path.stat().st_size <= earlier.stat().st_size:
            return None
        size = check_dicom(ds, limits)  # the copy used must pass the same limits as any instance
    except (OSError, MedtlError):
        return None
    group.files[group.files.index(earlier)] = path
    group.sop_uids[str(path)] = group.sop_uids.pop(str(earlier))
    group.decoded_bytes += size - earlier_size
    group.n_frames += _frames(ds) - earlier_frames
    return path, size, _frames(ds)


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


def scan_folder(folder: str | Path, skip: Path | None = None, limits: Limits | None = None,
                display=None, volume: bool = False) -> list[Series]:
    """Every series under ``folder`` (recursively); ``skip`` is a folder not to enter (the output)."""
    root = Path(folder)
    if not root.is_dir():
        raise MedtlError("input folder not found", root)
    return scan_files(_walk(root, skip), root, limits, display, volume)


def scan_manifest(manifest: str | Path, data_root: str | Path, split: str | None = None,
                  limits: Limits | None = None, display=None, volume: bool = False) -> list[Series]:
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
    display = display or (lambda rel: rel)
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
        shown = display(rel) if rel else f"row-{i}"
        try:
            full = resolve_inside(data_root, rel, f"{mpath}:{i}")
        except MedtlError as err:
            out.append(Series(shown, source=shown, extra=extra, error=err.reason))
            continue
        if not stored_file(full).exists():
            out.append(Series(shown, source=shown, extra=extra, error="file not found"))
            continue
        if ARRAY_MEMBER in str(full):  # one image of an array archive (PneumoniaMNIST): read as training reads it
            out.append(Series(shown, files=[full], source=shown, extra=extra, n_frames=1))
            continue
        if full.is_dir():
            found = scan_folder(full, limits=limits, volume=volume)
        elif full.is_file():
            found = scan_files([full], full.parent, limits, volume=volume)
        else:
            found = [Series(shown, error="not a regular file (a FIFO, socket or device): not read")]
        if len(found) == 1:
            s = found[0]
        elif not found:
            s = Series(shown, error="folder holds no images or DICOM files")
        elif sum(f.status != "duplicate" for f in found) == 1:
            s = next(f for f in found if f.status != "duplicate")  # a series and copies of its instances
        else:
            s = Series(shown, error=f"folder holds {len(found)} series or unusable files; a manifest row must be "
                       "one series")
        s.key, s.source, s.extra = shown, shown, extra
        out.append(s)
    from medtl.data.check import wrong_root_hint

    hint = wrong_root_hint(sum(s.error == "file not found" for s in out), len(out), data_root)
    if hint:
        log.warning("%s: %s", mpath.name, hint)
    return out
