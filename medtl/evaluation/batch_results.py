"""``medtl predict``'s results.csv as a predictions table, so ``medtl evaluate`` reads it directly.

results.csv (medtl.deploy.batch) names the case ``case_id``, the predicted class
``predicted_label``, the class probabilities ``prob_<label>``, ``status`` (ok | error), ``error``,
the model's ``threshold``, and carries the manifest's ``label``/``split`` when the input was a
manifest. Those are the predictions table's own column names (medtl.evaluation.predictions); this
module only:

- reads a regression model's value column (``predicted_<target>``, e.g. ``predicted_age``) as ``prediction``;
- skips rows whose ``status`` is not ``ok`` (failed reads have no probabilities), saying how many;
- joins labels (and split, patient, domain) from a manifest when the CSV has no labels, matching
  each row's ``case_id``, else its ``source`` (the path under the input folder), else the unique
  manifest path that ends with that source, else the series folder holding it;
- names the run after the model (``model_name`` / ``model_version``) and returns the threshold predict
  applied (the model's stored one, or predict's ``--threshold``), which the evaluation uses when there
  are no validation rows to choose one on; rows made at different thresholds are refused.

Older results.csv files named the columns ``key`` and ``prediction``; both are still read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from medtl.errors import MedtlError
from medtl.evaluation.predictions import NEAR_COPY_GROUP, PREDICT_THRESHOLD, PREDICTION
from medtl.paths import REDACTED, path_tag, read_path_salt, salted_path

OLD_NAMES = {"key": "case_id", "prediction": "predicted_label"}  # results.csv before issue #14
MARKERS = ("status", "model_name")  # columns only predict's results carry
DROPPED = ("probabilities",)  # a JSON copy of the prob_ columns


@dataclass
class BatchResults:
    table: pd.DataFrame  # a predictions table (validated by the evaluation when it is read)
    threshold: float | None  # the binary threshold predict applied (one value for every row)
    notes: list[str] = field(default_factory=list)
    n_rows: int = 0
    n_skipped: int = 0


def is_batch_results(path: str | Path) -> bool:
    """True for a CSV written by ``medtl predict`` (it has ``status`` and ``model_name`` columns)."""
    p = Path(path)
    if p.suffix.lower() != ".csv" or not p.is_file():
        return False
    try:
        header = pd.read_csv(p, nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return False
    return all(c in header for c in MARKERS)


def _suffix_index(paths: list[str]) -> dict[str, str | None]:
    """Every trailing part of every path -> that path (None when two paths share it)."""
    index: dict[str, str | None] = {}
    for p in paths:
        parts = PurePosixPath(p).parts
        for i in range(len(parts)):
            key = "/".join(parts[i:])
            index[key] = p if key not in index or index[key] == p else None
    return index


def join_labels(df: pd.DataFrame, manifest, where: str, target: str = "label",
                salt: bytes | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Labels, split, patient and domain of each row from ``manifest`` (a Manifest or CSV path); ``target``: the
    manifest column holding the truth (a regression model's target, e.g. ``age``, when not ``label``).

    ``salt``: the predict output folder's path salt. Where predict scrubbed an identifier out of a path
    (``[redacted]_UNCR.dcm#0a1b2c3d``) or hashed every path (``--redact-paths``), the row is found by hashing
    the manifest's paths the same way."""
    from medtl.data.manifest import Manifest

    m = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
    if target != "label" and target not in m.extra_columns:
        raise MedtlError(f"the model predicts {target!r}, but the labels manifest {m.name} has no {target!r} column "
                         f"(its columns: label, {', '.join(m.extra_columns) or 'no others'}): give the manifest that "
                         f"holds the true {target}", where)
    rows = {r.path: r for r in m}
    suffixes = _suffix_index(list(rows))
    hashed, tagged = {}, {}
    if salt is not None:
        for path in rows:
            hashed[salted_path(path, salt)] = path
            tagged.setdefault(path_tag(path, salt), []).append(path)

    def untagged(case_id: str):
        """The manifest row of a scrubbed case id (``[redacted]_UNCR.dcm#0a1b2c3d``): its tag, and its visible
        part as a pattern ([redacted]: anything), must name one path; a 4-byte tag alone can collide."""
        shown, _, tag = case_id.rpartition("#")
        pattern = re.compile(".+?".join(re.escape(part) for part in shown.split(REDACTED)))
        fits = [p for p in tagged.get(tag, []) if pattern.fullmatch(p)]
        return rows[fits[0]] if len(fits) == 1 else None

    def find(case_id: str, source: str):
        for key in (case_id, source):
            if key in rows:
                return rows[key]
            if key in hashed:
                return rows[hashed[key]]
        if "#" in case_id and tagged:
            return untagged(case_id)
        for key in (source, str(PurePosixPath(source).parent) if source else ""):  # a file, or its series folder
            hit = suffixes.get(key) if key and key != "." else None
            if hit:
                return rows[hit]
        return None

    sources = df["source"].astype(str) if "source" in df else pd.Series([""] * len(df), index=df.index)
    found = [find(str(c), str(s)) for c, s in zip(df["case_id"], sources)]
    missing = [str(s or c) for c, s, r in zip(df["case_id"], sources, found) if r is None]
    if len(missing) == len(df):
        raise MedtlError(f"no row matches a path of the labels manifest {m.name} (e.g. {missing[0]!r}); give the "
                         "manifest the predicted images came from", where)
    out = df.copy()
    # the manifest's split (val picks the threshold, test is scored) and its patients (bootstrap units)
    for col, attr in (("label", "label"), ("split", "split"), ("patient_id", "patient_id"), ("domain", "domain")):
        out[col] = [getattr(r, attr) if r is not None else None for r in found]
    if target != "label":
        out["label"] = [(r.extras.get(target) or "unlabelled") if r is not None else None for r in found]
    if NEAR_COPY_GROUP in m.extra_columns:  # near-copies: one bootstrap unit, as in a pipeline's report
        out[NEAR_COPY_GROUP] = [(r.extras.get(NEAR_COPY_GROUP) or None) if r is not None else None for r in found]
    notes = []
    if missing:
        out = out[[r is not None for r in found]]
        notes.append(f"{len(missing)} of {len(df)} rows are not in the labels manifest {m.name} and were left out "
                     f"(e.g. {', '.join(missing[:3])})")
    unlabelled = out["label"] == "unlabelled"
    if unlabelled.any():
        notes.append(f"{int(unlabelled.sum())} rows are 'unlabelled' in {m.name} and were left out" if target == "label"
                     else f"{int(unlabelled.sum())} rows have no {target} in {m.name} and were left out")
        out = out[~unlabelled]
    return out, notes


