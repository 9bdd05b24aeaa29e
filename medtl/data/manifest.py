"""Manifests: the CSV that names every image a run may read.

Schema (one row per image or volume; extra columns are kept and written back unchanged):

=============  ==========================================================================
column         meaning
=============  ==========================================================================
path           file (or DICOM series folder) relative to the data root; never absolute,
               never escaping the root with ``..``
label          class name (classification) or number (regression); ``unlabelled`` allowed
               only when the label set declares it
patient_id     patient identifier; images of one patient never straddle splits. When the
               source has none, each image is its own patient: ``patient_id`` is then the
               image's path and the column ``patient_id_kind`` says ``per_image``
domain         the site/collection the image comes from (e.g. ``cxr_nih``)
split          ``train``, ``val`` or ``test``
modality       ``cxr``, ``mri2d`` or ``mri3d`` (chooses the preset transform chain)
=============  ==========================================================================

Next to ``name.csv`` a ``name.meta.json`` records the declared label set, the seed and fractions of
the split, and how many near-duplicate groups the split kept together (per split). A built manifest
names those groups in the extra column ``near_copy_group`` (empty for an image with no copy).

The meta file also records the manifest's own data root (``data_root``, relative to the manifest's
folder, and ``data_root_absolute``), so manifests that live under different roots can be used together
without one shared ``--data-root``: :func:`data_root_for` picks an explicit root first, then the
recorded one, then the default (``$MEDTL_DATA_ROOT`` or ``../shared/data``). :func:`require_files`
checks that every file exists before heavy work starts, naming the manifest and the root it looked in.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medtl.errors import MedtlError
from medtl.paths import read_json

ROOT_KEY = "data_root"  # in NAME.meta.json, relative to the manifest's folder
ROOT_ABSOLUTE_KEY = "data_root_absolute"
REQUIRED_COLUMNS = ("path", "label", "patient_id", "domain", "split", "modality")
SPLITS = ("train", "val", "test")
MODALITIES = ("cxr", "mri2d", "mri3d")
# An extra column `manifest build` writes: the near-copies of one image (one scan re-encoded or re-cut) share
# a name; every split and every resampling keeps them together.
NEAR_COPY_GROUP = "near_copy_group"


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str
    patient_id: str
    domain: str
    split: str
    modality: str
    extras: dict = field(default_factory=dict, compare=False, hash=False)
    line: int | None = field(default=None, compare=False, hash=False, repr=False)  # in the CSV it was read from

    def where(self, manifest) -> str:
        """``manifest.csv:<line>`` for errors about this row (the manifest alone for a row not read from a file)."""
        return f"{manifest}:{self.line}" if self.line else str(manifest)


@dataclass
class Manifest:
    rows: list[ManifestRow]
    label_names: list[str]
    meta: dict = field(default_factory=dict)
    source: Path | None = None
    scanned: list | None = field(default=None, repr=False, compare=False)  # file scan of a fresh build

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        # a summary: the dataclass's repr lists every row (hundreds of thousands of characters in a notebook)
        splits = ", ".join(f"{s} {n}" for s, n in sorted(Counter(r.split for r in self.rows).items()))
        mods = ", ".join(sorted({r.modality for r in self.rows}))
        return (f"Manifest({self.name}: {len(self.rows)} rows ({splits or 'none'}), labels {self.label_names}, "
                f"modality {mods or 'none'})")

    def __iter__(self):
        return iter(self.rows)

    @property
    def extra_columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row.extras))
        return list(seen)

    def select(self, split: str | None = None, domain: str | None = None) -> "Manifest":
        rows = [r for r in self.rows if (split is None or r.split == split) and (domain is None or r.domain == domain)]
        return Manifest(rows, list(self.label_names), dict(self.meta), self.source)

    @property
    def modality(self) -> str:
        """The one modality of every row (it chooses the preset); an error when the rows mix modalities."""
        mods = sorted({r.modality for r in self.rows})
        if not mods:
            raise MedtlError("manifest has no rows: no modality to choose a preset from", self.source)
        if len(mods) != 1:
            raise MedtlError(f"manifest mixes modalities {mods}; choose a preset", self.source)
        return mods[0]

    @property
    def name(self) -> str:
        """The file name for messages (``mri2d_yesno.csv``), or ``manifest`` for one built in memory."""
        return Path(self.source).name if self.source else "manifest"

    @property
    def recorded_root(self) -> Path | None:
        """The data root recorded in ``NAME.meta.json``, when that folder exists on this machine."""
        rel, absolute = self.meta.get(ROOT_KEY), self.meta.get(ROOT_ABSOLUTE_KEY)
        candidates = []
        if rel:
            p = Path(rel)
            # relative to the manifest's folder, so a project moved with its data keeps working
            candidates.append(p if p.is_absolute() or self.source is None else Path(self.source).parent / p)
        if absolute:
            candidates.append(Path(absolute))
        for c in candidates:
            if c.is_dir():
                return c.resolve()
        return None

    def class_counts(self) -> dict[str, Counter]:
        """Per split, the number of rows of each label."""
        counts: dict[str, Counter] = {s: Counter() for s in SPLITS}
        for r in self.rows:
            counts.setdefault(r.split, Counter())[r.label] += 1
        return counts

    def content_hash(self) -> str:
        """Hash of the manifest's rows (not the images): identifies the data a model was trained on."""
        h = hashlib.sha256()
        for r in self.rows:
            h.update("\x1f".join((r.path, r.label, r.patient_id, r.domain, r.split, r.modality)).encode())
            h.update(b"\n")
        return h.hexdigest()[:16]

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if not path.exists():
            raise MedtlError("manifest not found", path)
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark, which is not part of "path"
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise MedtlError(f"manifest lacks required column(s) {missing}; has {reader.fieldnames}", path)
                rows = []
                for i, raw in enumerate(reader, start=2):  # line 1 is the header
                    values = {k: (raw[k] or "").strip() for k in REQUIRED_COLUMNS}
                    if not values["path"]:
                        raise MedtlError("empty path", f"{path}:{i}")
                    extras = {k: v for k, v in raw.items() if k not in REQUIRED_COLUMNS and k is not None}
                    rows.append(ManifestRow(**values, extras=extras, line=reader.line_num))
        except csv.Error as err:  # a field over csv's limit (128 KiB), a NUL byte, ...: no manifest medtl reads
            raise MedtlError(f"not a readable CSV: {err}", f"{path}:{reader.line_num}") from None
        except UnicodeDecodeError:
            data = path.read_bytes()
            try:
                data.decode("utf-8-sig")
                line = "?"
            except UnicodeDecodeError as err:  # the whole file, so the position is the file's
                line = data[: err.start].count(b"\n") + 1
            raise MedtlError("not UTF-8 text (saved as Latin-1 or a Windows code page?); save the CSV as UTF-8",
                             f"{path}:{line}") from None
        meta_path = meta_path_for(path)
        meta = read_json(meta_path, "the manifest's metadata") if meta_path.exists() else {}
        if not isinstance(meta, dict):
            raise MedtlError(f"the manifest's metadata must be a JSON object, not {type(meta).__name__}", meta_path)
        labels = meta.get("label_names") or sorted({r.label for r in rows})
        return cls(rows, list(labels), meta, path)

    def save(self, path: str | Path, data_root: str | Path | None = None) -> Path:
        """Write ``path`` and its ``.meta.json``; ``data_root`` (default: the root already recorded) is
        recorded there, so later commands find the images without being told the root."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        root = Path(data_root) if data_root is not None else self.recorded_root
        columns = list(REQUIRED_COLUMNS) + self.extra_columns
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for r in self.rows:
                writer.writerow(
                    {
                        "path": r.path,
                        "label": r.label,
                        "patient_id": r.patient_id,
                        "domain": r.domain,
                        "split": r.split,
                        "modality": r.modality,
                        **r.extras,
                    }
                )
        meta = {**self.meta, "label_names": self.label_names}
        if root is not None:
            root = root.resolve()
            meta[ROOT_KEY] = Path(os.path.relpath(root, path.parent.resolve())).as_posix()
            meta[ROOT_ABSOLUTE_KEY] = str(root)
            self.meta.update({ROOT_KEY: meta[ROOT_KEY], ROOT_ABSOLUTE_KEY: meta[ROOT_ABSOLUTE_KEY]})
        meta_path_for(path).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self.source = path
        return path

    def sample(self, per_split: int, seed: int = 0, label_blind: tuple[str, ...] = ()) -> "Manifest":
        """About ``per_split`` rows of each split, drawn label-stratified and reproducibly from ``seed``
        (what a pipeline's ``max_per_split`` does; handy for a quick look in a notebook). Each label's share
        is rounded up (every label keeps at least one row), so a split may get up to one row more per label;
        a regression manifest gets exactly ``per_split``. The splits in ``label_blind`` are drawn without
        looking at the labels, exactly ``per_split`` rows (unsupervised adaptation's unlabelled target images:
        labels it may not use would choose them)."""
        rng = np.random.default_rng(seed)
        keep: list[ManifestRow] = []
        for split in ("train", "val", "test"):
            rows = [r for r in self.rows if r.split == split]
            # a regression manifest (no label names) has a value per row, not classes to stratify by
            if len(rows) <= per_split:
                keep += rows
            elif self.label_names and split not in label_blind:
                keep += stratified_sample(rows, per_split / len(rows), rng)
            else:
                keep += stratified_sample(rows, per_split / len(rows), rng, count=per_split, by_label=False)
        return Manifest(keep, list(self.label_names), dict(self.meta), self.source)

    def with_splits(self, splits: list[str]) -> "Manifest":
        rows = [replace(r, split=s) for r, s in zip(self.rows, splits, strict=True)]
        return Manifest(rows, list(self.label_names), dict(self.meta), self.source)


def stratified_sample(rows: list[ManifestRow], fraction: float, rng: np.random.Generator, *,
                      count: int | None = None, by_label: bool = True) -> list[ManifestRow]:
    """``fraction`` of the rows of every label (at least one each), order kept.

    ``count``: exactly that many rows instead, shared out over the labels in proportion to their sizes
    (largest remainders, at least one each). ``by_label=False`` draws uniformly from all rows: a
    regression target has a value per row, not classes to stratify by."""
    if not by_label:
        # 1e-9: a fraction made as count / rows must not round up past count through float error
        k = count if count is not None else (math.ceil(fraction * len(rows) - 1e-9) if fraction < 1 else len(rows))
        chosen = set(rng.choice(len(rows), size=min(k, len(rows)), replace=False).tolist())
        return [r for i, r in enumerate(rows) if i in chosen]
    groups = [[i for i, r in enumerate(rows) if r.label == label] for label in sorted({r.label for r in rows})]
    if count is None:
        sizes = [max(1, math.ceil(fraction * len(g))) if fraction < 1 else len(g) for g in groups]
    else:
        sizes = _share(count, [len(g) for g in groups])
    chosen: set[int] = set()
    for idx, k in zip(groups, sizes):
        chosen.update(rng.choice(idx, size=min(k, len(idx)), replace=False).tolist())
    return [r for i, r in enumerate(rows) if i in chosen]


def _share(count: int, sizes: list[int]) -> list[int]:
    """``count`` split over groups of ``sizes`` in proportion: floors, then the largest remainders get
    one more; every group at least one, none more than its size."""
    total = sum(sizes)
    if not len(sizes) <= count <= total:
        raise MedtlError(f"cannot draw {count} labelled rows: need between {len(sizes)} (one per label) and "
                         f"{total} (all rows)", "label_counts")
    quota = [count * n / total for n in sizes]
    share = [min(n, max(1, math.floor(q))) for n, q in zip(sizes, quota)]
    while sum(share) != count:
        room = [i for i, n in enumerate(sizes) if (share[i] < n if sum(share) < count else share[i] > 1)]
        if sum(share) < count:
            i = max(room, key=lambda j: quota[j] - share[j])
            share[i] += 1
        else:
            i = min(room, key=lambda j: quota[j] - share[j])
            share[i] -= 1
    return share


def is_number(label: str) -> bool:
    """Whether a label is a regression target's value (a finite number) rather than a class name; "nan" and
    "inf" are not values a model can learn or be scored against (a missing target is ``unlabelled``)."""
    try:
        return math.isfinite(float(label))
    except ValueError:
        return False


def meta_path_for(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.stem + ".meta.json")


def data_root_for(manifest: Manifest, given: str | Path | None = None) -> Path:
    """The root a manifest's paths are read from: ``given`` (``--data-root``), else the root its
    ``.meta.json`` records, else the default (``$MEDTL_DATA_ROOT`` or ``../shared/data``)."""
    from medtl.paths import default_data_root

    if given is not None:
        return Path(given)
    return manifest.recorded_root or default_data_root()


def data_root_of_file(manifest_path: str | Path, given: str | Path | None = None) -> Path:
    """:func:`data_root_for` of a manifest file without reading its rows (``medtl predict`` and ``medtl
    explain`` read only its paths): ``given``, else the root its ``.meta.json`` records, else the default."""
    if given is not None:
        return Path(given)
    from medtl.paths import default_data_root

    meta = meta_path_for(Path(manifest_path))
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
    except (OSError, ValueError):
        recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    return Manifest([], [], recorded, Path(manifest_path)).recorded_root or default_data_root()


def require_files(manifest: Manifest, data_root: str | Path, show: int = 3) -> None:
    """Refuse a manifest whose files are not all under ``data_root``, before any heavy work starts.

    The error names the manifest and the root, e.g. ``mri2d_yesno.csv (root /x): no_tumor/10_no.jpg:
    file not found``, and says how many more are missing.
    """
    from medtl.paths import resolve_inside

    root = Path(data_root)
    where = f"{manifest.name} (root {root})"
    if not root.is_dir():
        raise MedtlError("the data root is not a folder: give the manifest's root with --data-root", where)
    missing = []
    for r in manifest:
        full = resolve_inside(root, r.path, r.where(where))
        if not Path(str(full).partition("::")[0]).exists():  # an archive member: the archive must exist
            missing.append(r.path)
    if missing:
        more = (f" (and {len(missing) - 1} more of {len(manifest)} rows, e.g. {', '.join(missing[1:show + 1])}: "
                "is this the manifest's data root?)" if len(missing) > 1 else "")
        raise MedtlError(f"{missing[0]}: file not found{more}", where)
