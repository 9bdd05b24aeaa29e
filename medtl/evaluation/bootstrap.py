"""Bootstrap confidence intervals and aggregation over seeds.

A resample is a vector of counts (how often each case is drawn), so all resamples form a (B, n)
matrix that the metric functions consume in one vectorised call. Resampling is

- stratified: each stratum (a class) is resampled to its own size, so every resample keeps the
  observed prevalence and every class (AUROC stays defined);
- by patient when patient ids are given: patients are drawn, and each brings all its images, because
  images of one patient are correlated and resampling them singly would make intervals too narrow.
  A patient's stratum is its most frequent class.

Intervals are percentile intervals of the resampled statistic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

from medtl.errors import MedtlError

DEFAULT_N_BOOT = 1000
DEFAULT_LEVEL = 0.95
_MAX_CELLS = 4_000_000  # cap on B * n held at once (32 MB of float64)


def _codes(values, n: int, name: str) -> np.ndarray:
    """One code per case for ``strata`` or ``groups``; a missing or NaN entry has no stratum/patient."""
    v = np.asarray(values)
    if v.ndim != 1 or len(v) != n:
        raise MedtlError(f"need one entry per case ({n}), got shape {v.shape}", name)
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        raise MedtlError("NaN or infinite entries: every case needs a stratum / group", name)
    if v.dtype.kind == "O" and any(x is None or (isinstance(x, float) and not np.isfinite(x)) for x in v):
        raise MedtlError("missing entries: every case needs a stratum / group", name)
    return np.unique(v.astype(str) if v.dtype.kind == "O" else v, return_inverse=True)[1].reshape(-1)


def _units(n: int, strata, groups):
    """Sampling units (patients, or cases) as an index per case, and each unit's stratum."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise MedtlError(f"need a positive number of cases, got {n!r}", "n")
    strata = np.zeros(n, dtype=int) if strata is None else _codes(strata, n, "strata")
    if groups is None:
        return np.arange(n), strata
    unit = _codes(groups, n, "groups")
    # A unit's stratum: its most frequent case stratum (ties: the lowest).
    table = np.zeros((unit.max() + 1, strata.max() + 1), dtype=int)
    np.add.at(table, (unit, strata), 1)
    return unit, table.argmax(axis=1)


def bootstrap_counts(
    n: int, *, strata=None, groups=None, n_boot: int = DEFAULT_N_BOOT, rng: np.random.Generator | int = 0
) -> np.ndarray:
    """A (n_boot, n) float matrix: how many times each case is drawn in each resample."""
    _check_n_boot(n_boot, allow_zero=False)
    rng = np.random.default_rng(rng)
    unit, unit_stratum = _units(n, strata, groups)
    n_units = len(unit_stratum)
    unit_counts = np.zeros((n_boot, n_units))
    for s in np.unique(unit_stratum):
        members = np.flatnonzero(unit_stratum == s)
        m = len(members)
        draws = rng.integers(0, m, size=(n_boot, m))
        # Count all rows at once: offset each row's draws into its own block of m bins.
        counts = np.bincount((draws + m * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * m)
        unit_counts[:, members] = counts.reshape(n_boot, m)
    return unit_counts[:, unit]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not np.isfinite(value)) or str(value) == ""


def sampling_units(units, copies=None) -> np.ndarray:
    """The resampling unit of each case (one label per case): ``units`` (a case's patient, or the case itself)
    with the units of one near-copy group (``copies``: images that are one scan re-encoded or re-cut, which
    per-image data sets give different "patients") joined into one. A missing group (None, NaN, "") joins
    nothing."""
    units = [str(u) for u in units]
    if copies is None:
        return np.array(units)
    if len(copies) != len(units):
        raise MedtlError(f"need one near-copy group per case ({len(units)}), got {len(copies)}", "copies")
    parent: dict[str, str] = {}

    def root(u: str) -> str:
        path = []
        while parent.get(u, u) != u:
            path.append(u)
            u = parent[u]
        for p in path:  # every node on the way now points at the root
            parent[p] = u
        return u

    for unit, group in zip(units, copies):  # union: a unit and its group, so a group joins all its units
        if not _missing(group):
            a, b = root(unit), root("copies:" + str(group))
            if a != b:
                parent[a] = b
    return np.array([root(u) for u in units])


def _check_n_boot(n_boot, allow_zero: bool) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < (0 if allow_zero else 1):
        raise MedtlError(f"must be a positive integer, got {n_boot!r}", "n_boot")


