"""Where data lives: one configurable data root, paths that never escape it, and a file's content hash."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

from medtl.errors import MedtlError

DATA_ROOT_ENV = "MEDTL_DATA_ROOT"


def default_data_root() -> Path:
    """``$MEDTL_DATA_ROOT`` when set (and not empty), else ``../shared/data`` beside the working directory
    or, when that does not exist (a notebook runs in ``notebooks/``), beside the medtl checkout."""
    if os.environ.get(DATA_ROOT_ENV, "").strip():  # an empty value (MEDTL_DATA_ROOT=) is not "the current folder"
        return Path(os.environ[DATA_ROOT_ENV].strip()).expanduser()
    beside_cwd = Path("../shared/data")
    beside_checkout = Path(__file__).resolve().parents[2] / "shared" / "data"
    return beside_checkout if not beside_cwd.is_dir() and beside_checkout.is_dir() else beside_cwd


def resolve_inside(root: str | Path, relative: str, where: str | None = None) -> Path:
    """Join a manifest path onto the data root, refusing absolute paths and ``..`` escapes.

    Symlinks are resolved too, so a link inside the root that points outside it is refused.
    """
    rel = str(relative).replace("\\", "/")
    if "\x00" in rel:  # no file system takes one: the OS calls would raise a bare ValueError
        raise MedtlError(f"path {relative!r} contains a NUL character", where)
    if not rel or PurePosixPath(rel).is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        raise MedtlError(f"path {relative!r} must be relative to the data root", where)
    if ".." in PurePosixPath(rel).parts:
        # refused even where it would end inside the root: a manifest names each file by its one path below it
        raise MedtlError(f"path {relative!r} contains '..': manifest paths lead down from the data root, never up",
                         where)
    rel, sep, member = rel.partition("::")  # an array archive member: check the archive's path
    root_resolved = Path(root).resolve()
    full = (root_resolved / rel).resolve()
    if root_resolved != full and root_resolved not in full.parents:
        # a link (or a linked folder on the way) points elsewhere: say where, so the reader sees it is a link
        raise MedtlError(f"path {relative!r} resolves outside the data root {root_resolved} (a link to {full})",
                         where)
    return Path(f"{full}{sep}{member}") if sep else full


def is_inside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` (links resolved) lies in ``root`` or is ``root``."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


REDACTED = "[redacted]"  # what medtl predict writes in place of an identifier

# Where medtl predict keeps an output folder's path salt (0600), beside its results.csv.
PATH_SALT_FILE = ".path-salt"


IMAGE_SUFFIXES = (".nii.gz", ".dcm", ".nii", ".png", ".jpg", ".jpeg", ".dicom", ".ima")


def image_suffix(name: str) -> str:
    """The image suffix a file name ends with, in lower case (``IM1.DCM`` -> ``.dcm``), or ""."""
    lower = name.lower()
    return next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), "")


def salted_path(rel: str, salt: bytes) -> str:
    """``rel`` with every component replaced by ``h-<salted hash>`` (the suffix kept): folder and
    file names often hold patient names, and an unsalted hash of a name is guessed by trying names."""
    parts = [p for p in rel.replace("\\", "/").split("/") if p]
    out = []
    for i, part in enumerate(parts):
        suffix = image_suffix(part) if i == len(parts) - 1 else ""
        out.append("h-" + hashlib.blake2b(part.encode("utf-8", "surrogateescape"), key=salt[:64],
                                          digest_size=8).hexdigest() + suffix)
    return "/".join(out)


def path_tag(key: str, salt: bytes) -> str:
    """The salted hash a scrubbed case id carries after its ``#`` (``[redacted]_[redacted]/study1#0a1b2c3d``)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), key=salt[:64], digest_size=4).hexdigest()


def read_path_salt(folder: Path) -> bytes | None:
    """The path salt of a medtl predict output folder, or None (none there, or unreadable)."""
    try:
        return bytes.fromhex((Path(folder) / PATH_SALT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it: a kill mid-write leaves the previous
    file whole (run keys, run records, logs, ledgers)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path, what: str):
    """The JSON in ``path``, or a :class:`MedtlError` naming the file and what is wrong with it (``what`` says
    which file it is to the reader: "manifest metadata", "bundle metadata", ...)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedtlError(f"{what} file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedtlError(f"{what} is not valid JSON: {err}", path) from None
    except RecursionError:  # nested deeper than the parser goes: no file medtl writes looks like that
        raise MedtlError(f"{what} is nested too deeply to read", path) from None
