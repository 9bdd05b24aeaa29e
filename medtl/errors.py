"""The one exception type medtl raises for bad input.

Every error names what was bad (a file, a manifest row, a config key) and why, so a user can fix
the input without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedtlError(Exception):
    """Bad input: ``where`` names the file, row or key, ``reason`` says what is wrong with it."""

    def __init__(self, reason: str, where: str | Path | None = None):
        self.reason = reason
        self.where = None if where is None else str(where)
        super().__init__(f"{self.where}: {reason}" if self.where else reason)
