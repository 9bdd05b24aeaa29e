"""One redaction layer for everything ``medtl predict`` writes: result files, run.json, log lines,
exception texts and warnings echoed from libraries (pydicom, urllib3, dicomweb-client).

What it removes or defuses, always (with or without ``--include-identifiers``):

- URL credentials: ``https://user:pass@host`` -> ``https://host``;
- URL query strings (QIDO filters may hold a PatientID): ``/studies?PatientID=X`` -> ``/studies?[query]``;
- secrets the run knows (a PACS password or token read from a file or the environment);
- control characters (newlines in a header value would forge log lines): escaped as ``\\x0a``.

Patient identifiers seen in the headers are added per run (``Redactor.add``) unless the user asked
for identifiers. ``redacting(redactor)`` installs it for the duration of a run on every log record
(whatever logger or handler) and on Python warnings.
"""

from __future__ import annotations

import contextlib
import logging
import re
import unicodedata
import warnings
from collections.abc import Iterable, Iterator

from medtl.paths import REDACTED

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#'\"]*@")
# A '?' followed by key=value: a query string, not a question mark in prose.
_QUERY = re.compile(r"\?(?=[\w.%\-]+=)[^\s'\"<>)\]]*")
# C0 and C1 controls, DEL and the Unicode line/paragraph separators some viewers break lines on.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")



def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def strip_url_secrets(text: str) -> str:
    return _QUERY.sub("?[query]", _USERINFO.sub(r"\1", text))


WORDS = r"[\^=\\\s]+"  # a name's components (^), its representations (=), values (\\) and words
COMPONENTS = r"[\^=\\]+"  # an ID's HL7 components (12345678^^^HOSP) and values, not its words
NAME_TAGS = ("PatientName", "PatientAddress")


def name_forms(name: str) -> list[str]:
    """How a DICOM person name ("Yamada^Tarou=山田^太郎") is also written in file and folder names and
    reports: each representation's family and given name run together ("山田太郎", "YamadaTarou"), in
    either order. Joined by a space or an underscore only where a part is too short to be scrubbed on its
    own ("Li Wei"): otherwise the parts are scrubbed one by one, and the paths of output folders written
    before (whose case ids a rerun looks up) still scrub as they did."""
    forms = []
    for group in str(name).split("="):
        family, _, rest = group.partition("^")
        given = rest.partition("^")[0]
        family, given = family.strip(), given.strip()
        if not family or not given:
            continue
        for a, b in ((family, given), (given, family)):
            forms.append(a + b)
            if not (_scrubbed_alone(a) and _scrubbed_alone(b)):
                forms += [f"{a} {b}", f"{a}_{b}"]
    return forms


def date_forms(date: str) -> list[str]:
    """A DICOM date (YYYYMMDD) as people write it: 1901-02-03, 03.02.1901, 03/02/1901, 02/03/1901."""
    date = str(date).strip()
    if not re.fullmatch(r"\d{8}", date):
        return []
    y, m, d = date[:4], date[4:6], date[6:]
    return [f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}"]


def add_identifiers(redactor: "Redactor", pairs: Iterable[tuple[str, str]]) -> None:
    """Scrub header identifiers ``(tag, value)``: names and addresses also word by word (a family name
    appears alone in folder names), names also as :func:`name_forms` and birth dates as :func:`date_forms`;
    IDs and accession numbers by their components only, since their words ("exam Number") are ordinary
    words every message uses."""
    pairs = list(pairs)
    redactor.add((v for k, v in pairs if k in NAME_TAGS), WORDS)
    redactor.add((v for k, v in pairs if k not in NAME_TAGS), COMPONENTS)
    redactor.add((f for k, v in pairs if k == "PatientName" for f in name_forms(v)), None)
    redactor.add((f for k, v in pairs if k == "PatientBirthDate" for f in date_forms(v)), None)


def _scrubbed_alone(part: str) -> bool:
    """Whether a value or a part of one is worth scrubbing by itself: it holds a letter or digit (a name
    of carets, ``^^^``, would cut traceback markers) and is three characters or more; shorter only when
    not ASCII: a CJK or Hangul name part is often one or two characters (山田, 김), and no English
    message (ours, or a library's) holds such a word. A short ASCII part (Li, Wu, Do, An) is an ordinary
    word or abbreviation too often: it is scrubbed within the whole name and its joined forms."""
    part = part.strip()
    if not any(c.isalnum() for c in part):
        return False
    return len(part) >= 3 or not part.isascii()


