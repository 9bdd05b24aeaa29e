"""``medtl manifest build``: a manifest from a folder layout or a raw source manifest, with a split.

The split is patient-level and label-stratified: patients (and, by default, groups of near-copy
images) are the units that are shuffled with the seed and dealt into train/val/test per label, so
no patient and no near-copy group straddles two splits.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from medtl.data import io
from medtl.data.check import near_copy_groups, scan
from medtl.data.duplicates import NEAR_COPY_CORRELATION, cut_to_head_pairs, near_copy_pairs
from medtl.data.manifest import Manifest, ManifestRow
from medtl.errors import MedtlError
from medtl.paths import is_inside, resolve_inside

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
SOURCE_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
UNLABELLED = "unlabelled"


def guess_modality(path: str, domain: str) -> str:
    for prefix in ("cxr", "mri2d", "mri3d"):
        if domain.lower().startswith(prefix):
            return prefix
    kind = io.kind_of(path)
    if kind in ("nifti", "dicom_series"):
        return "mri3d"
    return "mri2d" if kind == "image" else "dicom"  # DICOM: decided from its header


def dicom_modality(path: Path) -> str:
    """``cxr`` for radiographs (CR/DX), ``mri3d`` for a multi-frame MR whose frames form one volume (placed
    on one grid by its functional groups), ``mri2d`` for single MR frames and other multi-frame files."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:
        raise MedtlError(f"unreadable DICOM header: {err}", path) from None
    modality = str(ds.get("Modality", ""))
    if modality in io.RADIOGRAPH_MODALITIES:
        return "cxr"
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        return "mri2d"
    try:
        io.frame_grid(ds, path)
    except MedtlError:  # a cine, echoes at one position, or no geometry: frames, not a volume
        return "mri2d"
    return "mri3d"


def is_input_file(path: Path) -> bool:
    """Whether a file in an image folder is an input: an image, NIfTI, or DICOM. A file that is none of
    these by its name (notes.txt, Thumbs.db) is one only if it reads as DICOM; a DICOM-like name
    (``.dcm``, none ...) always is, so a broken DICOM is reported, not skipped (as batch inference does)."""
    if path.name.startswith(".") or not path.is_file():
        return False
    if io.kind_of(path) != "dicom" or path.suffix.lower() in io.DICOM_LIKE:
        return True
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        pydicom.dcmread(path, stop_before_pixels=True)
        return True
    except (InvalidDicomError, OSError):
        return False
    except Exception:  # noqa: BLE001 (a garbled header: DICOM, but broken; reading it reports why)
        return True


def rows_from_folder(folder: Path, data_root: Path, domain: str | None, modality: str | None) -> list[ManifestRow]:
    """``<folder>/<label>/<file>``: one row per input file (:func:`is_input_file`), the label from its
    parent folder. A class folder with no input is an error: training would silently lose the class."""
    rel_folder = _relative_to_root(folder, data_root)
    domain = domain or folder.name
    rows, empty, ignored = [], [], []
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = 0
        for f in sorted(label_dir.rglob("*")):
            if any(part.startswith(".") for part in f.relative_to(label_dir).parts[:-1]):
                continue  # inside a hidden folder (.ipynb_checkpoints, .git): not the user's images
            if not is_input_file(f):
                if f.is_file() and not f.name.startswith("."):
                    ignored.append(f.relative_to(folder).as_posix())
                continue
            rel = (rel_folder / f.relative_to(folder)).as_posix()
            rows.append(ManifestRow(rel, label_dir.name, rel, domain, "", modality or guess_modality(rel, domain),
                                    {"patient_id_kind": "per_image"}))
            found += 1
        if not found:
            empty.append(label_dir.name + "/")
    if ignored:
        log.warning("%s: ignored %d file(s) that are neither images nor DICOM: %s%s", folder, len(ignored),
                    ", ".join(ignored[:5]), " ..." if len(ignored) > 5 else "")
    # files beside the class folders have no class: an image there is not trained on, and should be said
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if loose:
        log.warning("%s: ignored %d file(s) beside the class folders (only <label>/<file> images have a label): "
                    "%s%s", folder, len(loose), ", ".join(loose[:5]), " ..." if len(loose) > 5 else "")
    if not rows:
        raise MedtlError("no image files found in the <folder>/<label>/<file> layout", folder)
    if empty:
        raise MedtlError(f"class folder(s) with no image files: {', '.join(empty)}; add images or remove the "
                         "folder (a class without images cannot be learned)", folder)
    return rows


