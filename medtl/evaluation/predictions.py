"""The predictions table: the single interface between models and evaluation.

One row per case and run. Columns:

=================  ==========================================================================
``case_id``        the image or volume (required)
``patient_id``     the patient; bootstrap resamples patients when present (empty: the case)
``domain``         source / target / site name
``split``          ``train`` / ``val`` / ``test`` ...: val picks thresholds, test is reported
``label``          the true class NAME (classification) or a number (regression) (required)
``prob_<class>``   probability of each class, one column per class, summing to 1 per row
``logit_<class>``  optional: the model's logit of each class (finite numbers; all classes or none);
                   temperature scaling is fitted on them when present
``prediction``     the predicted value, regression only (instead of ``prob_*``)
``run_id``         one training run (model + seed + label fraction)
``strategy``       the transfer strategy that produced the run
``task``           the task name; a table may hold several tasks with different classes
``seed``           the run's seed (integer, may be empty)
``label_fraction`` optional: fraction of target labels used in training (a label-fraction curve)
``near_copy_group`` optional: images that are near-copies of each other (one scan re-encoded) share a
                   name; the bootstrap resamples such a group as one unit with its patients
=================  ==========================================================================

Extra columns are kept. In a table holding several tasks, a task's classes are the ``prob_``
columns filled for its rows (the others are empty for it). Missing optional columns get defaults
(``split`` = test, ``strategy``/``task`` = "default", ``run_id`` = strategy + seed + fraction).

The loader validates: probabilities are numbers in [0, 1] summing to 1 (within 1e-3), no NaN
scores, labels among the task's classes, one row per case and run; logits, when a run has them,
are finite, one per class, and their softmax matches the probabilities (within 1e-3). Anything
else is a MedtlError naming the file and the offending cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medtl.data.manifest import NEAR_COPY_GROUP  # noqa: F401 (optional column: one bootstrap unit with its patients)
from medtl.errors import MedtlError

__all__ = [
    "COLUMNS",
    "PROB_PREFIX",
    "LOGIT_PREFIX",
    "TaskInfo",
    "prob_column",
    "task_infos",
    "validate_predictions",
    "load_predictions",
    "write_predictions",
    "predictions_from_arrays",
    "probabilities",
    "logit_matrix",
    "logit_column",
    "label_indices",
]

COLUMNS = ("case_id", "patient_id", "domain", "split", "label", "run_id", "strategy", "task", "seed")
TEXT_COLUMNS = ("case_id", "patient_id", "domain", "split", "run_id", "strategy", "task")
PROB_PREFIX = "prob_"
LOGIT_PREFIX = "logit_"
PREDICTION = "prediction"
# A regression "strategy" that predicts the mean of the labelled training targets for every case: the
# trivial baseline medtl run scores beside each regression task; reports read every MAE against it.
TRAINING_MEAN = "training_mean"
PREDICT_THRESHOLD = "predict_threshold"  # optional: the binary threshold medtl predict applied to a run's rows
SUM_TOLERANCE = 1e-3
RUN_KEY = ("task", "strategy", "run_id")


@dataclass(frozen=True)
class TaskInfo:
    """A task's name, kind (``binary``, ``multiclass`` or ``regression``) and ordered class names."""

    name: str
    kind: str
    classes: tuple[str, ...] = ()


def prob_column(class_name: str) -> str:
    return f"{PROB_PREFIX}{class_name}"


def logit_column(class_name: str) -> str:
    return f"{LOGIT_PREFIX}{class_name}"


def _prob_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if isinstance(c, str) and c.startswith(PROB_PREFIX)]


def _logit_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if isinstance(c, str) and c.startswith(LOGIT_PREFIX)]


def _cases(df: pd.DataFrame, mask, limit: int = 5) -> str:
    ids = df.loc[mask, "case_id"].astype(str).tolist()
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def task_infos(df: pd.DataFrame) -> dict[str, TaskInfo]:
    """Kind and classes of every task in a validated table."""
    out = {}
    for task, rows in df.groupby("task", sort=False):
        classes = tuple(c[len(PROB_PREFIX) :] for c in _prob_columns(rows) if rows[c].notna().any())
        if classes:
            out[str(task)] = TaskInfo(str(task), "binary" if len(classes) == 2 else "multiclass", classes)
        else:
            out[str(task)] = TaskInfo(str(task), "regression")
    return out