# How German names are written without umlauts (Müller -> Mueller); other accents are dropped (Åström -> Astrom).
_TRANSLITERATED = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"})


def _without_latin_accents(text: str) -> str:
    """Accented Latin letters as their base letter (Å -> A); other scripts as they are (a kana's voicing mark
    makes another syllable: ご is not こ)."""
    out = []
    for c in text:
        base = unicodedata.normalize("NFD", c)
        out.append(base[0] if base[0].isascii() and base[0].isalpha() and len(base) > 1 else c)
    return "".join(out)


def spellings(value: str) -> set[str]:
    """``value`` as file systems and people also write it: composed and decomposed Unicode (macOS and SMB
    copies decompose: u + combining diaeresis), without Latin accents, and with German umlauts spelled out."""
    composed = unicodedata.normalize("NFC", value)
    out = {composed, unicodedata.normalize("NFD", composed)}
    for text in (composed, composed.translate(_TRANSLITERATED)):
        out.update((text, _without_latin_accents(text)))
    return out


# Scripts written without spaces between words: Thai, kana, Han, Hangul (whose particles and honorifics
# attach to a name: 김민준님).
_UNSPACED = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def _alternative(value: str) -> str:
    """The pattern that finds ``value``: as a whole token, or anywhere when it holds two characters or more
    of a script written without spaces, where a name runs into the words around it (山田さん, 王伟先生). A
    single such character (김, 王) stays a whole token: 김치 is not the family name 김."""
    if len(value) >= 2 and _UNSPACED.search(value):
        return re.escape(value)
    return rf"(?<![^\W_]){re.escape(value)}(?![^\W_])"


