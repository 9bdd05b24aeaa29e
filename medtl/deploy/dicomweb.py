"""A PACS over DICOMweb (dicomweb-client): QIDO-RS to find series, WADO-RS to fetch them, STOW-RS to store SRs.

An input URL is the service root, optionally with QIDO-RS study filters as its query string::

    http://pacs:8042/dicom-web                                   every study
    http://pacs:8042/dicom-web?ModalitiesInStudy=MR               studies holding MR series
    https://pacs.hospital/dicom-web?StudyInstanceUID=1.2.3        one study, over TLS

The query string may hold identifiers (PatientID=...): it is never logged or written to the results
(a query that matches no study is named by its keys, with only coded values such as a modality shown).
Its keys are checked before anything is asked of the PACS (``check_filters``): a server ignores a key it
does not know (Orthanc does), so a mistyped filter (``PatientId``) would otherwise list every study.

Authentication (``PacsAuth``) comes from the environment or from files, never from a command-line
value, and is never written anywhere: basic (``MEDTL_PACS_USER`` + ``MEDTL_PACS_PASSWORD`` or a
password file) or a bearer token (``MEDTL_PACS_TOKEN`` or a token file). TLS: a CA bundle for a
hospital's own CA, and a client certificate and key for mutual TLS.

Failures are sorted, because they call for different answers: a refused login (401/403) or a TLS
verification error is not retried (retrying cannot fix it, and a wrong password retried is an
account lockout); a refused or timed-out connection and busy answers (429/408/502/503/504) are
retried ``retries`` times with exponential back-off and then raise :class:`PacsUnreachable`,
which the batch counts towards its circuit breaker.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

from medtl.deploy.discover import IDENTIFIER_TAGS, Series, header_text
from medtl.deploy.limits import MiB
from medtl.errors import MedtlError, TemporaryFailure, closest

log = logging.getLogger(__name__)

SERIES_FIELDS = ["Modality", "BodyPartExamined", "SeriesDescription", "NumberOfSeriesRelatedInstances",
                 "SeriesNumber"]
RETRIED_STATUS = (408, 429, 502, 503, 504)
QIDO_PAGE = 100  # answers per QIDO-RS request (servers may answer fewer: paging goes on until nothing new)
STUDY_UID_TAG, SERIES_UID_TAG = "0020000D", "0020000E"  # keys of the QIDO-RS JSON answers
ENV_USER, ENV_PASSWORD, ENV_TOKEN = "MEDTL_PACS_USER", "MEDTL_PACS_PASSWORD", "MEDTL_PACS_TOKEN"
QIDO_PARAMETERS = ("limit", "offset", "fuzzymatching", "includefield")  # PS3.18's own query keys, lower case
# Filters whose values are codes, never a patient's: the only values a message may show. Every other
# value (PatientID, a name, a UID, a free-text description) is withheld.
SHOWN_VALUES = ("ModalitiesInStudy", "Modality", "SOPClassesInStudy", "BodyPartExamined") + QIDO_PARAMETERS
ROOT_EXAMPLES = "Orthanc's is http://HOST:8042/dicom-web, dcm4chee's .../dcm4chee-arc/aets/AET/rs"


class PacsUnreachable(TemporaryFailure):
    """No connection to the PACS (refused, timed out, or busy) after the retries."""


class PacsRefused(MedtlError):
    """The PACS or its TLS layer refused us: wrong credentials, an untrusted certificate. Not retried."""


def is_url(text: str) -> bool:
    return str(text).startswith(("http://", "https://"))


def public_url(url: str) -> str:
    """``url`` without its query string and credentials: safe to log and record."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _attribute(key: str) -> str | None:
    """The DICOM keyword a QIDO-RS attribute key names (a keyword, or a tag as 8 hex digits; a sequence's
    attributes joined by dots), its last component as a keyword where it has one; None for anything else."""
    from pydicom.datadict import keyword_dict, keyword_for_tag

    last = None
    for part in key.split("."):
        if part in keyword_dict:
            last = part
        elif len(part) == 8 and all(c in "0123456789abcdefABCDEF" for c in part):
            last = keyword_for_tag(int(part, 16)) or part
        else:
            return None
    return last


