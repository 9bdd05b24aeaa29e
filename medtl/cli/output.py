"""Where a command writes its result file: one rule for ``--out`` across the commands."""

from __future__ import annotations

import sys
from pathlib import Path

from medtl.errors import MedtlError


def output_file(out: Path | None, legacy: Path | None, name: str) -> Path | None:
    """The file a command will write: ``out/name``, as ``--out`` names a folder for every command. A file
    path as ``--out`` (with ``name``'s suffix), or an old ``--json FILE``, still works, with a deprecation
    message. Called before the command's work, so a bad --out is refused first; nothing is created here
    (the caller makes the folder when it writes)."""
    if out is not None and legacy is not None:
        raise MedtlError("give --out DIR only (--json is its deprecated spelling)", "--json")
    if legacy is not None or (out is not None and out.suffix.lower() == Path(name).suffix):
        path = legacy or out
        print(f"deprecated: {'--json' if legacy else '--out'} {path} names a file; --out names a folder and "
              f"writes {name} into it (use --out {path.parent})", file=sys.stderr)
        return path
    if out is None:
        return None
    if out.exists() and not out.is_dir():
        raise MedtlError("--out must be a folder", out)
    return out / name