def _fill_defaults(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    if "split" not in df:
        df["split"] = "test"
    for col in ("task", "strategy"):
        if col not in df:
            df[col] = "default"
    if "domain" not in df:
        df["domain"] = ""
    if "patient_id" not in df:
        df["patient_id"] = pd.NA
    if "seed" not in df:
        df["seed"] = pd.NA
    if "run_id" not in df:
        run = df["strategy"].astype(str)
        if df["seed"].notna().any():
            run = run + "-s" + df["seed"].astype(str)
        if "label_fraction" in df:
            run = run + "-f" + df["label_fraction"].astype(str)
        df["run_id"] = run
    return df


def validate_predictions(df: pd.DataFrame, where: str | Path | None = None) -> pd.DataFrame:
    """A checked, normalised copy of a predictions table (see the module note); MedtlError if bad."""
    where = str(where) if where is not None else "predictions"
    for col in ("case_id", "label"):
        if col not in df.columns:
            raise MedtlError(f"missing required column {col!r} (have: {', '.join(map(str, df.columns))})", where)
    if df.empty:
        raise MedtlError("the predictions table has no rows", where)
    df = _fill_defaults(df)
    for col in TEXT_COLUMNS + ((NEAR_COPY_GROUP,) if NEAR_COPY_GROUP in df else ()):
        if col in ("patient_id", NEAR_COPY_GROUP):
            # An empty patient id means "unknown": that case is its own sampling unit.
            df[col] = df[col].astype(object).where(df[col].notna(), None)
            df[col] = [None if v is None or str(v) == "" else str(v) for v in df[col]]
        else:
            df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    if (df["case_id"] == "").any():
        raise MedtlError("some rows have an empty case_id", where)
    df["seed"] = _numeric(df, "seed", where).astype("Int64")
    if "label_fraction" in df:
        df["label_fraction"] = _numeric(df, "label_fraction", where)
    probs = _prob_columns(df)
    for c in probs + _logit_columns(df) + ([PREDICTION] if PREDICTION in df else []):
        df[c] = _numeric(df, c, where)

    labels = df["label"].astype(object)
    for task, info in task_infos(df).items():
        rows = df["task"] == task
        if info.kind == "regression":
            _check_regression(df, rows, task, where)
            stray = [c for c in _logit_columns(df) if df.loc[rows, c].notna().any()]
            if stray:
                raise MedtlError(f"task {task!r} is a regression but has logit values in {', '.join(stray)}", where)
            continue
        cols = [prob_column(c) for c in info.classes]
        P = df.loc[rows, cols]
        _check_same_classes(df.loc[rows], cols, task, where)
        # checked before the sums: a class without its prob_ column also makes every row sum below 1
        names = labels[rows].map({v: _label_name(v) for v in labels[rows].unique()})  # once per distinct label
        empty = names.isna() | (names == "")
        if empty.any():
            raise MedtlError(f"task {task!r}: empty labels for cases {_cases(df.loc[rows], empty.to_numpy())}", where)
        unknown = sorted(set(names) - set(info.classes), key=str)
        if unknown:
            raise MedtlError(f"task {task!r}: labels {unknown[:10]} do not match the model's classes "
                             f"{list(info.classes)} (from the prob_ columns): missing column(s) "
                             f"{', '.join(prob_column(str(u)) for u in unknown[:10])}, or a label misspelt", where)
        bad = P.isna().any(axis=1)
        if bad.any():
            # rows with scores for some classes only: inputs of one run naming the classes differently
            other = (" (those rows score other classes: do the inputs name the classes differently, e.g. neg/pos and "
                     "no/yes?)" if P[bad].notna().any(axis=1).all() else "")
            raise MedtlError(f"task {task!r}: NaN scores in {', '.join(cols)} for cases {_cases(df.loc[rows], bad)}"
                             f"{other}", where)  # fmt: skip
        out_of_range = ((P < 0) | (P > 1)).any(axis=1)
        if out_of_range.any():
            raise MedtlError(f"task {task!r}: probabilities outside [0, 1] for cases "
                             f"{_cases(df.loc[rows], out_of_range)} (logits instead of probabilities?)", where)  # fmt: skip
        sums = P.sum(axis=1)
        off = (sums - 1.0).abs() > SUM_TOLERANCE
        if off.any():
            first = float(sums[off].iloc[0])
            raise MedtlError(f"task {task!r}: probabilities do not sum to 1 (e.g. {first:.4g}) for cases "
                             f"{_cases(df.loc[rows], off)}; write softmax probabilities of every class", where)  # fmt: skip
        if PREDICTION in df and df.loc[rows, PREDICTION].notna().any():
            raise MedtlError(f"task {task!r} has both prob_* and prediction values: classification or regression?",
                             where)  # fmt: skip
        labels[rows] = names
        _check_logits(df.loc[rows], info, task, where)
    df["label"] = labels

    dup = df.duplicated(list(RUN_KEY) + ["case_id"], keep=False)
    if dup.any():
        raise MedtlError(f"cases appear more than once in one run: {_cases(df, dup)} (task, strategy, run_id)", where)
    for key, run in df.groupby(list(RUN_KEY), sort=False):
        for col in ("seed", "label_fraction"):
            if col in run and run[col].nunique(dropna=False) > 1:
                raise MedtlError(f"run {key[2]!r} of task {key[0]!r} mixes several values of {col!r}", where)
    return df


def _check_same_classes(rows: pd.DataFrame, cols: list[str], task: str, where: str) -> None:
    # A run whose model has other class names leaves some of the task's prob_ columns empty.
    filled = rows[cols].notna().groupby(rows["run_id"], sort=False).any()
    names = {run: tuple(c[len(PROB_PREFIX) :] for c in cols if has[c]) for run, has in filled.iterrows()}
    if len(set(names.values())) > 1:
        shown = "; ".join(f"run {r!r}: {list(n)}" for r, n in list(names.items())[:4])
        raise MedtlError(f"task {task!r}: runs disagree on the class names ({shown})", where)


def _check_logits(rows: pd.DataFrame, info: TaskInfo, task: str, where: str) -> None:
    """A run has a finite logit for every class on every row, or none at all; softmax = probabilities."""
    wanted = [logit_column(c) for c in info.classes]
    stray = [c for c in _logit_columns(rows) if c not in wanted and rows[c].notna().any()]
    if stray:
        raise MedtlError(f"task {task!r}: logit columns {stray} name no class of the task {list(info.classes)}", where)
    present = [c for c in wanted if c in rows]
    if not present or not rows[present].notna().any().any():
        return
    if len(present) < len(wanted):
        missing = sorted(set(wanted) - set(present))
        raise MedtlError(f"task {task!r}: logit columns for some classes only (missing {', '.join(missing)}); "
                         "write one logit_<class> column per class or none", where)  # fmt: skip
    L = rows[wanted]
    has = L.notna().any(axis=1).groupby(rows["run_id"], sort=False)
    for run, flags in has:
        if flags.any() and not flags.all():
            part = rows[rows["run_id"] == run]
            raise MedtlError(f"task {task!r}, run {run!r}: logits for some cases but not for "
                             f"{_cases(part, ~flags.to_numpy())}; a run has logits for all its cases or none", where)  # fmt: skip
    filled = L.notna().any(axis=1)
    z = L[filled].to_numpy(dtype=float)
    bad = ~np.isfinite(z).all(axis=1)
    if bad.any():
        raise MedtlError(f"task {task!r}: NaN or infinite logits for cases {_cases(rows[filled], bad)}", where)
    P = rows.loc[filled, [prob_column(c) for c in info.classes]].to_numpy(dtype=float)
    off = np.abs(_softmax(z) - P).max(axis=1) > SUM_TOLERANCE
    if off.any():
        raise MedtlError(f"task {task!r}: softmax of the logit columns differs from the prob columns for cases "
                         f"{_cases(rows[filled], off)}; write both from the same model output, in the same class "
                         "order", where)  # fmt: skip


def _label_name(v) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))  # 1.0 read from a numeric column means class "1"
    return str(v)


