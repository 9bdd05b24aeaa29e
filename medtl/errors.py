"""The one exception type medtl raises for bad input.

Every error names what was bad (a file, a manifest row, a config key) and why, so a user can fix
the input without reading a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class MedtlError(Exception):
    """Bad input: ``where`` names the file, row or key, ``reason`` says what is wrong with it."""

    def __init__(self, reason: str, where: str | Path | None = None):
        self.reason = reason
        self.where = None if where is None else str(where)
        super().__init__(f"{self.where}: {reason}" if self.where else reason)


class TemporaryFailure(MedtlError):
    """A service or resource that may be back later (a PACS outage, an output folder another run is writing):
    the command exits with :data:`TEMPFAIL_EXIT`, so a scheduler retries it and does not retry a typo."""


TEMPFAIL_EXIT = 75  # EX_TEMPFAIL of sysexits.h: "try again later"


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known name a misspelt ``word`` most likely meant (for "did you mean"), or None."""
    match = difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown(what: str, name: str, known: Iterable[str], where: str | Path | None, *, of: str = "",
            listed: str = "known") -> MedtlError:
    """The error for a name that is not one of ``known``: "unknown encoder 'resnet81'; did you mean
    'resnet18'? (known: ...)"; ``of`` follows the name (" for full"), ``listed`` names the list ("columns")."""
    known = list(known)
    guess = closest(name, known)
    return MedtlError(f"unknown {what} {name!r}{of}" + (f"; did you mean {guess!r}?" if guess else "")
                      + f" ({listed}: {', '.join(known)})", where)
