"""``medtl manifest check``: everything a manifest must satisfy before a run trusts it."""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtl.data import duplicates, io
from medtl.data.manifest import MODALITIES, SPLITS, Manifest, ManifestRow, is_number
from medtl.errors import MedtlError
from medtl.paths import file_sha256, resolve_inside

log = logging.getLogger(__name__)


@dataclass
class ScannedFile:
    sha256: str | None = None
    thumb: np.ndarray | None = None
    error: str | None = None
    misplaced: bool = False  # the error is where the file is (missing, outside the root), not what it holds
    cropped: tuple[np.ndarray, bool] | None = None  # duplicates.cropped_thumbnail (with_cropped scans of 2D images)


def scan(rows: list[ManifestRow], data_root: Path, desc: str = "reading", progress: bool = True,
         with_cropped: bool = False) -> list[ScannedFile]:
    """Open every file once: its path check, content hash and thumbnail (``with_cropped``: also a 2D image's
    thumbnail cut to its head), or the reason it failed."""
    from medtl.progress import bar

    out = []
    for row in bar(rows, desc=desc, unit="file", leave=False, enabled=progress):
        try:
            full = resolve_inside(data_root, row.path, row.path)
            if not io.stored_file(full).exists():
                raise MedtlError("file not found", full)
        except MedtlError as err:
            out.append(ScannedFile(error=err.reason, misplaced=True))
            continue
        try:
            image = read_file(full, volume=row.modality == "mri3d")
            if io.ARRAY_MEMBER in str(full):  # one archive holds many images: hash the image itself
                sha = duplicates.array_sha256(image.array)
            else:
                sha = file_sha256(full) if full.is_file() else None
            cropped = duplicates.cropped_thumbnail(image.array) if with_cropped else None
            out.append(ScannedFile(sha, duplicates.thumbnail(image.array, image.affine), cropped=cropped))
        except MedtlError as err:
            # an error about one file of a series folder names that file beside the folder's row
            inner = err.where is not None and Path(err.where).parent == full
            out.append(ScannedFile(error=f"{Path(err.where).name}: {err.reason}" if inner else err.reason))
    return out


def read_row(row: ManifestRow, data_root: Path, volume: bool) -> tuple[Path, io.Image]:
    """A row's file read as training will read it: inside the data root, decodable, and for a ``volume`` (a 3D
    preset) one the 3D loader takes; a :class:`MedtlError` with the reason otherwise."""
    full = resolve_inside(data_root, row.path, row.path)
    return full, read_file(full, volume)


def read_file(full: Path, volume: bool) -> io.Image:
    """A file read as training will read it (see :func:`read_row`)."""
    image = io.read(full)
    if volume and image.array.ndim == 3:
        io.require_geometry(image, full)  # what the 3D loader refuses, refused here
    return image


def near_copy_groups(scanned: list[ScannedFile], threshold: float = duplicates.NEAR_COPY_CORRELATION) -> np.ndarray:
    """Group id per row (rows that failed to open are their own group); 2D and 3D compared apart;
    thumbnails correlating above ``threshold`` are copies, and so are two 2D images scanned ``with_cropped``
    whose thumbnails cut to the head do, where one of the two lost a margin (a slice re-cropped or padded to
    another frame)."""
    groups = np.arange(len(scanned))
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(scanned):
        if s.thumb is not None:
            by_size[s.thumb.size].append(i)
    pairs = []
    for idx in by_size.values():
        idx = np.asarray(idx)
        p = duplicates.near_copy_pairs(np.stack([scanned[i].thumb for i in idx]), threshold=threshold)
        pairs.extend(zip(idx[p[:, 0]], idx[p[:, 1]]))
    cut = np.asarray([i for i, s in enumerate(scanned) if s.cropped is not None])
    if len(cut) > 1:
        p = duplicates.cut_to_head_pairs([scanned[i].cropped for i in cut], threshold=threshold)
        pairs.extend(zip(cut[p[:, 0]], cut[p[:, 1]]))
    # identical bytes are copies even if the thumbnail could not be compared
    first_of: dict[str, int] = {}
    for i, s in enumerate(scanned):
        if s.sha256:
            pairs.append((first_of.setdefault(s.sha256, i), i))
    if pairs:
        groups = duplicates.connected_groups(len(scanned), pairs)
    return groups


