"""Rank (source, encoder, strategy) options for a target task from their measured scores.

:func:`recommend` turns each metric into a rank among the eligible candidates (1 = best, 0 = worst,
ties averaged, direction from :data:`medtl.similarity.assess.METRICS` or ``higher_is_better``),
combines them by a weighted mean over the ranked metrics (one a candidate lacks counts as the middle
rank), excludes options that cannot
run on the target (fine-tuning with no target labels; label-conditioned adaptation without a shared
label set), and explains the order in words. The record it returns is JSON-able, so a report can
later set it beside the observed outcome with :func:`compare_outcome`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from medtl.errors import MedtlError, closest
from medtl.similarity.assess import METRICS
from medtl.strategies.registry import get_strategy

DEFAULT_WEIGHTS: dict[str, float] = {
    "logme": 1.0,
    "leep": 1.0,
    "h_score": 0.5,
    "proxy_a_distance": 0.5,
    "mmd2": 0.5,
    "frechet": 0.25,
    "strategy_prior": 1.0,  # the strategy class's rule of thumb (Strategy.prior), added from the target's n_labelled
}
# directions of the scores that are not similarity metrics
DIRECTIONS: dict[str, bool] = {"strategy_prior": True}
# in each encoder's own feature units: ranked only among candidates that share one encoder
# (MMD² sets its bandwidth from each pair's spread and PAD is an error rate: both are unit-free)
ENCODER_UNITS = ("frechet",)


# composite scores closer than this are a tie: rank averages of a handful of candidates move in steps
# of 1/(n-1), so a smaller gap says nothing about which option is better
TIE_TOLERANCE = 0.01
# a pick must stay on top on at least this share of image resamples to stand alone (three in four: a pick
# that half the draws overturn says more about the images drawn than about the options)
STABLE_SUPPORT = 0.75


def candidate_key(c: Mapping[str, Any]) -> str:
    return f"{c['source']}/{c['encoder']}/{c['strategy']}"


def _strategy_class(c: Mapping[str, Any]):
    """The candidate's strategy class: by ``method`` (the registry name) when it has one, else by ``strategy``
    (which may be a display label, as in a pipeline's ``{name: feature_extraction, label: linear_probe}``)."""
    try:
        return get_strategy(str(c.get("method") or c["strategy"]))
    except MedtlError:
        return None


def with_prior(c: Mapping[str, Any], target: Mapping[str, Any]) -> Mapping[str, Any]:
    """The candidate with its strategy's prior (``Strategy.prior``) among its scores, when the target says
    how many labelled cases it has, the strategy is known and no prior was given."""
    scores = dict(c.get("scores") or {})
    cls = _strategy_class(c)
    n_labelled = target.get("n_labelled")
    if "strategy_prior" in scores or cls is None or not isinstance(n_labelled, numbers.Integral):
        return c
    scores["strategy_prior"] = float(cls.prior(n_labelled, scores.get("proxy_a_distance")))
    return {**c, "scores": scores}


def _eligibility(c: Mapping[str, Any], target: Mapping[str, Any]) -> str | None:
    """Why a candidate cannot run on this target, or None."""
    cls = _strategy_class(c)
    if cls is None:
        return None
    n_labelled = target.get("n_labelled")
    shared = target.get("shared_labels")
    if n_labelled == 0 and not cls.needs_target and not target.get("trains_on_source"):
        return "fine-tuning needs labelled target cases and the target has none"
    if shared is False and cls.requires_shared_labels:
        return f"{c['strategy']} conditions on class predictions and needs one label set shared with the source"
    if shared is False and n_labelled == 0:
        return "no target labels and no shared label set: nothing can train the target head"
    return None


def _rank_scores(values: dict[str, float], higher: bool) -> dict[str, float]:
    """Map each key's value to [0, 1], 1 = best, ties share the mean position; a value no other candidate has
    is the middle rank (0.5), as a missing one is: a LEEP only a classifier-headed encoder has, however bad,
    gave it the top rank."""
    keys = list(values)
    if len(keys) == 1:
        return {keys[0]: 0.5}
    v = np.array([values[k] for k in keys], dtype=np.float64)
    from scipy.stats import rankdata

    r = rankdata(v if higher else -v, method="average")  # 1 = worst .. n = best
    return {k: float((ri - 1) / (len(keys) - 1)) for k, ri in zip(keys, r)}


def _same_measurements(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two ranked options have the same rank in every measurement (the strategy prior aside)."""
    ranks = [{m: v for m, v in r["metric_ranks"].items() if m not in DIRECTIONS} for r in (a, b)]
    return ranks[0] == ranks[1] and a["missing_metrics"] == b["missing_metrics"] and bool(ranks[0])


def _ordinal(i: int) -> str:
    return {1: "best", 2: "2nd best", 3: "3rd best"}.get(i, f"{i}th best")


def recommend(
    target: Mapping[str, Any],
    candidates: Sequence[Mapping[str, Any]],
    weights: Mapping[str, float] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
    resampled: Sequence[Sequence[Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Rank ``candidates`` for ``target``.

    ``target``: free-form description, recorded as given; used keys: ``n_labelled`` (int),
    ``shared_labels`` (bool, target label set = source label set) and ``trains_on_source`` (bool: the
    strategies train on the labelled source, as in unsupervised adaptation, so a plain fine-tune is the
    source-only baseline and needs no target label).
    ``candidates``: ``{"source", "encoder", "strategy", "scores": {metric: value}}`` each (e.g. the
    ``distances`` and ``transferability`` of :func:`medtl.similarity.assess.assess`, flattened), and
    optionally ``method``, the strategy's registry name when ``strategy`` is a display label, and
    ``unmeasured``, why no score applies to it (training from scratch uses nothing of the source). With the
    target's ``n_labelled``, a known strategy's prior joins its scores (:func:`with_prior`).
    ``weights``: metric -> weight (default :data:`DEFAULT_WEIGHTS`); metrics without a weight are
    reported but not ranked. ``higher_is_better``: directions of metrics not in ``METRICS``.
    ``resampled``: the same candidates scored again on random subsets of the images (the pipeline's
    similarity stage draws halves); the record's ``stability`` says how often each came out on top, and a
    pick on top in fewer than :data:`STABLE_SUPPORT` of them, while another was on top in at least a tenth,
    is no pick: it and those others are reported as a tie (the images drawn, not the measures, chose).
    """
    if not candidates:
        raise MedtlError("no candidates to rank", "candidates")
    n_labelled = target.get("n_labelled")
    if n_labelled is not None and (isinstance(n_labelled, bool) or not isinstance(n_labelled, numbers.Integral)):
        raise MedtlError(f"n_labelled must be a whole number, got {n_labelled!r} (without it no strategy prior is "
                         "added)", "target.n_labelled")
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    directions = {k: v[0] for k, v in METRICS.items()} | DIRECTIONS | dict(higher_is_better or {})
    for name, w in weights.items():
        if name not in directions:
            raise MedtlError(f"metric {name!r} has a weight but no direction; pass higher_is_better", "weights")
        if w < 0:
            raise MedtlError(f"metric weight must be >= 0, got {name}={w}", "weights")

    seen: set[str] = set()
    unknown: list[str] = []  # strategies medtl does not know: no eligibility check, no prior
    eligible: dict[str, Mapping[str, Any]] = {}
    excluded = []
    for c in candidates:
        missing = [k for k in ("source", "encoder", "strategy") if k not in c]
        if missing:
            raise MedtlError(f"candidate lacks {missing}", f"candidate {dict(c)!r}")
        key = candidate_key(c)
        if key in seen:
            raise MedtlError("candidate listed twice", key)
        seen.add(key)
        for metric, v in (c.get("scores") or {}).items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):  # numpy's too
                raise MedtlError(f"score {metric} = {v!r} is not a number", key)
        if _strategy_class(c) is None:
            unknown.append(key)
        c = with_prior(c, target)
        why = _eligibility(c, target)
        if why:
            excluded.append({"key": key, "reason": why})
        else:
            eligible[key] = c
    if not eligible:
        raise MedtlError("no candidate can run on this target: " + "; ".join(e["reason"] for e in excluded), "candidates")

    def score(c, metric):
        v = (c.get("scores") or {}).get(metric)
        return None if v is None or not np.isfinite(float(v)) else float(v)

    # the encoders whose features measured each score: a score in feature units compares only within one
    measured_by = {m: sorted({str(c["encoder"]) for c in eligible.values() if score(c, m) is not None})
                   for m in weights}
    unit_bound = [m for m in ENCODER_UNITS if weights.get(m, 0) > 0 and len(measured_by.get(m, ())) > 1]
    ranked_metrics = [m for m, w in weights.items() if w > 0 and m not in unit_bound
                      and any(score(c, m) is not None for c in eligible.values())]
    per_metric = {
        m: _rank_scores({k: score(c, m) for k, c in eligible.items() if score(c, m) is not None}, directions[m])
        for m in ranked_metrics
    }
    def composite_of(key: str, metrics: list[str]) -> float:
        # a metric measured for others but not for this option (e.g. a 3D encoder has no distance to 2D
        # source images) counts as the middle rank: neither a reward nor a penalty for being unmeasured
        total_w = sum(weights[m] for m in metrics)
        return sum(weights[m] * per_metric[m].get(key, 0.5) for m in metrics) / total_w if total_w else 0.0

    measured_metrics = [m for m in ranked_metrics if m not in DIRECTIONS]  # the prior is a rule of thumb
    rows = []
    for key, c in eligible.items():
        have = [m for m in ranked_metrics if key in per_metric[m]]
        composite = composite_of(key, ranked_metrics)
        rows.append({
            "key": key,
            "source": c["source"],
            "encoder": c["encoder"],
            "strategy": c["strategy"],
            **({"method": c["method"]} if c.get("method") else {}),  # so a ranking row is a candidate again
            "composite": float(composite),
            "measured_composite": float(composite_of(key, measured_metrics)),  # the same without the prior
            "metric_ranks": {m: per_metric[m][key] for m in have},
            "scores": {k: (None if v is None else float(v)) for k, v in (c.get("scores") or {}).items()},
            "missing_metrics": [m for m in ranked_metrics if m not in have],
        })
    rows.sort(key=lambda r: (-r["composite"], r["key"]))

    for i, row in enumerate(rows, 1):
        row["rank"] = i
        reasons = []
        for m in sorted(row["metric_ranks"], key=lambda m: -weights[m]):
            values = sorted(
                (s for s in (score(c, m) for c in eligible.values()) if s is not None), reverse=directions[m]
            )
            pos, shared = values.index(row["scores"][m]) + 1, values.count(row["scores"][m])
            if shared == len(values) > 1:  # nothing to rank: "highest" would claim an order
                reasons.append(f"{m} ({row['scores'][m]:.4g}) the same for all {len(values)}")
                continue
            if len(values) == 1:  # nothing to rank it against: the middle rank
                reasons.append(f"{m} ({row['scores'][m]:.4g}) measured for this option only (the middle rank)")
                continue
            word = ("highest" if directions[m] else "lowest") if pos == 1 else _ordinal(pos)
            level = f", level with {shared - 1} other{'s' if shared > 2 else ''}" if shared > 1 else ""
            reasons.append(f"{word} {m} ({row['scores'][m]:.4g}) of {len(values)}{level}")
        if row["missing_metrics"]:
            why = f": {eligible[row['key']]['unmeasured']}" if eligible[row["key"]].get("unmeasured") else ""
            reasons.append(f"no {', '.join(row['missing_metrics'])}{why} (counted as the middle rank)")
        row["reasons"] = reasons

    best = rows[0]
    # options no measurement reaches (scratch, an encoder that could not be measured): their place comes only
    # from the middle rank they are given and the prior, so no measurement puts an option above or below them
    not_compared = [r for r in rows if measured_metrics and not any(m in r["metric_ranks"] for m in measured_metrics)]
    tied = [r for r in rows if best["composite"] - r["composite"] <= TIE_TOLERANCE]
    # options that share every measurement with a top one (strategies on one encoder): only the prior, a rule of
    # thumb, puts them below it, so the measurements pick none of them over the others
    twins = [r for r in rows if r not in tied and any(_same_measurements(r, t) for t in tied)]
    stability, unstable = None, False
    if resampled:
        shares = _top_shares(target, resampled, weights, higher_is_better)
        stability = {"resamples": len(resampled), "top_share": shares, "support": shares.get(best["key"], 0.0)}
        if twins:  # the halves split their top between the twins by construction: the group's share is the pick's
            stability["support"] = round(sum(shares.get(r["key"], 0.0) for r in [*tied, *twins]), 6)
        # the full images' pick and every candidate on top in at least a tenth of the halves
        contenders = [r for r in rows if r is best or shares.get(r["key"], 0.0) >= 0.1]
        if len(tied) == 1 and stability["support"] < STABLE_SUPPORT and len(contenders) > 1:
            tied, unstable = contenders, True
    # measurements that move some candidate off the middle rank: without any, no measurement orders them
    informative = [m for m in ranked_metrics if m not in DIRECTIONS
                   and any(abs(r - 0.5) > 1e-12 for r in per_metric[m].values())]
    unordered = not informative
    prior_only = unordered and "strategy_prior" in ranked_metrics  # then the prior alone orders them
    # options the measurements alone put above the top one: then the prior, not a measurement, made the top
    top_measured = max(r["measured_composite"] for r in rows)
    lifted = not prior_only and top_measured - best["measured_composite"] > TIE_TOLERANCE
    if prior_only and len(rows) > 1:  # a rule of thumb is no measured basis for a pick: every option stays open
        priors = [r["scores"].get("strategy_prior", 0.5) for r in rows]
        chain = " > ".join(f"{r['key']} ({p:.1f})" for r, p in zip(rows, priors))
        order = (f"would order them {chain}" if len(set(priors)) > 1
                 else f"gives every one the same value ({priors[0]:.1f}): it orders none of them either")
        text = [f"No pick: no measurement tells these {len(rows)} options apart (the same for every one that has it), "
                f"so nothing measured recommends one. The strategies' prior, a rule of thumb on the number of labels "
                f"and the domain gap, {order}; it is no evidence for this target: on this project's "
                "own chest X-ray to brain MRI studies no transfer recipe beat training from scratch by its interval, "
                "and a pick by the prior alone lost to scratch (docs/results.md). Train the options, scratch "
                "included, and compare them on validation."]
        tied, unordered = rows, False
    elif lifted:
        first = [r for r in rows if top_measured - r["measured_composite"] <= TIE_TOLERANCE]
        names = ", ".join(r["key"] for r in first)
        tied = sorted({r["key"]: r for r in [*tied, *twins, *first]}.values(), key=lambda r: r["rank"])
        text = [f"No pick: by the measurements alone {names} come{'s' if len(first) == 1 else ''} first (composite "
                f"{top_measured:.3f} without the strategies' prior, against {best['measured_composite']:.3f} for "
                f"{best['key']}); only the prior, a rule of thumb on the number of labels and the domain gap, puts "
                f"{best['key']} on top ({best['composite']:.3f} with it). The prior is no evidence for this target "
                "(docs/results.md). Train them and compare on validation."]
    elif twins:
        level = [r for r in tied if r is not best and not _same_measurements(r, best)]  # within the tolerance
        tied = sorted([*tied, *twins], key=lambda r: r["rank"])
        floor = min(r["measured_composite"] for r in tied)  # what the measurements alone give the weakest of them
        below = [r for r in rows if r not in tied and r not in not_compared
                 and floor - r["measured_composite"] > TIE_TOLERANCE]
        groups = []  # each top option with the options that share its every measurement
        for t in [r for r in tied if r not in twins]:
            group = [t, *[r for r in twins if _same_measurements(r, t)]]
            if len(group) > 1:
                groups.append(" > ".join(f"{r['key']} ({r['scores'].get('strategy_prior', 0.5):.1f})" for r in group))
        text = [f"No pick between {', '.join(r['key'] for r in tied)}: "
                + "; ".join(groups) + " share every measurement (one encoder and source), so only the strategies' "
                "prior, a rule of thumb, orders them (the prior in brackets); it is no evidence for this target "
                "(docs/results.md). "
                + (f"{', '.join(r['key'] for r in level)} score{'s' if len(level) == 1 else ''} within "
                   f"{TIE_TOLERANCE} of the best composite. " if level else "")
                + (f"The measurements place them above {len(below)} other option(s). " if below else "")
                + "Train them and compare on validation."
                + (f" Together they stay on top on {stability['support']:.0%} of {len(resampled)} random halves of "
                   "the images." if stability else "")]
    elif unstable:  # the composite separates them, but which images were drawn decides the order
        names = ", ".join(f"{r['key']} (on top in {shares.get(r['key'], 0.0):.0%})" for r in tied)
        text = [f"Unstable: on {len(resampled)} random halves of the images the top option changes ({names}; "
                f"{best['key']} scores highest on all of them, composite {best['composite']:.3f}), so the "
                "measurements recommend none of them over the others. Train them and compare on validation."]
    elif len(tied) > 1:  # the scores cannot order these: saying "recommended" would invent a winner
        names = ", ".join(f"{r['key']} ({'; '.join(r['reasons'])})" for r in tied)
        text = [f"Tie: {len(tied)} options have composite scores within {TIE_TOLERANCE} of each other "
                f"({best['composite']:.3f}), so the scores recommend none of them over the others: {names}. "
                "Train them and compare on validation."]
    else:
        why = "; ".join(best["reasons"]) or "only eligible option"
        text = [f"Recommended: {best['key']} (composite {best['composite']:.3f}): {why}."]
        # the runner-up among the options the measurements compare with the pick
        others = [r for r in rows[1:] if r not in not_compared or best in not_compared]
        if others:
            second = others[0]
            # level with it: by the composite, or in every measurement (then only the prior put it second)
            level = [r["key"] for r in others if second["composite"] - r["composite"] <= TIE_TOLERANCE
                     or _same_measurements(r, second)]
            if len(level) > 1:  # no one runner-up: naming the first by name would invent an order
                text.append(f"Runners-up, level with each other (composite {second['composite']:.3f}): "
                            f"{', '.join(level)}.")
            else:
                why = "; ".join(second["reasons"])
                text.append(f"Runner-up: {second['key']} (composite {second['composite']:.3f}): {why}.")
            if best["composite"] - second["composite"] < 0.05:
                text.append("The top two are nearly tied: compare them by training both.")
        if stability and not unordered:
            text.append(f"It stays on top on {stability['support']:.0%} of {len(resampled)} random halves of the "
                        "images.")
        if not_compared and best not in not_compared:
            names = ", ".join(r["key"] for r in not_compared)
            one = len(not_compared) == 1
            text.append(f"Not compared with {names}: nothing measured speaks for or against {'it' if one else 'them'} "
                        f"(the ranking gives {'it' if one else 'them'} the middle rank of each measurement), so the "
                        f"measurements pick {best['key']} over the other measured options only; train {names} "
                        "beside it as the baseline.")
    if unordered:
        text.append("No measurement tells these candidates apart (the same for every one that has it)"
                    + (": the order is the strategy prior's alone, a rule of thumb on the number of labels."
                       if prior_only else "."))
    for m in unit_bound:
        text.append(f"{m} is not ranked: it is in each encoder's own feature units, and the options that have it "
                    f"use {len(measured_by[m])} encoders ({', '.join(measured_by[m])}).")
    if not measured_metrics:  # nothing measured for any option (scratch only, or encoders that cannot be measured)
        text.append("Nothing was measured for these options: no distance or transferability score speaks for any.")
    elif not any(m in ranked_metrics for m in ("logme", "leep", "h_score")):
        text.append("No transferability score (needs target labels): the ranking rests on domain distances only.")
    for e in excluded:
        text.append(f"Excluded {e['key']}: {e['reason']}.")
    if unknown:
        text.append(f"Not a medtl strategy (a typo?), so ranked without an eligibility check or a strategy prior: "
                    f"{', '.join(unknown)}.")
    strange = sorted({m for c in candidates for m in (c.get("scores") or {}) if m not in directions})
    if strange:  # reported with the candidate, but no direction says which way is better
        named = [m + (f" (did you mean {guess}?)" if (guess := closest(m, directions)) else "") for m in strange]
        text.append(f"Scores medtl does not know are not ranked: {', '.join(named)}.")
    return {
        "version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": dict(target),
        "weights": {m: weights[m] for m in ranked_metrics},
        "directions": {m: "higher" if directions[m] else "lower" for m in ranked_metrics},
        "ranking": rows,
        "excluded": excluded,
        "recommended": best["key"],  # with a tie, the top-scored of the tied options (by name when equal)
        "tie": [r["key"] for r in tied] if len(tied) > 1 else [],
        "not_compared": [r["key"] for r in not_compared],  # no measurement places these against the others
        "stability": stability,
        "prior_only": prior_only,
        "explanation": " ".join(text),
    }


def _top_shares(target, resampled, weights, higher_is_better) -> dict[str, float]:
    """The share of resamples in which each candidate came out on top (a tie splits its resample)."""
    shares: dict[str, float] = {}
    for candidates in resampled:
        record = recommend(target, candidates, weights, higher_is_better)
        top = record["tie"] or [record["recommended"]]
        for key in top:
            shares[key] = shares.get(key, 0.0) + 1 / (len(top) * len(resampled))
    return {k: round(v, 6) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}  # 10 x 0.1 is 1


def compare_outcome(
    record: Mapping[str, Any], outcomes: Mapping[str, float], higher_is_better: bool = True
) -> dict[str, Any]:
    """Set a :func:`recommend` record beside observed outcomes (e.g. target AUC per candidate key).

    Returns the Spearman and Kendall correlations between the candidates' composite scores and their
    outcomes (tie-aware: equal scores share a rank, and with a single score for all there is no
    predicted order, so both are None), whether the recommended one was the best observed (None when
    the ranking itself is a tie, or every outcome is equal: there was no pick, or nothing to pick), the
    candidates that share the best outcome, and the regret (best observed outcome minus the
    recommended one's, in the outcome's units; sign so that >= 0; with a tie, of the top-scored).
    """
    from scipy.stats import kendalltau, spearmanr

    keys = [r["key"] for r in record["ranking"] if r["key"] in outcomes]
    if not keys:
        raise MedtlError("no outcome matches a ranked candidate", "outcomes")
    observed = {k: float(outcomes[k]) for k in keys}
    out = [observed[k] if higher_is_better else -observed[k] for k in keys]  # higher = better
    best_keys = [k for k, v in zip(keys, out) if v == max(out)]
    best = best_keys[0]
    rec = record["recommended"]
    regret = abs(observed[best] - observed[rec]) if rec in observed else None
    no_pick = bool(record.get("tie")) or len(best_keys) == len(keys)
    result: dict[str, Any] = {
        "recommended": rec,
        "best_observed": best,
        "best_observed_tie": best_keys if len(best_keys) > 1 else [],
        "top1_is_best": None if no_pick or rec not in observed else rec in best_keys,
        "regret": regret,
        "n_compared": len(keys),
        "spearman": None,
        "kendall": None,
    }
    composite = {r["key"]: r["composite"] for r in record["ranking"]}
    predicted = [composite[k] for k in keys]
    # equal outcomes, or one score for every candidate, have no order to correlate
    if len(keys) >= 3 and len(set(out)) > 1 and len(set(predicted)) > 1:
        result["spearman"] = float(spearmanr(predicted, out).statistic)
        result["kendall"] = float(kendalltau(predicted, out).statistic)
    return result