def _did_you_mean(key: str) -> str:
    from pydicom.datadict import keyword_dict

    # The same letters in another case first (modalitiesinstudy), then the nearest spelling.
    known = {k.lower(): k for k in (*keyword_dict, *QIDO_PARAMETERS)}
    guess = known.get(key.lower()) or known.get(closest(key.lower(), known) or "")
    return f"; did you mean {guess!r}?" if guess else ""


def check_filters(query: str, where: str) -> dict[str, str]:
    """The QIDO-RS study filters of a URL's query string, each key checked: a DICOM keyword or tag, or a
    QIDO-RS parameter. A server ignores what it does not know (Orthanc does), so a mistyped key would
    list every study of the PACS; a key without a value, or given twice, would be as quietly lost.
    Values may be identifiers: no message shows one."""
    filters: dict[str, str] = {}
    for item in query.split("&"):
        if not item:
            continue
        raw_key, eq, raw_value = item.partition("=")
        key, value = unquote_plus(raw_key).strip(), unquote_plus(raw_value).strip()
        if not eq:  # not named: it may be an identifier typed without its key (?MRN700001)
            raise MedtlError("the URL's query holds an item without '=' (not shown: it may be an identifier); "
                             "write KEY=VALUE, e.g. ?PatientID=... or ?ModalitiesInStudy=MR", where)
        if key not in QIDO_PARAMETERS and _attribute(key) is None:
            raise MedtlError(f"unknown DICOMweb filter {key!r} in the URL{_did_you_mean(key)} (a filter is a "
                             "DICOM keyword as in ModalitiesInStudy=MR, a tag as 8 hex digits, or one of "
                             f"{', '.join(QIDO_PARAMETERS)}; a PACS may ignore it and list every study)", where)
        if key in filters:
            raise MedtlError(f"DICOMweb filter {key!r} is given twice in the URL: give it once", where)
        if not value:
            raise MedtlError(f"DICOMweb filter {key!r} has no value in the URL (the PACS would match every "
                             "study)", where)
        if key in ("limit", "offset") and not (value.isdigit() and int(value) >= (key == "limit")):
            raise MedtlError(f"DICOMweb filter {key!r} must be a whole number{' of 1 or more' * (key == 'limit')}, "
                             f"got {value!r}", where)
        if key == "fuzzymatching" and value not in ("true", "false"):
            raise MedtlError(f"DICOMweb filter 'fuzzymatching' must be true or false, got {value!r}", where)
        filters[key] = value
    return filters


def shown_filters(filters: dict[str, str]) -> str:
    """``filters`` as a message may show them: the values of identifying attributes withheld."""
    return "&".join(f"{k}={v if (_attribute(k) or k) in SHOWN_VALUES else '[value withheld]'}"
                    for k, v in filters.items())


def _read_secret(path: str | Path, what: str) -> str:
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise MedtlError(f"cannot read the {what} file: {err.strerror or err}", p) from None
    if not text:
        raise MedtlError(f"the {what} file is empty", p)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the %s file %s can be read by other users: chmod 600 it", what, p)
    return text


@dataclass(frozen=True)
class PacsAuth:
    """Credentials for the PACS: basic (``user`` + ``password``) or a bearer ``token``. Never logged."""

    user: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:  # a traceback or debug print shows no secret
        kind = "token" if self.token else "basic" if self.user else "none"
        return f"PacsAuth({kind}, user={self.user!r})"

    @classmethod
    def from_environment(cls, user: str | None = None, password_file: str | Path | None = None,
                         token_file: str | Path | None = None, environ=None) -> PacsAuth | None:
        """Files first, then ``MEDTL_PACS_USER``/``MEDTL_PACS_PASSWORD`` or ``MEDTL_PACS_TOKEN``; None without any."""
        env = os.environ if environ is None else environ
        token = _read_secret(token_file, "token") if token_file else env.get(ENV_TOKEN) or None
        password = _read_secret(password_file, "password") if password_file else env.get(ENV_PASSWORD) or None
        user = user or env.get(ENV_USER) or None
        if token and (password_file or (user and password)):
            raise MedtlError("give either a bearer token or a user and password for the PACS, not both")
        if password and not user:
            raise MedtlError(f"a PACS password was given but no user (--pacs-user or ${ENV_USER})")
        if token or password:
            return cls(user=user, password=password, token=token)
        return None

    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.token) if s]