def _one_threshold(df: pd.DataFrame, path: Path) -> float | None:
    """The decision threshold predict applied to every row (None: a multiclass model, no threshold).

    Rows made at different thresholds (a run resumed with another --threshold) are refused: their
    ``predicted_label`` columns disagree, and no one threshold describes the file."""
    if "threshold" not in df:
        return None
    values = pd.to_numeric(df["threshold"], errors="coerce").dropna()
    counts = values.value_counts()
    if len(counts) > 1:
        found = ", ".join(f"{v:g} ({n} row{'s' if n > 1 else ''})" for v, n in counts.items())
        raise MedtlError(f"the rows were predicted at different decision thresholds: {found}; rerun medtl predict "
                         "into a fresh --out (with one --threshold, or none for the model's own)", path)
    return float(counts.index[0]) if len(counts) else None


def read_batch_results(path: str | Path, labels=None) -> BatchResults:
    """Read a results.csv into a predictions table; ``labels``: a manifest to take labels from."""
    path = Path(path)
    where = str(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise MedtlError(f"cannot read results: {err}", path) from None
    df = df.rename(columns={old: new for old, new in OLD_NAMES.items() if old in df and new not in df})
    value = [c for c in df if c.startswith("predicted_") and c != "predicted_label"]
    target = "label"
    if len(value) == 1 and PREDICTION not in df and not any(c.startswith("prob_") for c in df):
        # a regression model's value, named after its target (predicted_age); its predicted_label is empty
        df = df.drop(columns=["predicted_label"], errors="ignore").rename(columns={value[0]: PREDICTION})
        target = value[0][len("predicted_"):]
        if target != "label":  # the input manifest's label column (copied by predict) is not this truth
            df = df.drop(columns=["label"], errors="ignore")
            if labels is None:
                raise MedtlError(f"the model predicts {target!r}: give the manifest with the true {target} values "
                                 f"(a {target!r} column) with --labels", path)
    for col in ("case_id", "status"):
        if col not in df:
            raise MedtlError(f"not a medtl predict results.csv: no {col!r} column", path)
    n_rows = len(df)
    notes = []
    bad = df["status"] != "ok"
    if bad.any():
        shown = "; ".join(f"{c}: {e or s}" for c, s, e in
                          zip(df.loc[bad, "case_id"], df.loc[bad, "status"], df.loc[bad, "error"]
                              if "error" in df else [""] * int(bad.sum())))
        notes.append(f"{int(bad.sum())} of {n_rows} rows of {path.name} have status other than ok and were skipped "
                     f"({shown[:300]})")
        df = df[~bad]
    if df.empty:
        raise MedtlError(f"no rows with status ok (of {n_rows})", path)
    df = df.drop(columns=[c for c in DROPPED if c in df])
    threshold = _one_threshold(df, path)  # over every ok row, before the labels join leaves some out
    has_labels = "label" in df and (df["label"] != "").all()
    if labels is not None:
        df, more = join_labels(df, labels, where, target, read_path_salt(path.parent))
        notes += more
        if df.empty:  # every row unlabelled (a manifest of images without labels, as DICOM series often are)
            raise MedtlError("no predicted row has a label in --labels: " + "; ".join(more or ["no row matched"])
                             + "; give a manifest whose label column names each image's class", labels)
    elif not has_labels:
        raise MedtlError("the results have no labels: predict from a labelled manifest (--input manifest.csv), or "
                         "give the manifest of the predicted images with --labels", path)
    if "split" in df:
        df["split"] = df["split"].replace("", "test")  # rows without a split: scored
    # one model's predictions are one run, named after the model
    name = df["model_name"].iloc[0] if "model_name" in df else "model"
    version = df["model_version"].iloc[0] if "model_version" in df else ""
    df["strategy"] = name
    df["run_id"] = f"{name} {version}".strip()
    df["task"] = target  # a regression model's target (age), else "label"
    if threshold is not None:  # each run is judged at its own model's threshold when no val rows choose one
        df[PREDICT_THRESHOLD] = threshold
    return BatchResults(df.reset_index(drop=True), threshold, notes, n_rows, int(bad.sum()))


def row_summary(path, res: BatchResults, st) -> str:
    """What became of a results.csv's rows: scored (test), used for the threshold (val), left out (other
    splits, failed reads, rows without a label)."""
    splits = res.table["split"].value_counts() if "split" in res.table else pd.Series({st.test_split: len(res.table)})
    n_test, n_val = int(splits.get(st.test_split, 0)), int(splits.get(st.val_split, 0))
    other = {str(k): int(v) for k, v in splits.items() if k not in (st.test_split, st.val_split)}
    # a regression's val rows give the no-skill constant (their mean); a classifier's its threshold and calibration
    use = "the no-skill constant" if "prediction" in res.table else "the threshold and calibration"
    parts = [f"{n_test} {st.test_split} rows scored",
             f"{n_val} {st.val_split} rows used for {use} only" if n_val else f"no {st.val_split} rows"]
    if other:
        parts.append(f"{sum(other.values())} rows of other splits left out ("
                     + ", ".join(f"{k} {v}" for k, v in other.items()) + ")")
    if res.n_skipped:
        parts.append(f"{res.n_skipped} skipped (status not ok)")
    unmatched = res.n_rows - res.n_skipped - len(res.table)
    if unmatched:
        parts.append(f"{unmatched} without a label left out")
    return f"{path}: {res.n_rows} rows: " + "; ".join(parts)


def read_exclusions(path: str | Path) -> set[str]:
    """The case ids a CSV lists in a ``case_id`` or ``path`` column (``medtl manifest check --spanning-csv``
    writes one), to leave out of an evaluation."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise MedtlError(f"cannot read the exclusion list: {err}", path) from None
    column = next((c for c in ("case_id", "path") if c in table.columns), None)
    if column is None:
        raise MedtlError(f"the exclusion list needs a case_id or path column; has {list(table.columns)}", path)
    return set(table[column])


def _exclude(tables: list[pd.DataFrame], exclude: str | Path, test_split: str) -> tuple[list[pd.DataFrame], str]:
    """The tables without the rows of the listed cases, and the note saying how many went. A row is listed
    by its case id, or by its source path (predict's results.csv: a path relative to its input folder,
    matched as the end of a listed path); a list that matches nothing is refused, not reported as done."""
    listed = read_exclusions(exclude)
    ends = {"/".join(p.split("/")[i:]) for p in listed for i in range(len(p.split("/")))}
    gone = []
    for t in tables:
        hit = t["case_id"].astype(str).isin(listed)
        if "source" in t:
            hit |= t["source"].astype(str).isin(ends)
        gone.append(hit)
    n_rows = sum(int(g.sum()) for g in gone)
    if not n_rows:
        raise MedtlError("no row of the predictions matches a case_id or path the exclusion list gives", exclude)
    n_cases = len({c for t, g in zip(tables, gone) for c in t.loc[g, "case_id"].astype(str)})
    n_test = sum(int((g & (t["split"] == test_split)).sum()) for t, g in zip(tables, gone))
    note = (f"left out {n_cases} case(s) listed in {exclude} ({n_rows} row(s), {n_test} of them {test_split} "
            "rows): every metric here is computed without them (row counts above are before this)")
    return [t[~g] for t, g in zip(tables, gone)], note


def evaluate_files(predictions: Sequence, settings=None, labels=None, exclude: str | Path | None = None,
                   **kwargs) -> dict:
    """Evaluate predictions tables (paths or DataFrames) and predict's results.csv files together: the
    report.json content, with each results.csv's row accounting and notes first. ``labels``: the manifest
    joined to results.csv files without labels (refused for predictions tables, which carry their own);
    ``exclude``: a CSV of case ids (:func:`read_exclusions`) left out of every split, e.g. test images with
    a near-copy in training, with a note saying how many; ``kwargs``: EvalSettings fields when ``settings``
    is None. ``medtl evaluate`` and ``medtl report`` both read their prediction inputs here."""
    from medtl.evaluation.evaluate import EvalSettings, evaluate_predictions
    from medtl.evaluation.predictions import load_predictions

    st = settings or EvalSettings(**kwargs)
    # Each input is read once, here; its name travels with it so every later error names the file.
    names = ["<DataFrame>" if isinstance(p, pd.DataFrame) else str(p) for p in predictions]
    files = [Path(p).resolve() for p in predictions if not isinstance(p, pd.DataFrame)]
    twice = sorted({str(f) for f in files if files.count(f) > 1})
    if twice:  # its cases would appear twice in each run: said as what it is
        raise MedtlError(f"the same predictions file is given more than once: {', '.join(twice)}", twice[0])
    tables, notes, results, from_file = [], [], [], []
    for item in predictions:
        predictions_file = False
        if isinstance(item, pd.DataFrame):
            tables.append(item)
        elif is_batch_results(item):
            res = read_batch_results(item, labels=labels)
            tables.append(res.table)
            results.append(res.table)
            notes += [row_summary(item, res, st), *res.notes]
        else:
            tables.append(load_predictions(item))
            predictions_file = True
        from_file.append(predictions_file)
    if labels is not None and not results:  # beside results.csv files a predictions table keeps its own labels
        raise MedtlError("--labels is for medtl predict's results.csv; a predictions table carries its labels",
                         names[0])
    # Two models of one name (medtl train names a model after its architecture and preset) are two
    # strategies, not two runs of one: they are told apart by version (the weights' hash).
    model_names = [t["strategy"].iloc[0] for t in results]
    for t in results:
        if model_names.count(t["strategy"].iloc[0]) > 1:
            t["strategy"] = t["run_id"]
    tables, named = _tell_apart(tables, names, from_file)
    if named:
        notes.append(named)
    if exclude is not None:
        tables, note = _exclude(tables, exclude, st.test_split)
        notes.append(note)
        emptied = [name for t, name in zip(tables, names) if t.empty]
        if len(emptied) == len(tables):
            raise MedtlError("every row of the predictions is listed in the exclusion list: nothing is left to score",
                             exclude)
        if emptied:  # a file whose every case is excluded has nothing left to score: said, not an error about it
            notes.append(f"every row of {', '.join(emptied)} is excluded: it adds nothing to this report")
    report = evaluate_predictions([(t, name) for t, name in zip(tables, names) if not t.empty], st)
    report["notes"] = notes + report["notes"]
    report["sources"] = names  # every input, one that --exclude emptied too (the notes say so)
    return report


def _tell_apart(tables: list[pd.DataFrame], names: Sequence[str], from_file: Sequence[bool]) -> tuple[list, str]:
    """Predictions files that score the same cases under one (task, strategy, run_id) (two medtl train runs
    in folders of one name) are two models: each one's strategy gets its file's folder, e.g.
    ``medtl-resnet10-mri2d-m [a/m]`` (its path where the folders agree). A run split over files (its val rows in
    one, test in another) is kept (one file given twice is refused before it is read)."""
    from medtl.evaluation.predictions import RUN_KEY

    files = [i for i, f in enumerate(from_file) if f]
    keyed = {i: set(map(tuple, tables[i][[*RUN_KEY, "case_id"]].astype(str).itertuples(index=False)))
             for i in files}
    clash = sorted({i for i in files for j in files if i != j and keyed[i] & keyed[j]})
    paths = {i: Path(names[i]).resolve() for i in clash}
    if not clash or len(set(paths.values())) < len(clash):
        return tables, ""
    for named in ([p.parent for p in paths.values()], [p.with_suffix("") for p in paths.values()]):
        parts = [n.parts for n in named]
        common = 0
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1  # the folders above every file are no part of its name
        labels = ["/".join(p[common:]) for p in parts]
        if len(set(labels)) == len(labels):
            break
    out = list(tables)
    for i, label in zip(clash, labels):
        out[i] = tables[i].assign(strategy=tables[i]["strategy"].astype(str) + f" [{label}]")
    return out, (f"{len(clash)} files score the same cases under one strategy and run id (models trained into "
                 "folders of one name): each strategy is named with its file's folder")


__all__ = ["BatchResults", "OLD_NAMES", "evaluate_files", "is_batch_results", "join_labels", "read_batch_results",
           "read_exclusions",
           "row_summary"]
