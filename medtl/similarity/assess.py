"""One call that measures how far two domains are apart and how transferable features are.

:func:`assess` returns a JSON-able dictionary; :func:`to_table` renders it for a terminal or a
Markdown report and :func:`to_json` serialises it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medtl.errors import MedtlError
from medtl.similarity.distances import as_features, check_pair, frechet_distance, linear_cka, mmd_test, proxy_a_distance
from medtl.similarity.transferability import h_score, leep, logme

# name -> (higher_is_better, meaning); shared with the recommender
METRICS: dict[str, tuple[bool, str]] = {
    "mmd2": (False, "multi-kernel Gaussian MMD^2 between domains"),
    "mmd_p_value": (True, "permutation-test p-value of MMD (small = domains differ)"),
    "proxy_a_distance": (False, "proxy A-distance 2(1-2 err) of a domain classifier (0 same .. 2 separable)"),
    "domain_error": (True, "balanced held-out error of the domain classifier"),
    "frechet": (False, "Frechet distance between feature Gaussians"),
    "linear_cka": (True, "linear CKA of paired rows"),
    "logme": (True, "LogME evidence of the target labels"),
    "leep": (True, "LEEP of the source model on the target labels"),
    "h_score": (True, "regularised H-score of the target labels (0 .. classes - 1)"),
}


FEW_ROWS = 20  # below this many rows per side the note says the measures are mostly noise


def assess(
    source_features: Any,
    target_features: Any,
    target_labels: Any = None,
    *,
    source_model_probs: Any = None,
    paired: bool = False,
    n_permutations: int = 200,
    max_rows: int | None = 1000,
    seed: int = 0,
    frechet: bool = True,
) -> dict[str, Any]:
    """Distances between ``source_features`` and ``target_features`` (one encoder, same width) and,
    when ``target_labels`` are given, the transferability of the target features.

    ``source_model_probs``: the source model's class probabilities on the target images, for LEEP.
    Target label -1 (numeric labels) marks an unlabelled row: it counts for the distances only.
    ``paired=True``: row i of both arrays is the same case (e.g. the same images before/after
    adaptation), which makes linear CKA meaningful; otherwise CKA is reported as None.
    ``frechet=False`` leaves the Frechet distance out (None): its two eigen-decompositions of a features x
    features matrix are most of the time on wide features, wasted where nothing uses it.
    """
    notes: list[str] = []
    xs, xt = (as_features(x, f"{side} features", 2) for x, side in ((source_features, "source"),
                                                                    (target_features, "target")))
    distances: dict[str, Any] = dict.fromkeys(
        ("mmd2", "mmd_p_value", "proxy_a_distance", "domain_error", "frechet", "linear_cka"))
    permutations = 0
    if paired and xs.shape[1] != xt.shape[1]:
        # two encoders' features of the same cases: CKA compares them; a distance between their spaces means nothing
        notes.append(f"distances not computed: the paired features differ in width ({xs.shape[1]} vs {xt.shape[1]}), "
                     "two encoders' representations of the same cases, which only CKA compares")
    else:
        xs, xt = check_pair(xs, xt, min_rows=2)
        test = mmd_test(xs, xt, n_permutations=n_permutations, seed=seed, max_rows=max_rows)
        pad = proxy_a_distance(xs, xt, seed=seed)
        permutations = test["n_permutations"]
        distances.update(mmd2=test["mmd2"], mmd_p_value=test["p_value"], proxy_a_distance=pad["pad"],
                         domain_error=pad["error"], frechet=frechet_distance(xs, xt) if frechet else None)
    if paired:
        distances["linear_cka"] = linear_cka(xs, xt)
    else:
        notes.append("linear CKA not computed: it needs paired rows (pass paired=True for the same cases)")
    if min(len(xs), len(xt)) < FEW_ROWS:
        notes.append(f"only {min(len(xs), len(xt))} rows on one side (fewer than {FEW_ROWS}): at this size the "
                     "measures are mostly noise (PAD from a classifier of a handful of rows reaches 2 by chance, the "
                     "H-score sits near its ceiling, the permutation test has little power); measure more images")
    if max_rows is not None and (len(xs) > max_rows or len(xt) > max_rows):
        notes.append(f"MMD computed on at most {max_rows} random rows per domain")

    transfer: dict[str, Any] = {"logme": None, "leep": None, "h_score": None}
    n_classes = None
    if target_labels is not None:
        y = np.asarray(target_labels)
        if y.ndim != 1 or len(y) != len(xt):
            raise MedtlError(f"need one label per target row: {len(xt)} rows, labels of shape {y.shape}",
                             "target labels")
        keep = y >= 0 if y.dtype.kind in "iuf" else np.ones(len(y), bool)  # -1 marks an unlabelled row
        if not keep.all():
            notes.append(f"transferability on the {int(keep.sum())} labelled of {len(y)} target rows")
        y, xl = y[keep], xt[keep]
        n_classes = int(len(np.unique(y)))
        try:
            transfer["logme"] = logme(xl, y)
        except MedtlError as err:  # no maximum to report (labels fitted with no noise): said, not a number
            notes.append(err.reason)
        transfer["h_score"] = h_score(xl, y)
        if source_model_probs is not None:
            probs = np.asarray(source_model_probs)
            if len(probs) != len(keep):
                raise MedtlError(f"source_model_probs has {len(probs)} rows for {len(keep)} target rows",
                                 "source_model_probs")
            transfer["leep"] = leep(probs[keep], y)
        else:
            notes.append("LEEP not computed: needs source_model_probs (the source model's probabilities on target images)")
    else:
        notes.append("transferability not computed: no target labels")
    return {
        "n_source": int(len(xs)),
        "n_target": int(len(xt)),
        "n_features": int(xs.shape[1]),  # the source's; the note gives both where paired widths differ
        "n_target_classes": n_classes,
        "distances": distances,
        "transferability": transfer,
        "mmd_permutations": permutations,
        "seed": seed,
        "notes": notes,
    }


def to_table(result: dict[str, Any], markdown: bool = False) -> str:
    """Two-column table (metric, value) with the direction of each metric."""
    rows = []
    for section in ("distances", "transferability"):
        for key, value in result.get(section, {}).items():
            higher, _ = METRICS.get(key, (True, ""))
            shown = "n/a" if value is None else f"{value:.4g}"
            # a p-value tests "the domains differ"; a large one is no evidence that they are alike
            how = "small = the domains differ" if key == "mmd_p_value" else \
                f"{'higher' if higher else 'lower'} = closer/better"
            rows.append((f"{key} ({how})", shown))
    width = max(len(r[0]) for r in rows)
    head = f"source n={result['n_source']}, target n={result['n_target']}, features={result['n_features']}"
    if markdown:
        lines = [head, "", "| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    else:
        lines = [head] + [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def to_json(result: dict[str, Any], path: str | Path | None = None) -> str:
    text = json.dumps(result, indent=2, sort_keys=False)
    if path is not None:
        Path(path).write_text(text + "\n")
    return text


# how many random halves of the images measure a ranking's stability (pipelines and medtl similarity)
N_RESAMPLES = 20


def resampled_scores(feats: dict[str, dict], n: int = N_RESAMPLES, seed: int = 0, skip: tuple[str, ...] = (),
                      progress: bool = False) -> list[dict[str, dict]]:
    """The ranked measures again on ``n`` random halves of the source and target images (the same halves for
    every encoder, so encoders are compared on one draw): how much a ranking made from them moves with the
    images that happened to be drawn. No permutation test: its p-value ranks nothing. ``skip``: measures not
    to take (``"frechet"``, when the ranking leaves it out). ``feats``: encoder name -> ``source``, ``target``
    arrays and optionally ``target_labels``, ``target_probs``. Fewer than 8 images on a side: none."""
    from medtl.progress import bar

    if not feats:
        return []
    first = next(iter(feats.values()))
    n_src, n_tgt = len(first["source"]), len(first["target"])
    if min(n_src, n_tgt) < 8:  # halves of fewer than four images measure nothing
        return []
    rng = np.random.default_rng(seed)
    out = []
    for _ in bar(range(n), desc="similarity resamples", unit="half", enabled=progress):
        s_idx = rng.choice(n_src, n_src // 2, replace=False)
        t_idx = rng.choice(n_tgt, n_tgt // 2, replace=False)
        draw = {}
        for enc_name, f in feats.items():
            labels, probs = f.get("target_labels"), f.get("target_probs")
            if labels is not None and len(np.unique(np.asarray(labels)[t_idx])) < 2:
                labels = probs = None  # a half with one class: no transferability score on it
            labels = None if labels is None else np.asarray(labels)[t_idx]
            probs = None if probs is None else np.asarray(probs)[t_idx]
            draw[enc_name] = flat_scores(assess(f["source"][s_idx], f["target"][t_idx], labels,
                                                source_model_probs=probs, n_permutations=1, seed=seed,
                                                frechet="frechet" not in skip))
        out.append(draw)
    return out


def flat_scores(result: dict) -> dict[str, float]:
    """The finite measure values of an :func:`assess` result, by name (what the recommender ranks)."""
    flat = {}
    for section in ("distances", "transferability"):
        for k, v in (result.get(section) or {}).items():
            value = v.get("value") if isinstance(v, dict) else v
            if isinstance(value, (int, float)) and value is not None and np.isfinite(value):
                flat[k] = float(value)
    return flat