def _check_level(level) -> float:
    if not isinstance(level, (int, float, np.floating)) or not 0.0 < float(level) < 1.0:
        raise MedtlError(f"must be a number in (0, 1), e.g. 0.95; got {level!r}", "level")
    return float(level)


def bootstrap_samples(
    stat: Callable[[np.ndarray], dict[str, np.ndarray]],
    n: int,
    *,
    strata=None,
    groups=None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Run ``stat(counts)`` (counts: (b, n); returns arrays with leading axis b) over ``n_boot`` resamples.

    Resamples are made in chunks so memory stays bounded for large test sets; the chunk size
    depends only on ``n``, so results are reproducible for a given seed.
    """
    _check_n_boot(n_boot, allow_zero=False)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _MAX_CELLS // max(n, 1)))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n_boot, chunk):
        W = bootstrap_counts(n, strata=strata, groups=groups, n_boot=min(chunk, n_boot - start), rng=rng)
        parts.append(stat(W))
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def percentile_interval(samples, level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis, ignoring resamples where the statistic is undefined."""
    level = _check_level(level)
    a = np.asarray(samples, dtype=float)
    flat = a.reshape(len(a), -1)
    tail = 100.0 * (1.0 - level) / 2.0
    ok = np.isfinite(flat).any(axis=0)
    low = np.full(flat.shape[1], np.nan)
    high = np.full(flat.shape[1], np.nan)
    if ok.any():
        low[ok], high[ok] = np.nanpercentile(flat[:, ok], [tail, 100.0 - tail], axis=0)
    low, high = low.reshape(a.shape[1:]), high.reshape(a.shape[1:])
    return low, high


def bootstrap_ci(
    metric: Callable[..., np.ndarray],
    *arrays,
    strata=None,
    groups=None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float, float]:
    """``(value, low, high)`` of ``metric(*arrays, weights=...)`` (any function from metrics.py).

    The arrays are checked by ``metric`` itself (metrics.py's shared helpers)."""
    if not arrays:
        raise MedtlError("no arrays to resample", "arrays")
    n = len(arrays[0])
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) > 1:
        raise MedtlError(f"arrays differ in length {lengths}: resampling needs one entry per case in each", "arrays")
    _check_level(level)
    _require_weights(metric)
    value = float(metric(*arrays))
    boot = bootstrap_samples(lambda W: {"m": metric(*arrays, weights=W)}, n, strata=strata, groups=groups,
                     n_boot=n_boot, seed=seed)["m"]  # fmt: skip
    low, high = percentile_interval(boot, level)
    return value, float(low), float(high)


def _require_weights(metric) -> None:
    """The resamples reach ``metric`` as ``weights``, a (resamples, cases) matrix of counts: a function
    without that argument (scikit-learn's take ``sample_weight``, one vector) cannot be resampled this way."""
    import inspect

    try:
        params = inspect.signature(metric).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: let the call say
        return
    if not any(p.name == "weights" or p.kind is p.VAR_KEYWORD for p in params):
        name = getattr(metric, "__name__", repr(metric))
        raise MedtlError(f"{name} takes no weights= argument, through which the bootstrap passes its resamples "
                         "(a matrix of counts, one row per resample): use a function of medtl.evaluation.metrics "
                         "(auroc, average_precision, ...) or one that takes weights=W the same way", "metric")


def seed_summary(values, level: float = DEFAULT_LEVEL, bounds: tuple[float, float] | None = None) -> dict:
    """Mean, standard deviation and t-interval of the mean of a metric over seeds; ``bounds``: the metric's
    range (AUROC: 0 to 1), which a t-interval over few seeds can overshoot, and is clipped to.

    These are metric values, not scores: a nan is a metric undefined in that seed, so it is left
    out (``n`` says how many seeds count)."""
    level = _check_level(level)
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    out = {"value": None, "std": None, "ci_low": None, "ci_high": None, "n": int(len(v))}
    if len(v) == 0:
        return out
    out["value"] = float(v.mean())
    if len(v) > 1:
        sd = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2.0, len(v) - 1)) * sd / np.sqrt(len(v))
        out.update(std=sd, ci_low=out["value"] - half, ci_high=out["value"] + half)
        if bounds is not None:
            out.update(ci_low=max(out["ci_low"], bounds[0]), ci_high=min(out["ci_high"], bounds[1]))
    return out