def _bearer(token: str):
    import requests

    class Bearer(requests.auth.AuthBase):
        def __call__(self, request):
            request.headers["Authorization"] = f"Bearer {token}"
            return request

        def __repr__(self) -> str:
            return "Bearer(...)"

    return Bearer()


def _one_per_series(listed: list[Series]) -> list[Series]:
    """One unit per SeriesInstanceUID, as a folder gives: a series the PACS lists under several studies (its
    instances name different StudyInstanceUIDs) is one error row, not two rows with one key, each failing to
    retrieve with a bare HTTP 404."""
    by_uid: dict[str, list[Series]] = {}
    for s in listed:
        by_uid.setdefault(s.series_uid, []).append(s)
    out = []
    for uid, group in by_uid.items():
        studies = list(dict.fromkeys(s.study_uid for s in group))
        if len(studies) > 1:
            out.append(replace(group[0], remote=None, error=f"the PACS lists this series under {len(studies)} "
                               f"studies ({', '.join(studies)}): a series belongs to one study, so its record needs "
                               "fixing in the PACS"))
        else:
            out.append(group[0])  # listed twice in one study (a repeated page): one unit
    return out


def _cut_off(err: BaseException) -> bool:
    """Whether a ChunkedEncodingError is a connection that closed mid-answer (a short body, a reset, a chunk
    size that never came), not a malformed answer (a chunk size that is not a number), which no retry mends."""
    import http.client

    from urllib3.exceptions import InvalidChunkLength

    for e in _causes(err):
        if isinstance(e, InvalidChunkLength):
            return not bytes(e.length or b"").strip()
        if isinstance(e, (http.client.IncompleteRead, ConnectionResetError, BrokenPipeError)):
            return True
    return False