def label_warnings(manifest: Manifest) -> list[str]:
    """Labels that look like typos: names equal but for case or spaces ('F' and 'f'), and classes of one image.
    Each becomes a class of its own, which training then learns (and scores) from one or two images."""
    counts = Counter(r.label for r in manifest if r.label != "unlabelled")
    not_finite = sorted(label for label in counts if _not_finite(label))
    if counts and all(is_number(label) or label in not_finite for label in counts):
        # regression targets (ages): every value is its own "class"; nan/inf is a missing value misspelt
        return [f"{sum(counts[x] for x in not_finite)} row(s) hold the target {' or '.join(map(repr, not_finite))}, "
                "which no model can learn or be scored against: write 'unlabelled' for a missing target"
                ] if not_finite else []
    alike: dict[str, list[str]] = defaultdict(list)
    for label in counts:
        alike[" ".join(label.split()).casefold()].append(label)
    out = [f"labels {' and '.join(repr(x) for x in sorted(names))} differ only in case or spaces "
           f"({', '.join(f'{counts[x]} row' + 's' * (counts[x] != 1) for x in sorted(names))}): each is a class of "
           "its own; a typo?"
           for names in alike.values() if len(names) > 1]
    single = sorted(label for label, n in counts.items() if n == 1)
    if single and len(counts) > 1:
        out.append(f"class(es) with a single image: {', '.join(repr(x) for x in single)}; nothing can learn or "
                   "score a class from one image (a typo, or rows to remove?)")
    return out


def _not_finite(label: str) -> bool:
    """A number that is no value: nan, inf (how pandas and spreadsheets write a missing one)."""
    try:
        return not math.isfinite(float(label))
    except ValueError:
        return False


WRONG_ROOT_FRACTION = 0.5  # more missing than this: the data root is wrong rather than the files


def wrong_root_hint(n_missing: int, n_total: int, data_root: str | Path) -> str | None:
    """One line naming the root and suggesting --data-root when most of a manifest's files are missing."""
    if not n_total or n_missing / n_total <= WRONG_ROOT_FRACTION:
        return None
    return (f"{n_missing} of {n_total} files are missing under the data root {data_root}: is that the folder the "
            "manifest's paths are relative to? Pass --data-root DIR (or set MEDTL_DATA_ROOT)")


def outside_or_missing(manifest: Manifest, data_root: str | Path) -> tuple[list[str], list[str]]:
    """The rows whose path leaves the data root (``..``, absolute, or a link pointing elsewhere) and the rows
    whose file is not there, each as ``line N: ...``; cheap: no file is read."""
    outside, missing = [], []
    for i, r in enumerate(manifest):
        try:
            full = resolve_inside(data_root, r.path, r.path)
        except MedtlError as err:
            outside.append(f"line {i + 2}: {err.reason}")
            continue
        if not io.stored_file(full).exists():  # an array member: its archive
            missing.append(f"line {i + 2}: {r.path}")
    return outside, missing


