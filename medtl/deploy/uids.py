"""DICOM UIDs: validation, safe file names and reproducible UIDs for what medtl writes.

Header values come from outside (a PACS, a CD, a vendor): a SeriesInstanceUID may hold ``../``,
slashes or control characters. Nothing read from a header becomes part of a path unless it matches
the UID grammar of DICOM PS3.5 section 9.1; anything else is replaced by a hash of itself.
"""

from __future__ import annotations

import hashlib
import re
import uuid

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "medtl:deploy")
# PS3.5 9.1: components of digits separated by '.', no leading zero (except '0' itself), <= 64 chars.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


def digest(text: str, n: int = 32) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def safe_name(uid: object) -> str:
    """A file-name component for ``uid``: the UID itself when valid, else ``h-<sha256 prefix>``."""
    if is_valid_uid(uid):
        return str(uid)
    return "h-" + digest(str(uid))


def derived_uid(*parts: str) -> str:
    """A UID that depends only on ``parts``: ``2.25.`` + a name-based (version 5) UUID as an integer.

    Why: the SR for a series, written again by a resumed run, gets the same SOP Instance UID, so a
    PACS stores it once instead of collecting duplicates. (pydicom's ``generate_uid(prefix=None)``
    ignores its entropy sources and is random.)
    """
    return "2.25." + str(uuid.uuid5(_NAMESPACE, "\x1f".join(str(p) for p in parts)).int)