class Redactor:
    """``redactor(text)``: ``text`` safe to write. Values added with :meth:`add` are replaced by
    ``[redacted]`` as whole tokens (a name's parts too: 3+ characters, or 1+ not ASCII; see :func:`_alternative`
    for scripts without spaces); secrets with
    :meth:`add_secret` wherever they appear, even inside a word."""

    def __init__(self, values: Iterable[str] = ()):
        self._values: set[str] = set()
        self._secrets: set[str] = set()
        self._pattern = None
        self._secret_pattern = None
        self.add(values)

    def add(self, values: Iterable[str], split: str | None = WORDS) -> None:
        """Scrub these values, and each of their parts cut at ``split`` (a regular expression; None: the
        whole value only). See :func:`add_identifiers` for which identifier is cut where."""
        new = set()
        for given in values:
            for value in spellings(str(given).strip()):
                if _scrubbed_alone(value):
                    new.add(value)
                if split:
                    new.update(p.strip() for p in re.split(split, value) if _scrubbed_alone(p))
        if new - self._values:
            self._values |= new
            # Longest first, so a whole name goes before its parts; whole tokens only, so a birth
            # date is not cut out of the middle of a UID, except in scripts written without spaces.
            alternatives = "|".join(_alternative(n) for n in sorted(self._values, key=len, reverse=True))
            self._pattern = re.compile(alternatives, re.IGNORECASE)

    def add_secret(self, secret: str | None) -> None:
        if secret and len(secret) >= 3 and secret not in self._secrets:
            self._secrets.add(secret)
            self._secret_pattern = re.compile("|".join(re.escape(s) for s in sorted(self._secrets, key=len,
                                                                                      reverse=True)))

    def text(self, text: str, controls: bool = True) -> str:
        """Redacted ``text``; ``controls=False`` keeps newlines (a formatted traceback)."""
        if not text:
            return text
        text = str(text)
        if self._secret_pattern is not None:
            text = self._secret_pattern.sub(REDACTED, text)
        text = strip_url_secrets(text)
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        return escape_controls(text) if controls else text

    __call__ = text

    def value(self, value):
        """A row value: strings redacted, containers walked, numbers as they are."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value


class _RedactingFactory:
    def __init__(self, previous, redactor: Redactor):
        self.previous, self.redactor = previous, redactor

    def __call__(self, *args, **kwargs):
        record = self.previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: leave it to logging's own error handling
            return record
        record.msg, record.args = self.redactor.text(message), ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redactor.text(logging.Formatter().formatException(record.exc_info), controls=False)
            record.exc_info = None
        return record


WARNINGS_LOGGER = "medtl.warnings"  # where warnings shown while redacting are logged


@contextlib.contextmanager
def redacting(redactor: Redactor) -> Iterator[Redactor]:
    """Every log record created (any logger) and every warning shown in the block goes through ``redactor``."""
    previous = logging.getLogRecordFactory()
    logging.setLogRecordFactory(_RedactingFactory(previous, redactor))
    show = warnings.showwarning
    # not "py.warnings": logging.captureWarnings leaves a NullHandler there, which would swallow every warning
    # where Python prints it (no logging configured); here logging's last resort prints it
    warn_log = logging.getLogger(WARNINGS_LOGGER)

    def show_redacted(message, category, filename, lineno, file=None, line=None):
        # The message, not the library's source line: a header value in it may carry anything.
        warn_log.warning("%s: %s", category.__name__, message)

    warnings.showwarning = show_redacted
    try:
        yield redactor
    finally:
        warnings.showwarning = show
        logging.setLogRecordFactory(previous)


@contextlib.contextmanager
def held_until_learned(redactor: Redactor) -> Iterator[None]:
    """Log records (warnings included) made in the block are held back and shown when it ends, redacted again
    then: scanning the input reads the headers that reveal its identifiers, and a library's warning while a
    header is read (pydicom's "Invalid value for VR UI: '1.2.3.<patient id>.9'") was shown before the redactor
    knew the identifier it holds. Records are redacted when they are made, so the text kept is the library's,
    redacted with what was known then; the second pass adds what the block taught the redactor."""
    root = logging.getLogger()
    loggers = [root] + [x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)]
    handlers = list({id(h): h for x in loggers for h in x.handlers}.values())  # an app's own loggers' too
    held: dict[int, tuple[logging.LogRecord, list[logging.Handler]]] = {}  # in order made; each record once

    class Hold(logging.Filter):  # on every handler: records wait, with the handlers that would have shown them
        def __init__(self, handler: logging.Handler) -> None:
            super().__init__()
            self.handler = handler

        def filter(self, record: logging.LogRecord) -> bool:
            _, targets = held.setdefault(id(record), (record, []))  # held records stay alive: their ids stay unique
            if self.handler not in targets:
                targets.append(self.handler)
            return False

    class Collect(logging.Handler):  # logging's last resort prints a record no handler took: hold it too
        def emit(self, record: logging.LogRecord) -> None:
            held.setdefault(id(record), (record, []))

    def any_handler(name: str) -> bool:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            if logger.handlers:
                return True
            logger = logger.parent if logger.propagate else None
        return False

    holds = [(h, Hold(h)) for h in handlers]
    for h, hold in holds:
        h.addFilter(hold)
    collect = Collect()
    root.addHandler(collect)
    try:
        yield
    finally:
        for h, hold in holds:
            h.removeFilter(hold)
        root.removeHandler(collect)
        for record, targets in list(held.values()):
            try:
                message = record.getMessage()
            except Exception:  # a malformed call (too few arguments): logging reports it and goes on, so here too
                for h in targets or ([logging.lastResort] if logging.lastResort is not None else []):
                    h.handleError(record)
                continue
            record.msg, record.args = redactor.text(message), ()
            if record.exc_text:
                record.exc_text = redactor.text(record.exc_text, controls=False)
            if not targets and not any_handler(record.name) and logging.lastResort is not None \
                    and record.levelno >= logging.lastResort.level:
                targets = [logging.lastResort]  # where logging would have sent it: no handler on its way up
            for h in targets:
                h.handle(record)


def shown_uid(uid: str, redactor: Redactor) -> str:
    """A UID as written in a table or a log: whole (a PatientID "123" must not cut a component out of "1.2.123.4"),
    control characters escaped; a "UID" that is not digits and dots is free text, and redacted as text."""
    return escape_controls(uid) if re.fullmatch(r"[0-9.]+", uid) else redactor(uid)