@dataclass
class CheckReport:
    manifest: Path | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    near_copy_groups_across_splits: int = 0
    identical_across_splits: int = 0
    near_copy_correlation: float = duplicates.NEAR_COPY_CORRELATION
    cut_to_head: bool = False  # 2D images also compared cut to the head
    spanning_rows: list[dict] = field(default_factory=list)  # rows of the near-copy groups that span splits

    @property
    def ok(self) -> bool:
        return not self.errors

    def table(self) -> str:
        labels = sorted({lab for c in self.counts.values() for lab in c})
        splits = [s for s in self.counts if sum(self.counts[s].values())]
        width = max([5] + [len(x) for x in labels])
        lines = [f"{'label':<{width}} " + " ".join(f"{s:>6}" for s in splits) + f" {'total':>6}"]
        for lab in labels:
            vals = [self.counts[s].get(lab, 0) for s in splits]
            lines.append(f"{lab:<{width}} " + " ".join(f"{v:>6}" for v in vals) + f" {sum(vals):>6}")
        totals = [sum(self.counts[s].values()) for s in splits]
        lines.append(f"{'total':<{width}} " + " ".join(f"{v:>6}" for v in totals) + f" {sum(totals):>6}")
        return "\n".join(lines)

    def render(self) -> str:
        parts = [f"manifest: {self.manifest}", self.table()]
        how = ", whole frames and cut to the head" if self.cut_to_head else ", whole frames"
        copies = (f"near-copy groups (correlation > {self.near_copy_correlation:g}{how}) spanning splits: "
                  f"{self.near_copy_groups_across_splits}" if self.near_copy_correlation < 1 else
                  "near-copies not checked (correlation 1)")
        parts.append(f"{copies}; identical files across splits: {self.identical_across_splits}")
        parts += [f"WARNING {w}" for w in self.warnings]
        parts += [f"ERROR {e}" for e in self.errors]
        parts.append("OK" if self.ok else f"FAILED with {len(self.errors)} error(s)")
        return "\n".join(parts)