def rows_from_raw_manifest(
    raw: Path, data_root: Path, domain: str | None, modality: str | None, labelled: bool = True
) -> list[ManifestRow]:
    """A source's own manifest.csv (path relative to its folder, label, optional patient_id)."""
    folder = raw.parent
    rel_folder = _relative_to_root(folder, data_root, f"the folder of {raw.name} (its paths are relative to it),")
    domain = domain or folder.name
    with open(raw, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise MedtlError(f"raw manifest lacks a 'path' column; has {reader.fieldnames}", raw)
        if labelled and "label" not in reader.fieldnames:
            raise MedtlError("raw manifest lacks a 'label' column (use --unlabelled for unlabelled data)", raw)
        raw_rows = list(reader)
    rows = []
    for i, r in enumerate(raw_rows, start=2):
        rel = (rel_folder / r["path"]).as_posix()
        resolve_inside(data_root, rel, f"{raw}:{i}")
        pid = (r.get("patient_id") or "").strip()
        extras = {k: v for k, v in r.items() if k not in ("path", "label", "patient_id", "split", "domain", "modality")}
        if "split" in r:
            extras["source_split"] = r["split"]  # the source's own split is kept but not used
        extras["patient_id_kind"] = "given" if pid else "per_image"
        label = (r["label"] or "").strip() if labelled else UNLABELLED
        rows.append(ManifestRow(rel, label, pid or rel, domain, "", modality or guess_modality(rel, domain), extras))
    return rows


def rows_from_npz(
    archive: Path, data_root: Path, domain: str | None, modality: str | None, label_names: list[str] | None
) -> list[ManifestRow]:
    """A MedMNIST-style archive (``<split>_images`` + ``<split>_labels``): one row per image.

    The archive's own train/val/test split is kept (``source_split``); the images carry no patient ids.
    """
    rel = _relative_to_root(archive, data_root).as_posix()
    domain = domain or archive.parent.name
    rows = []
    with np.load(archive, allow_pickle=False) as npz:
        splits = [n[: -len("_images")] for n in npz.files if n.endswith("_images")]
        if not splits:
            raise MedtlError("archive has no '<split>_images' arrays", archive)
        for split in splits:
            if f"{split}_labels" not in npz.files:
                raise MedtlError(f"archive has {split}_images but no {split}_labels", archive)
            labels = np.asarray(npz[f"{split}_labels"]).reshape(len(npz[f"{split}_labels"]), -1)[:, 0]
            for i, value in enumerate(labels):
                value = int(value)
                if label_names and value >= len(label_names):
                    raise MedtlError(f"label {value} has no name in {label_names}", f"{archive}::{split}_labels/{i}")
                label = label_names[value] if label_names else str(value)
                path = f"{rel}::{split}_images/{i}"
                rows.append(ManifestRow(path, label, path, domain, "", modality or guess_modality("x.png", domain),
                                        {"patient_id_kind": "per_image", "source_split": split}))
    return rows


def collapse_dicom_series(rows: list[ManifestRow], data_root: Path) -> list[ManifestRow]:
    """Rows that are the slices of one single-frame DICOM series in one folder become one row.

    A 3D model reads the series as a volume, so the folder is the unit of a manifest row.
    """
    import pydicom

    by_folder: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if io.kind_of(r.path) == "dicom":
            by_folder[str(Path(r.path).parent.as_posix())].append(i)
    drop: set[int] = set()
    added = []
    for folder, idx in by_folder.items():
        if len(idx) < 2:
            continue
        uids, positions = set(), set()
        for i in idx:
            try:
                ds = pydicom.dcmread(data_root / rows[i].path, stop_before_pixels=True)
            except Exception:
                uids.add(None)
                break
            uids.add((str(ds.get("SeriesInstanceUID")), int(ds.get("NumberOfFrames", 1) or 1)))
            positions.add(tuple(float(v) for v in ds.get("ImagePositionPatient", [])) or None)
        (only,) = uids if len(uids) == 1 else (None,)
        n_files_in_folder = sum(1 for f in (data_root / folder).iterdir() if f.is_file())
        # slices of a volume: one single-frame series, each file at its own position
        stacked = None not in positions and len(positions) == len(idx)
        if only and only[1] == 1 and stacked and n_files_in_folder == len(idx):
            first = rows[idx[0]]
            added.append(
                ManifestRow(folder, first.label, first.patient_id if first.extras.get("patient_id_kind") == "given" else folder,
                            first.domain, "", "mri3d", {**first.extras, "n_instances": str(len(idx)),
                                                        "patient_id_kind": first.extras.get("patient_id_kind", "per_image")})
            )
            drop.update(idx)
    return [r for i, r in enumerate(rows) if i not in drop] + added


def assign_splits(
    rows: list[ManifestRow], seed: int, fractions=DEFAULT_FRACTIONS, groups: np.ndarray | None = None
) -> list[str]:
    """Patient-level, label-stratified split; ``groups`` (near-copy ids) are joined to patients."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise MedtlError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}", "fractions")
    n = len(rows)
    # units: connected components of "same patient" and "same near-copy group"
    from medtl.data.duplicates import connected_groups

    first_of_patient: dict[str, int] = {}
    pairs = [(first_of_patient.setdefault(r.patient_id, i), i) for i, r in enumerate(rows)]
    if groups is not None:
        first_of_group: dict[int, int] = {}
        pairs += [(first_of_group.setdefault(int(g), i), i) for i, g in enumerate(groups)]
    unit = connected_groups(n, pairs)
    members: dict[int, list[int]] = defaultdict(list)
    for i, u in enumerate(unit):
        members[int(u)].append(i)
    # stratum of a unit: its majority label
    strata: dict[str, list[int]] = defaultdict(list)
    for u, idx in members.items():
        label = Counter(rows[i].label for i in idx).most_common(1)[0][0]
        strata[label].append(u)
    rng = np.random.default_rng(seed)
    split = [""] * n
    names = ("train", "val", "test")
    for label in sorted(strata):
        units = sorted(strata[label])
        rng.shuffle(units)
        total = sum(len(members[u]) for u in units)
        bounds = np.cumsum(fractions) * total
        done = 0
        for u in units:
            # deal the unit to the split whose share its middle falls in
            middle = done + len(members[u]) / 2
            s = names[int(np.searchsorted(bounds, middle, side="right").clip(0, 2))]
            for i in members[u]:
                split[i] = s
            done += len(members[u])
    return split


# Looser than the 0.97 used for grouping inside one set (0.99 in the data README): copies between collections were re-encoded,
# resized and sharpened. Measured on mri2d_tumor4 vs mri2d_yesno: 0.99 finds 370 of the 623 copies
# the data README lists, 0.9 finds 621 (602 notumor) from the same 116 yes/no images. Dropping a
# few look-alikes too many from a source is harmless; keeping copies of the target is not.
CROSS_SET_CORRELATION = 0.9
# The same for thumbnails cut to the head (duplicates.cropped_thumbnail, where one of the two lost a margin): a
# review found tumour4 slices that copy a yes/no slice re-cropped or padded to another frame, which whole-frame
# thumbnails score 0.45-0.9. Cut to the head, 58 more of the source's images score above 0.85 against the target;
# of the 33 between 0.85 and 0.9, 30 were the same slice by eye (2026-12-02), and copies with another intensity
# window still score 0.80-0.85 (not caught).
CROSS_SET_CROPPED_CORRELATION = 0.85


def drop_near_copies_of(
    rows: list[ManifestRow], other: Manifest, data_root: Path, threshold: float = CROSS_SET_CORRELATION,
    cropped_threshold: float = CROSS_SET_CROPPED_CORRELATION, other_root: Path | None = None, progress: bool = True,
    scanned: dict | None = None,
) -> tuple[list[ManifestRow], int]:
    """Rows with no identical file or near-copy in ``other`` (e.g. a DA source minus its target): a whole-frame
    thumbnail above ``threshold``, or a 2D image's thumbnail cut to its head above ``cropped_threshold``.
    ``other_root``: where ``other``'s paths lead from, when not ``data_root``. ``scanned``: a dict kept between
    calls against one ``other`` (a --val and a --test set against one training set), which is then read once."""
    mine = scan(rows, data_root, desc="near-copy scan (this set)", with_cropped=True, progress=progress)
    scanned = {} if scanned is None else scanned
    if "other" not in scanned:
        scanned["other"] = scan(other.rows, other_root or data_root, desc="near-copy scan (other set)",
                                with_cropped=True, progress=progress)
    theirs = scanned["other"]
    unread = [(r, s) for r, s in zip(other.rows, theirs) if s.error]
    if unread:  # a copy of an image that cannot be read cannot be found: the check would pass without a word
        r, s = unread[0]
        raise MedtlError(f"{len(unread)} of the {len(other)} images to compare with cannot be read (first: {r.path}: "
                         f"{s.error}), so copies of them cannot be found; is its data root "
                         f"{other_root or data_root} the right one?", other.source or "the other set")
    copied: set[int] = set()
    their_sha = {s.sha256 for s in theirs if s.sha256}
    copied.update(i for i, s in enumerate(mine) if s.sha256 in their_sha)

    by_length: dict[int, list[int]] = defaultdict(list)  # 2D and 3D thumbnails compared apart
    for j, s in enumerate(theirs):
        if s.thumb is not None:
            by_length[s.thumb.size].append(j)
    for n, js in by_length.items():
        idx = [i for i, s in enumerate(mine) if s.thumb is not None and s.thumb.size == n]
        if idx:
            pairs = near_copy_pairs(np.stack([mine[i].thumb for i in idx]), np.stack([theirs[j].thumb for j in js]),
                                    threshold)
            copied.update(idx[p] for p in pairs[:, 0])
    mine_cut = [i for i, s in enumerate(mine) if s.cropped is not None]
    theirs_cut = [s.cropped for s in theirs if s.cropped is not None]
    if mine_cut and theirs_cut:
        pairs = cut_to_head_pairs([mine[i].cropped for i in mine_cut], theirs_cut, cropped_threshold)
        copied.update(mine_cut[p] for p in pairs[:, 0])
    return [r for i, r in enumerate(rows) if i not in copied], len(copied)


def build_manifest(
    source: str | Path,
    data_root: str | Path,
    seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    group_near_copies: bool = True,
    domain: str | None = None,
    modality: str | None = None,
    labelled: bool = True,
    exclude_copies_of: str | Path | None = None,
    label_names: list[str] | None = None,
    keep_source_split: bool = False,
    progress: bool = True,
    near_copy_correlation: float = NEAR_COPY_CORRELATION,
    skip_unreadable: bool = False,
    near_copy_cut_to_head: bool = True,
) -> Manifest:
    """A manifest of ``source`` with a patient-level, label-stratified train/val/test split (``medtl manifest
    build``; the README's "Data root and manifests" describes the result).

    ``source``: a folder ``<label>/<file>``, a raw manifest ``.csv`` (a data set's own ``manifest.csv``), or an
    ``.npz`` archive; its paths are stored relative to ``data_root``, under which it must lie. ``fractions``
    (train, val, test) and ``seed`` make the split. ``group_near_copies`` keeps images whose thumbnails
    correlate above ``near_copy_correlation`` (or that are identical) in one split and names each group in a
    ``near_copy_group`` column; ``near_copy_cut_to_head`` also compares 2D images cut to the head
    (:func:`medtl.data.check.near_copy_groups`); ``exclude_copies_of`` drops images that copy one in another manifest.
    ``domain`` and ``modality`` fill those columns (default: from the source); ``labelled=False`` reads a raw
    manifest's rows as unlabelled; ``keep_source_split`` keeps the source's own split. Files that cannot be
    read are refused, naming each, unless ``skip_unreadable`` leaves them out (listed in the meta's
    ``left_out``), as a labels manifest of a held-out folder that ``medtl predict`` read past needs. Save the result
    with ``manifest.save(path)``, which also writes its ``.meta.json``."""
    source, data_root = Path(source), Path(data_root)
    if not data_root.is_dir():
        raise MedtlError("data root is not a folder", data_root)
    if not source.exists():
        raise MedtlError("not found: no such folder or file", source)
    if source.is_dir():
        rows = rows_from_folder(source, data_root, domain, modality)
    elif source.suffix.lower() == ".csv":
        rows = rows_from_raw_manifest(source, data_root, domain, modality, labelled)
    elif source.suffix.lower() == ".npz":
        rows = rows_from_npz(source, data_root, domain, modality, label_names)
    else:
        raise MedtlError("expected a folder (<root>/<label>/<file>) or a raw manifest .csv", source)
    rows = collapse_dicom_series(rows, data_root)
    left_out: list[dict[str, str]] = []  # files skip_unreadable leaves out, each with its reason
    typed = []
    for r in rows:
        try:
            typed.append(r if r.modality != "dicom" else replace(r, modality=dicom_modality(data_root / r.path)))
        except MedtlError as err:
            if not skip_unreadable:
                raise
            left_out.append({"path": r.path, "reason": err.reason})
    rows = typed
    excluded = 0
    if exclude_copies_of is not None:
        other = Manifest.load(exclude_copies_of)  # its images are found through the root it records
        rows, excluded = drop_near_copies_of(rows, other, data_root, other_root=other.recorded_root or data_root)
    groups = None
    scanned = None
    if group_near_copies or skip_unreadable:
        cut_to_head = group_near_copies and near_copy_cut_to_head
        scanned = scan(rows, data_root, desc="near-copy scan" if group_near_copies else "reading", progress=progress,
                       with_cropped=cut_to_head)
        bad = [f"{r.path} ({s.error})" for r, s in zip(rows, scanned) if s.error]
        # a missing file, or one outside the root, is a wrong path or data root, not a damaged file: refused
        misplaced = [f"{r.path} ({s.error})" for r, s in zip(rows, scanned) if s.misplaced]
        if bad and skip_unreadable and not misplaced:
            left_out += [{"path": r.path, "reason": s.error} for r, s in zip(rows, scanned) if s.error]
            kept = [i for i, s in enumerate(scanned) if not s.error]
            rows, scanned = [rows[i] for i in kept], [scanned[i] for i in kept]
        elif bad:
            bad = misplaced or bad
            links = any("resolves outside the data root" in b for b in bad)
            raise MedtlError(f"{len(bad)} file(s) cannot be read: {'; '.join(bad[:10])}"
                             + (". medtl reads nothing outside the data root: give a --data-root that holds the files "
                                "the links point to (a folder above both)" if links else
                                ". A missing file, or one outside the root, is a wrong path or data root, which "
                                "--skip-unreadable does not leave out: correct the paths or --data-root"
                                if skip_unreadable else
                                ". Remove or repair them, or leave them out: `medtl manifest build --skip-unreadable` "
                                "writes a manifest without them (listed in its .meta.json)"), source)
    if left_out and not rows and not excluded:  # every file left out as unreadable (not as a copy)
        raise MedtlError(f"none of the {len(left_out)} file(s) can be read: "
                         + "; ".join(f"{f['path']} ({f['reason']})" for f in left_out[:10]), source)
    if group_near_copies:
        groups = near_copy_groups(scanned, near_copy_correlation)
        largest = int(np.bincount(groups).max()) if len(groups) else 0
        dealt = sum(f > 0 for f in fractions) > 1  # a set used whole (--fractions 0 0 1) has nothing to deal
        if dealt and largest > max(3, len(rows) // 2):  # copies are a minority; this many means a wrong threshold
            raise MedtlError(f"{largest} of {len(rows)} images form one group of near-copies (correlation above "
                             f"{near_copy_correlation}) or identical files, and one split would get them all: "
                             "images this alike need a higher --near-copy-correlation (e.g. 0.995), identical "
                             "files need removing, generated images need --no-group-near-copies", source)
    moved = 0
    if keep_source_split:
        splits = [SOURCE_SPLITS.get(r.extras.get("source_split", ""), "") for r in rows]
        if "" in splits:
            raise MedtlError("--keep-source-split needs a train/val/test source split on every row", source)
        if groups is not None:
            splits, moved = _unite_groups(splits, groups)
    else:
        splits = assign_splits(rows, seed, fractions, groups)
    by_split = None
    if groups is not None:
        rows, by_split = _label_groups(rows, groups, splits)
    labels = sorted({r.label for r in rows})
    per_image = sum(r.extras.get("patient_id_kind") == "per_image" for r in rows)
    meta = {
        "built_from": _relative_to_root(source, data_root).as_posix() if is_inside(source, data_root) else source.name,
        "data_root": str(data_root.resolve()),  # Manifest.save records it beside the manifest
        "seed": None if keep_source_split else seed,
        "fractions": None if keep_source_split else list(fractions),
        "split": (f"kept from the source; {moved} near-copy image(s) moved so each group sits in one split"
                  if keep_source_split else "patient-level, label-stratified, seeded"),
        "near_copy_grouping": group_near_copies,
        "near_copy_correlation": near_copy_correlation if group_near_copies else None,
        "near_copy_cut_to_head": near_copy_cut_to_head if group_near_copies else None,
        # every group sits in one split, so the per-split counts add up to the totals
        "near_copy_groups": sum(v["groups"] for v in by_split.values()) if by_split else 0,
        "near_copy_images": sum(v["images"] for v in by_split.values()) if by_split else None,
        "patient_ids": "per image (the source has no patient ids)" if per_image == len(rows)
        else "given" if per_image == 0 else f"given for {len(rows) - per_image} of {len(rows)} rows",
    }
    if exclude_copies_of is not None:
        meta["excluded_near_copies_of"] = Path(exclude_copies_of).name
        meta["excluded_rows"] = excluded
        meta["excluded_above"] = {"correlation": CROSS_SET_CORRELATION,
                                  "correlation_cut_to_head": CROSS_SET_CROPPED_CORRELATION}
    if by_split is not None:
        meta["near_copy_groups_by_split"] = by_split
    if left_out:
        meta["left_out"] = left_out
    manifest = Manifest(rows, labels, meta).with_splits(splits)
    manifest.scanned = scanned  # reused by the check that follows a build: every file is read once
    return manifest


def _label_groups(rows: list[ManifestRow], groups: np.ndarray, splits: list[str]) -> tuple[list[ManifestRow], dict]:
    """Name each multi-image near-copy group in a ``near_copy_group`` column (empty for images with no copy),
    so a report can count how many evaluated images sit in a group; also count groups per split."""
    sizes = Counter(groups.tolist())
    names: dict[int, str] = {}  # numbered in row order, so a rebuild writes the same names
    labelled, by_split = [], {s: {"groups": set(), "images": 0} for s in ("train", "val", "test")}
    for r, g, split in zip(rows, groups.tolist(), splits):
        name = names.setdefault(g, f"g{len(names) + 1}") if sizes[g] > 1 else ""
        labelled.append(replace(r, extras={**r.extras, "near_copy_group": name}))
        if name:
            by_split[split]["groups"].add(name)
            by_split[split]["images"] += 1
    return labelled, {s: {"groups": len(v["groups"]), "images": v["images"]} for s, v in by_split.items()}


def _unite_groups(splits: list[str], groups: np.ndarray) -> tuple[list[str], int]:
    """Move every near-copy group into one split (train before val before test), so none leaks."""
    order = {"train": 0, "val": 1, "test": 2}
    home: dict[int, str] = {}
    for s, g in zip(splits, groups):
        g = int(g)
        if g not in home or order[s] < order[home[g]]:
            home[g] = s
    united = [home[int(g)] for g in groups]
    return united, sum(a != b for a, b in zip(splits, united))


def _relative_to_root(path: Path, data_root: Path, what: str = "source") -> Path:
    try:
        return path.resolve().relative_to(data_root.resolve())
    except ValueError:
        raise MedtlError(f"{what} {path.resolve()} lies outside the data root {data_root.resolve()}: manifests hold "
                         "paths relative to the data root, so give --data-root a folder that holds it", path) from None