def _causes(err: BaseException):
    """The exception and everything it wraps (requests wraps urllib3's, which wraps the socket's)."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]


def _read_timed_out(err: BaseException) -> bool:
    """A read timeout, also one while the body streams in (requests raises that as a ConnectionError)."""
    import requests
    from urllib3.exceptions import ReadTimeoutError

    return any(isinstance(e, (requests.ReadTimeout, ReadTimeoutError)) for e in _causes(err))


def _unknown_host(err: BaseException) -> str | bool:
    """The name that does not exist (EAI_NONAME; True when the error does not say which), not a DNS server that
    is down for now (EAI_AGAIN); False otherwise."""
    import re
    import socket

    causes = list(_causes(err))
    if not any(isinstance(e, socket.gaierror) and e.errno == socket.EAI_NONAME for e in causes):
        return False
    for e in causes:  # urllib3 says which name: "Failed to resolve 'host'"
        found = re.search(r"Failed to resolve '([^']+)'", str(e))
        if found:
            return found.group(1)
    return True


READ_TIMEOUT = 60.0  # seconds a PACS may take to start answering one request (--pacs-timeout)


class DicomwebSource:
    """A DICOMweb service.

    ``retries``: attempts per request for connection errors and busy answers, with exponential
    back-off (``backoff`` s, then twice that, ...); ``timeout``: (connect, read) seconds (a read timeout is not
    retried: a PACS that took the request and sent nothing would keep a retry waiting as long again);
    ``auth``: :class:`PacsAuth`; ``ca_bundle``: a PEM file of CAs to trust (default: the system's);
    ``client_cert``/``client_key``: PEM files for mutual TLS; ``session``: a prepared
    ``requests.Session`` (then auth and TLS options are applied to it).
    """

    def __init__(self, url: str, timeout: float | tuple = (10.0, READ_TIMEOUT), retries: int = 3, session=None, *,
                 auth: PacsAuth | None = None, ca_bundle: str | Path | None = None,
                 client_cert: str | Path | None = None, client_key: str | Path | None = None,
                 backoff: float = 1.0):
        import requests
        from dicomweb_client.api import DICOMwebClient

        parts = urlsplit(url)
        if parts.username or parts.password:
            # Credentials in a URL end up in shell history and process lists: accepted, used as
            # basic auth, and stripped from everything kept.
            log.warning("credentials in the PACS URL are visible to other users of this machine (process list, "
                        "shell history): use %s/%s or --pacs-password-file instead", ENV_USER, ENV_PASSWORD)
            if auth is None:
                auth = PacsAuth(user=unquote(parts.username or ""), password=unquote(parts.password or ""))
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        self.url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.filters = check_filters(parts.query, public_url(url))  # before any request, and before the model
        self.auth = auth
        self.retries, self.backoff = max(1, int(retries)), float(backoff)
        session = session or requests.Session()
        if auth is not None and auth.token:
            session.auth = _bearer(auth.token)
        elif auth is not None and auth.user:
            session.auth = requests.auth.HTTPBasicAuth(auth.user, auth.password or "")
        for name, path in (("CA bundle", ca_bundle), ("client certificate", client_cert), ("client key", client_key)):
            if path is not None and not Path(path).is_file():
                raise MedtlError(f"{name} file not found", path)
        if ca_bundle is not None:
            session.verify = str(ca_bundle)
            # requests lets $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE override a session's own CA bundle
            # (requests issue 3829): the one asked for here must win.
            merge = session.merge_environment_settings

            def keep_ca_bundle(*args, **kwargs):
                settings = merge(*args, **kwargs)
                settings["verify"] = str(ca_bundle)
                return settings

            session.merge_environment_settings = keep_ca_bundle
        if client_cert is not None:
            session.cert = (str(client_cert), str(client_key)) if client_key else str(client_cert)
        elif client_key is not None:
            raise MedtlError("a client key needs its client certificate (--client-cert)")
        self.client_cert = client_cert
        self._session = session
        self.max_response_bytes: int | None = None
        self.read_timeout = float(timeout[1] if isinstance(timeout, tuple) else timeout)
        self.client = DICOMwebClient(self.url, session=session, timeout=timeout)
        self.client.set_http_retry_params(retry=False)  # ours sorts errors first (see the module docstring)
        # The retrying package logs every failed attempt with a traceback; our errors say it once.
        logging.getLogger("retrying").setLevel(logging.ERROR)

    def __str__(self) -> str:
        return public_url(self.url)

    def bound_responses(self, max_bytes: int) -> None:
        """Read no PACS answer beyond ``max_bytes`` (counted after HTTP decompression): a WADO-RS answer
        is held whole in memory before its instances can be checked against the limits."""
        self.max_response_bytes = int(max_bytes)
        hooks = self._session.hooks.setdefault("response", [])
        if self._bound_response not in hooks:
            hooks.append(self._bound_response)

    def _bound_response(self, response, *args, **kwargs):
        limit = self.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            response.close()
            raise MedtlError(f"the PACS answer declares {int(declared) / MiB:.3g} MiB, over the limit of "
                             f"{limit / MiB:.3g} MiB (--max-series-mb, --max-volume-mb): not read")
        stream = response.raw.stream

        def counted(*a, **kw):  # requests reads the body through this (chunked answers too)
            total = 0
            for chunk in stream(*a, **kw):
                total += len(chunk)
                if total > limit:
                    response.close()
                    raise MedtlError(f"the PACS answer is larger than the limit of {limit / MiB:.3g} MiB "
                                     "(--max-series-mb, --max-volume-mb): not read further")
                yield chunk

        response.raw.stream = counted
        return response

    def secrets(self) -> list[str]:
        return self.auth.secrets() if self.auth else []

    def _call(self, what: str, fn, *args, **kwargs):
        import requests

        where = public_url(self.url)
        for attempt in range(self.retries):
            last = attempt == self.retries - 1
            try:
                return fn(*args, **kwargs)
            except requests.exceptions.SSLError as err:
                raise PacsRefused(f"DICOMweb {what} failed: TLS error ({_short(err)}); for a hospital CA give "
                                  "--ca-bundle, for mutual TLS --client-cert/--client-key", where) from None
            except requests.HTTPError as err:
                status = err.response.status_code if err.response is not None else 0
                if status in (401, 403):
                    raise PacsRefused(f"DICOMweb {what} failed: the PACS refused the credentials (HTTP {status}); "
                                      f"check {ENV_USER}/{ENV_PASSWORD}, {ENV_TOKEN} or the credential files",
                                      where) from None
                if status not in RETRIED_STATUS:
                    hints = []
                    if status == 400 and self.url.startswith("https://") and not self.client_cert:
                        hints.append("a TLS gateway answers 400 when it wants a client certificate: --client-cert")
                    if status == 404 and what == "connection check":
                        hints.append(f"the server answers, but {where} is not its DICOMweb root: {ROOT_EXAMPLES}")
                    elif status == 400 and what == "connection check" and not _mentions_certificate(err):
                        # A server's own REST API refuses a DICOMweb search with 400 (Orthanc at http://HOST:8042).
                        hints.append(f"the server answers, but refused a DICOMweb search: is {where} its DICOMweb "
                                     f"root? {ROOT_EXAMPLES}")
                    hint = f" ({'; or '.join(hints)})" if hints else ""
                    raise MedtlError(f"DICOMweb {what} failed: HTTP {_status_text(err, status)}{hint}",
                                     where) from None
                if last:
                    raise PacsUnreachable(f"DICOMweb {what} failed: the PACS is busy (HTTP {status}) after "
                                          f"{self.retries} attempt(s)", where) from None
            except requests.exceptions.ChunkedEncodingError as err:
                if not _cut_off(err):  # malformed framing: a bad answer, not an outage
                    raise MedtlError(f"DICOMweb {what} failed: {type(err).__name__}: {_short(err)}", where) from None
                if last:  # the connection closed while the answer streamed in (a PACS restarting)
                    raise PacsUnreachable(f"DICOMweb {what} failed: cannot reach the PACS after {self.retries} "
                                          f"attempt(s): the connection closed mid-answer: {_short(err)}",
                                          where) from None
            except (requests.ConnectionError, requests.Timeout) as err:
                if _read_timed_out(err):  # it took the request and stopped answering: a retry waits as long again
                    raise PacsUnreachable(f"DICOMweb {what} failed: the PACS sent no answer within "
                                          f"{self.read_timeout:g} s (--pacs-timeout)", where) from None
                unknown = _unknown_host(err)
                if unknown:  # a typo in the URL (or the proxy's): retrying later will not fix it
                    host = unknown if unknown is not True else urlsplit(self.url).hostname
                    proxy = any(isinstance(e, requests.exceptions.ProxyError) for e in _causes(err))
                    raise MedtlError(f"DICOMweb {what} failed: the host name {host!r} is not known (DNS): check "
                                     + ("the proxy setting (HTTP_PROXY, HTTPS_PROXY)" if proxy else "the URL"),
                                     where) from None
                if last:
                    raise PacsUnreachable(f"DICOMweb {what} failed: cannot reach the PACS after {self.retries} "
                                          f"attempt(s): {type(err).__name__}: {_short(err)}", where) from None
            except MedtlError:
                raise
            except Exception as err:  # a malformed answer: a bad series, not a PACS outage
                raise MedtlError(f"DICOMweb {what} failed: {type(err).__name__}: {_short(err)}", where) from None
            time.sleep(self.backoff * 2 ** attempt)
        raise AssertionError("unreachable")

    def check(self) -> None:
        """One cheap authenticated request: wrong credentials or TLS trouble fail here, once, before the batch."""
        self._call("connection check", self.client.search_for_studies, limit=1)

    def _search_all(self, what: str, search, uid_tag: str, *args, start: int = 0, most: int | None = None,
                    **kwargs) -> list[dict]:
        """Every answer of a QIDO-RS search (from the ``start``-th, at most ``most``), page by page, until a
        page is empty or brings no new UID.

        Not dicomweb-client's ``get_remaining``: it stops only at an empty page, and a server that ignores
        ``offset`` for some filter answers the same page forever. Paging can also end early: Orthanc with
        ``ModalitiesInStudy`` answers a first page of ``limit`` and then nothing. So when the answers come to
        a whole number of pages, one request without paging is made too, and the union is kept (anything
        past the first page would otherwise be lost without a word)."""
        def uid(r):
            return (r.get(uid_tag, {}).get("Value") or [None])[0]

        found: dict = {}
        offset = start
        while most is None or len(found) < most:
            size = QIDO_PAGE if most is None else min(QIDO_PAGE, most - len(found))
            page = self._call(what, search, *args, offset=offset, limit=size, **kwargs)
            new = {uid(r): r for r in page if uid(r) not in found}
            if not new:
                break
            found.update(new)
            offset += len(page)
        if found and len(found) % QIDO_PAGE == 0 and (most is None or len(found) < most):
            bounds = {"offset": start} if start else {}
            if most is not None:
                bounds["limit"] = most
            rest = self._call(what, search, *args, **bounds, **kwargs)
            found.update({uid(r): r for r in rest if uid(r) not in found})
        return list(found.values())[:most]

    def list_series(self) -> list[Series]:
        """Every series of the studies matching the URL's filters (QIDO-RS)."""
        from pydicom import Dataset

        # The URL's limit and offset bound the studies listed, not the size of each page asked for.
        filters = {k: v for k, v in self.filters.items() if k not in ("limit", "offset")}
        most = int(self.filters["limit"]) if "limit" in self.filters else None
        studies = self._search_all("study search", self.client.search_for_studies, STUDY_UID_TAG,
                                   start=int(self.filters.get("offset", 0)), most=most,
                                   search_filters=filters or None)
        if not studies:
            self._warn_no_study()
        out: list[Series] = []
        for study_json in studies:
            study = Dataset.from_json(study_json)
            study_uid = header_text(study, "StudyInstanceUID")
            found = self._search_all("series search", self.client.search_for_series, SERIES_UID_TAG, study_uid,
                                     fields=SERIES_FIELDS)
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
        out = _one_per_series(out)
        log.info("DICOMweb %s: %d studies, %d series", public_url(self.url), len(studies), len(out))
        return out

    def _warn_no_study(self) -> None:
        where = public_url(self.url)
        if not self.filters:
            log.warning("DICOMweb %s: the PACS holds no study", where)
            return
        hint = ""
        if any(_attribute(k) == "Modality" for k in self.filters):
            hint = " (Modality is a series attribute; a study is found by ModalitiesInStudy=...)"
        log.warning("DICOMweb %s: the query %s matched no study: nothing to predict; check the URL's filters%s",
                    where, shown_filters(self.filters), hint)

    def fetch(self, series: Series, folder: Path) -> tuple[list[Path], dict[str, str]]:
        """Retrieve the series' instances (WADO-RS) into ``folder``; returns (files, {file: SOPInstanceUID})."""
        import pydicom

        study_uid, series_uid = series.remote
        # Any transfer syntax, as stored: asking for the default (Explicit VR Little Endian) makes the PACS
        # transcode, and a PACS without a JPEG 2000 codec (Debian's Orthanc) then fails the whole series.
        datasets = self._call("retrieve", self.client.retrieve_series, study_uid, series_uid,
                              media_types=(("application/dicom", "*"),))
        files, sops = [], {}
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
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


def _status_text(err, status: int) -> str:
    """'404 Not Found': requests' own text ('404 Client Error: Not Found for url: ...') repeats the status,
    and the URL is named by the error already."""
    reason = err.response.reason if err.response is not None else None
    if reason:
        return f"{status} {reason}"
    text = _short(err)
    return text if text.startswith(str(status)) else f"{status} {text}"


def _mentions_certificate(err) -> bool:
    try:
        return "certificate" in (err.response.text or "")[:2000].lower()
    except Exception:  # a body that cannot be read as text says nothing about certificates
        return False


def _short(err: BaseException) -> str:
    """An exception's text, cut: urllib3's texts repeat the URL (the redaction layer cleans it) and nest."""
    from medtl.deploy.redact import strip_url_secrets

    return strip_url_secrets(" ".join(str(err).split()))[:300]