def check_manifest(
    manifest: Manifest, data_root: str | Path, labels: list[str] | None = None, max_listed: int = 20,
    scanned: list[ScannedFile] | None = None, progress: bool = True, near_copy_correlation: float | None = None,
    cut_to_head: bool | None = None,
) -> CheckReport:
    """Validate paths, files, labels, splits, patient leakage and copies across splits. Near-copies are
    judged at ``near_copy_correlation``, by default the threshold the manifest was built with (its
    ``.meta.json``), else :data:`medtl.data.duplicates.NEAR_COPY_CORRELATION`; ``cut_to_head`` also compares 2D
    images cut to the head (see :func:`near_copy_groups`), by default as the manifest was built, else (no record:
    a manifest written by hand or built before 2026-12-02) on. A build passes the files it ``scanned``."""
    data_root = Path(data_root)
    threshold = float(next(t for t in (near_copy_correlation, manifest.meta.get("near_copy_correlation"),
                                       duplicates.NEAR_COPY_CORRELATION) if t is not None))
    if cut_to_head is None:
        recorded = manifest.meta.get("near_copy_cut_to_head")  # null when the build did not group near-copies
        cut_to_head = True if recorded is None else recorded
    report = CheckReport(manifest.source, counts=manifest.class_counts(), near_copy_correlation=threshold,
                         cut_to_head=bool(cut_to_head))
    label_set = list(labels or manifest.label_names)
    where = manifest.source or "manifest"

    def add(kind: list[str], items: list[str], what: str) -> None:
        if items:
            shown = ", ".join(items[:max_listed]) + (f" (+{len(items) - max_listed} more)" if len(items) > max_listed else "")
            kind.append(f"{what}: {shown}")

    if not data_root.is_dir():
        report.errors.append(f"data root {data_root} is not a folder")
        return report
    bad_label = [f"line {i + 2} ({r.label!r})" for i, r in enumerate(manifest) if r.label not in label_set]
    add(report.errors, bad_label, f"labels outside the declared set {label_set}")
    bad_split = [f"line {i + 2} ({r.split!r})" for i, r in enumerate(manifest) if r.split not in SPLITS]
    add(report.errors, bad_split, f"splits other than {list(SPLITS)}")
    bad_mod = [f"line {i + 2} ({r.modality!r})" for i, r in enumerate(manifest) if r.modality not in MODALITIES]
    add(report.errors, bad_mod, f"modalities other than {list(MODALITIES)}")
    if not len(manifest):
        report.errors.append("the manifest has no rows")
    report.warnings += label_warnings(manifest)
    # one preset reads a manifest for training: a stray modality fails it later with "mixes modalities"
    modality_counts = Counter(r.modality for r in manifest if r.modality in MODALITIES)
    if len(modality_counts) > 1:
        usual = modality_counts.most_common(1)[0][0]
        odd = [f"line {i + 2} ({r.modality!r})" for i, r in enumerate(manifest)
               if r.modality in MODALITIES and r.modality != usual]
        add(report.warnings, odd, f"mixed modalities: training reads a manifest with one preset and refuses this "
                                  f"one (most rows are {usual!r}; predict uses the model's own)")
    first_line: dict[str, int] = {}
    repeated = [f"line {i + 2} repeats line {first_line[r.path]} ({r.path})" for i, r in enumerate(manifest)
                if first_line.setdefault(r.path, i + 2) != i + 2]
    add(report.errors, repeated, f"{len(repeated)} repeated path(s) (an image counted twice)")

    splits_of_patient: dict[str, set[str]] = defaultdict(set)
    for r in manifest:
        splits_of_patient[r.patient_id].add(r.split)
    leaked = sorted(p for p, s in splits_of_patient.items() if len(s) > 1)
    add(report.errors, leaked, f"patient leakage: {len(leaked)} patient(s) in more than one split")
    # the near-copy groups a build recorded must still sit in one split each (a hand edit can break that)
    splits_of_named: dict[str, set[str]] = defaultdict(set)
    for r in manifest:
        if r.extras.get("near_copy_group"):
            splits_of_named[r.extras["near_copy_group"]].add(r.split)
    split_named = sorted(g for g, s in splits_of_named.items() if len(s) > 1)
    add(report.errors, split_named, f"recorded near-copy group(s) split across splits: {len(split_named)}")

    # a wrong root makes every file "missing": say that in one line instead of listing them (cheap: no reads)
    hint = wrong_root_hint(len(outside_or_missing(manifest, data_root)[1]), len(manifest), data_root)
    if hint:
        report.errors.append(hint)
        return report
    if scanned is None or len(scanned) != len(manifest):  # a build passes the scan it already made
        scanned = scan(manifest.rows, data_root, desc=f"checking {Path(str(where)).name}", progress=progress,
                       with_cropped=bool(cut_to_head))
    unreadable = [f"line {i + 2} {r.path} ({s.error})" for i, (r, s) in enumerate(zip(manifest, scanned)) if s.error]
    add(report.errors, unreadable, f"{len(unreadable)} file(s) missing, unreadable or outside the data root")

    by_sha: dict[str, list[ManifestRow]] = defaultdict(list)
    for r, s in zip(manifest, scanned):
        if s.sha256:
            by_sha[s.sha256].append(r)
    identical = [" = ".join(f"{r.path} ({r.split})" for r in rows) for rows in by_sha.values()
                 if len({r.split for r in rows}) > 1]
    report.identical_across_splits = len(identical)
    add(report.errors, identical, f"{len(identical)} identical file(s) appear in more than one split")

    groups = near_copy_groups(scanned, threshold)
    splits_of_group: dict[int, set[str]] = defaultdict(set)
    for g, r in zip(groups, manifest):
        splits_of_group[int(g)].add(r.split)
    spanning = [g for g, s in splits_of_group.items() if len(s) > 1]
    report.near_copy_groups_across_splits = len(spanning)
    if spanning:
        rows_in = sum(1 for g in groups if int(g) in set(spanning))
        members = [" ~ ".join(f"{r.path} ({r.split})" for gg, r in zip(groups, manifest) if int(gg) == g)
                   for g in spanning]
        number = {g: k + 1 for k, g in enumerate(spanning)}
        report.spanning_rows = [{"path": r.path, "split": r.split, "label": r.label, "group": number[int(g)],
                                 "splits_of_group": "+".join(sorted(splits_of_group[int(g)]))}
                                for g, r in zip(groups, manifest) if int(g) in number]
        add(report.warnings, members,
            f"{len(spanning)} near-copy group(s) ({rows_in} images) span more than one split: test metrics may "
            "measure memorisation; rebuild the manifest (medtl manifest build groups them at this threshold)")
    return report