def _numeric(df: pd.DataFrame, col: str, where: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col]):
        return df[col].astype(float)  # read as numbers already: nothing to check (a table is often validated twice)
    values = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
    bad = values.isna() & df[col].notna()
    bad[bad] = df.loc[bad, col].astype(str) != ""  # only the few unreadable cells are turned into text
    if bad.any():
        raise MedtlError(f"column {col!r} holds non-numbers for cases {_cases(df, bad)}", where)
    return values.astype(float)


def _check_regression(df: pd.DataFrame, rows, task: str, where: str) -> None:
    if PREDICTION not in df:
        raise MedtlError(f"task {task!r} has neither prob_<class> columns nor a {PREDICTION!r} column", where)
    pred = df.loc[rows, PREDICTION]
    if not np.isfinite(pred).all():
        raise MedtlError(f"task {task!r}: NaN or infinite predictions for cases "
                         f"{_cases(df.loc[rows], ~np.isfinite(pred))}", where)  # fmt: skip
    y = pd.to_numeric(df.loc[rows, "label"], errors="coerce")
    if y.isna().any():
        raise MedtlError(f"task {task!r} (regression): non-numeric labels for cases "
                         f"{_cases(df.loc[rows], y.isna())}", where)  # fmt: skip
    if not np.isfinite(y).all():
        raise MedtlError(f"task {task!r} (regression): infinite labels for cases {_cases(df.loc[rows], ~np.isfinite(y))}",
                         where)  # fmt: skip


