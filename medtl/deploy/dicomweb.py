"""A PACS over DICOMweb (dicomweb-client): QIDO-RS to find series, WADO-RS to fetch them, STOW-RS to store SRs.

An input URL is the service root, optionally with QIDO-RS study filters as its query string::

    http://pacs:8042/dicom-web                                   every study
    http://pacs:8042/dicom-web?ModalitiesInStudy=MR               studies holding MR series
    http://pacs:8042/dicom-web?StudyInstanceUID=1.2.3             one study

The query string may hold identifiers (PatientID=...): it is never logged or written to the results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from medtl.deploy.discover import IDENTIFIER_TAGS, Series, header_text
from medtl.errors import MedtlError

log = logging.getLogger(__name__)

SERIES_FIELDS = ["Modality", "BodyPartExamined", "SeriesDescription", "NumberOfSeriesRelatedInstances",
                 "SeriesNumber"]


def is_url(text: str) -> bool:
    return str(text).startswith(("http://", "https://"))


def public_url(url: str) -> str:
    """``url`` without its query string and credentials: safe to log and record."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class DicomwebSource:
    """A DICOMweb service. ``retries``: attempts per request (with exponential back-off, 1 s, 2 s, ...)
    for connection errors and busy answers (429/408/503/504); ``session`` e.g. carries authentication."""

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 5, session=None):
        from dicomweb_client.api import DICOMwebClient

        parts = urlsplit(url)
        self.url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.filters = dict(parse_qsl(parts.query))
        self.client = DICOMwebClient(self.url, session=session, timeout=timeout)
        self.client.set_http_retry_params(retry=retries > 1, max_attempts=max(1, int(retries)))

    def __str__(self) -> str:
        return public_url(self.url)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # requests' HTTPError/ConnectionError and friends
            raise MedtlError(f"DICOMweb {what} failed: {type(err).__name__}: {err}", public_url(self.url)) from None

    def list_series(self) -> list[Series]:
        """Every series of the studies matching the URL's filters (QIDO-RS)."""
        from pydicom import Dataset

        studies = self._call("study search", self.client.search_for_studies, search_filters=self.filters or None,
                             get_remaining=True)
        out: list[Series] = []
        for study_json in studies:
            study = Dataset.from_json(study_json)
            study_uid = header_text(study, "StudyInstanceUID")
            found = self._call("series search", self.client.search_for_series, study_uid, fields=SERIES_FIELDS,
                               get_remaining=True)
            for series_json in found:
                ds = Dataset.from_json(series_json)
                uid = header_text(ds, "SeriesInstanceUID")
                try:
                    n = int(header_text(ds, "NumberOfSeriesRelatedInstances") or 0)
                except ValueError:
                    n = 0
                ids = {t: header_text(ds, t) or header_text(study, t) for t in IDENTIFIER_TAGS}
                out.append(Series(
                    key=uid, study_uid=study_uid, series_uid=uid, modality=header_text(ds, "Modality"),
                    body_part=header_text(ds, "BodyPartExamined"), description=header_text(ds, "SeriesDescription"),
                    n_frames=n,  # instances: QIDO does not count frames
                    identifiers={k: v for k, v in ids.items() if v}, remote=(study_uid, uid),
                ))
        log.info("DICOMweb %s: %d studies, %d series", public_url(self.url), len(studies), len(out))
        return out

    def fetch(self, series: Series, folder: Path) -> tuple[list[Path], dict[str, str]]:
        """Retrieve the series' instances (WADO-RS) into ``folder``; returns (files, {file: SOPInstanceUID})."""
        import pydicom

        study_uid, series_uid = series.remote
        # Any transfer syntax, as stored: asking for the default (Explicit VR Little Endian) makes the PACS
        # transcode, and a PACS without a JPEG 2000 codec (Debian's Orthanc) then fails the whole series.
        datasets = self._call("retrieve", self.client.retrieve_series, study_uid, series_uid,
                              media_types=(("application/dicom", "*"),))
        files, sops = [], {}
        folder.mkdir(parents=True, exist_ok=True)
        for i, ds in enumerate(datasets):
            path = folder / f"{i:06d}.dcm"  # our own names: nothing from the header reaches the path
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            files.append(path)
            sops[str(path)] = header_text(ds, "SOPInstanceUID")
        if not files:
            raise MedtlError("the PACS returned no instances for this series")
        return files, sops

    def store(self, datasets: list) -> None:
        """Store (STOW-RS); raises :class:`MedtlError` when the server refuses any instance."""
        response = self._call("store", self.client.store_instances, datasets)
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise MedtlError(f"the PACS refused {len(failed)} instance(s) (failure reasons {reasons})",
                             public_url(self.url))