def load_predictions(path: str | Path) -> pd.DataFrame:
    """Read and validate a predictions table from ``.csv`` or ``.parquet``."""
    path = Path(path)
    if not path.exists():
        raise MedtlError("predictions file not found", path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # Ids and labels stay text ("007" is not 7); the rest is parsed in validation.
        text = {c: str for c in (*TEXT_COLUMNS, "label")}
        try:
            df = pd.read_csv(path, dtype=text, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
            raise MedtlError(f"cannot read CSV: {err}", path) from err
    elif suffix in (".parquet", ".pq"):
        _need_parquet(path)
        df = pd.read_parquet(path)
    else:
        raise MedtlError(f"unknown predictions format {suffix!r}: use .csv or .parquet", path)
    return validate_predictions(df, path)


def _need_parquet(path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        try:
            import fastparquet  # noqa: F401
        except ImportError as err:
            raise MedtlError("Parquet needs pyarrow (pip install pyarrow); or write CSV", path) from err


def write_predictions(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate and write a predictions table as ``.csv`` or ``.parquet`` (standard columns first)."""
    path = Path(path)
    df = validate_predictions(df, path)
    first = [c for c in COLUMNS if c in df]
    df = df[first + [c for c in df.columns if c not in first]]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix.lower() in (".parquet", ".pq"):
        _need_parquet(path)
        df.to_parquet(path, index=False)
    else:
        raise MedtlError(f"unknown predictions format {path.suffix!r}: use .csv or .parquet", path)
    return path


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predictions_from_arrays(
    case_ids: Sequence,
    labels: Sequence,
    probs=None,
    *,
    class_names: Sequence[str] | None = None,
    prediction=None,
    logits=None,
    patient_ids: Sequence | None = None,
    domain: str | Sequence = "",
    split: str | Sequence = "test",
    run_id: str = "run",
    strategy: str = "default",
    task: str = "default",
    seed: int | None = None,
    **extra,
) -> pd.DataFrame:
    """Build a validated predictions table from arrays.

    Classification: ``probs`` (n, K) probabilities and ``class_names`` (K names; default
    "0".."K-1"); ``labels`` are class names or indices into them. ``logits`` (n, K), the model's
    logits, are written as ``logit_<class>`` columns (temperature scaling is then fitted on them);
    ``probs`` may then be omitted (softmax of the logits). ``logits=True`` (older form) means
    ``probs`` holds logits. Regression: ``prediction`` (n,) and numeric ``labels``. ``extra`` adds
    columns (scalars or arrays).
    """
    n = len(case_ids)
    if isinstance(logits, (bool, np.bool_)):
        logits, probs = (probs, None) if logits else (None, probs)
    L = None
    if logits is not None:
        try:
            L = np.asarray(logits, dtype=float)
        except (TypeError, ValueError) as err:
            raise MedtlError(f"logits must be numbers ({err})", "logits") from err
        if L.ndim != 2 or len(L) != n or L.shape[1] < 2:
            raise MedtlError(f"logits must be (n_cases, n_classes) = ({n}, K >= 2), got {L.shape}", "logits")
        if not np.isfinite(L).all():
            raise MedtlError("logits hold NaN or infinite values", "logits")
        if prediction is not None:
            raise MedtlError("logits are for classification; a regression gives prediction only", "logits")
        if probs is None:
            probs = _softmax(L)
    df = pd.DataFrame({"case_id": [str(c) for c in case_ids]})
    df["patient_id"] = [None] * n if patient_ids is None else [None if p is None else str(p) for p in patient_ids]
    df["domain"] = domain
    df["split"] = split
    if probs is not None:
        P = np.asarray(probs, dtype=float)
        if P.ndim != 2 or len(P) != n:
            raise MedtlError(f"probs must be (n_cases, n_classes) = ({n}, K), got {P.shape}", "probs")
        if L is not None and L.shape != P.shape:
            raise MedtlError(f"logits {L.shape} and probs {P.shape} differ in shape", "logits")
        names = [str(c) for c in (class_names if class_names is not None else range(P.shape[1]))]
        if len(names) != P.shape[1]:
            raise MedtlError(f"{len(names)} class names for {P.shape[1]} probability columns", "class_names")
        lab = np.asarray(labels)
        if lab.dtype == bool or np.issubdtype(lab.dtype, np.floating):
            # indices held as floats (0.0, 1.0: as the metric functions accept them) or booleans
            whole = np.isfinite(lab) & (lab == np.round(lab)) if lab.dtype != bool else np.ones(len(lab), bool)
            if not whole.all():
                bad = lab[~whole][0].item()
                raise MedtlError(f"numeric labels must be class indices 0..{len(names) - 1}, got {bad!r}; give class "
                                 "names or whole numbers (use prediction= for a regression task)", "labels")
            lab = lab.astype(int)
        if np.issubdtype(lab.dtype, np.integer):
            if lab.min(initial=0) < 0 or lab.max(initial=0) >= len(names):
                raise MedtlError(f"label indices outside 0..{len(names) - 1}", "labels")
            df["label"] = [names[i] for i in lab]
        else:
            df["label"] = [str(v) for v in lab]
        for j, name in enumerate(names):
            df[prob_column(name)] = P[:, j]
        if L is not None:
            for j, name in enumerate(names):
                df[logit_column(name)] = L[:, j]
    elif prediction is not None:
        df["label"] = np.asarray(labels, dtype=float)
        df[PREDICTION] = np.asarray(prediction, dtype=float)
    else:
        raise MedtlError("give probs (classification) or prediction (regression)", "predictions_from_arrays")
    df["run_id"], df["strategy"], df["task"] = run_id, strategy, task
    df["seed"] = pd.NA if seed is None else seed
    for k, v in extra.items():
        df[k] = v
    return validate_predictions(df)


def probabilities(df: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """The (n, K) probability matrix of ``classes`` in order."""
    return df[[prob_column(c) for c in classes]].to_numpy(dtype=float)


def logit_matrix(df: pd.DataFrame, classes: Sequence[str]) -> np.ndarray | None:
    """The (n, K) logit matrix of ``classes`` in order, or None when these rows have no logits.

    Validation guarantees a run's rows have logits for all classes or none; rows mixing runs with
    and without them also give None (fall back to log-probabilities)."""
    cols = [logit_column(c) for c in classes]
    if not len(df) or not all(c in df for c in cols):
        return None
    L = df[cols].to_numpy(dtype=float)
    return L if np.isfinite(L).all() else None


def label_indices(df: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """True labels as indices into ``classes``."""
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[str(v)] for v in df["label"]], dtype=int)
