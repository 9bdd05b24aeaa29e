"""`medtl recommend`: rank (source, encoder, strategy) options for a target from their scores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medtl.cli.output import output_file
from medtl.paths import read_json


def register(sub) -> None:
    p = sub.add_parser(
        "recommend",
        help="rank source/encoder/strategy options for a target from similarity and transferability scores",
        description="CANDIDATES is a JSON file: {\"target\": {...}, \"candidates\": [{\"source\", \"encoder\", "
        "\"strategy\", \"scores\": {metric: value}} or {..., \"assessment\": \"similarity.json\"}]} "
        "(an assessment path, relative to the file, is a similarity.json written by medtl similarity --out DIR).",
    )
    p.add_argument("candidates", type=Path, help="candidates JSON file (format above)")
    p.add_argument("--target", type=Path, help="JSON target description (overrides the file's 'target')")
    p.add_argument("--weight", action="append", default=[], metavar="METRIC=W",
                   help="metric weight, repeatable (replaces the default weights)")
    p.add_argument("--out", type=Path, metavar="DIR", help="folder to write recommendation.json into")
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # deprecated: --out DIR
    p.set_defaults(func=run)


def load_candidates(path: Path) -> tuple[dict, list[dict]]:
    """Target description and candidates, with ``assessment`` files flattened into ``scores``."""
    from medtl.errors import MedtlError

    data = read_json(path, "candidates")
    if isinstance(data, list):
        data = {"candidates": data}
    if not isinstance(data, dict) or not isinstance(data.get("candidates"), list):
        raise MedtlError("expected a list of candidates or {'target': ..., 'candidates': [...]}", path)
    out = []
    for i, c in enumerate(data["candidates"]):
        if not isinstance(c, dict):
            raise MedtlError("each candidate must be an object", f"{path}: candidate {i}")
        c = dict(c)
        if "assessment" in c:
            where = path.parent / c.pop("assessment")
            a = read_json(where, "assessment")
            if not isinstance(a, dict) or not ({"distances", "transferability"} & set(a)):
                keys = ", ".join(map(str, a)) if isinstance(a, dict) else type(a).__name__
                raise MedtlError("not the similarity.json of one source-target pair (medtl similarity --source S "
                                 f"--target T --out DIR writes one); this file holds {keys}", where)
            scores = {**a.get("distances", {}), **a.get("transferability", {})}
            given = c.get("scores", {})
            c["scores"] = {**scores, **given}
            if a.get("resamples"):  # the same measures on random halves of the images: the ranking's stability
                c["resamples"] = [{**r, **given} for r in a["resamples"]]
                c["resampling"] = a.get("resampling")
        out.append(c)
    return dict(data.get("target") or {}), out


def _plain(c: dict) -> dict:
    return {k: v for k, v in c.items() if k not in ("resamples", "resampling")}


def resampled_candidates(candidates: list[dict]) -> tuple[list[list[dict]] | None, str]:
    """The candidates scored on each random half their assessments measured (one list per half), or None and
    why not: halves compare options only when every assessment drew them from the same images."""
    from medtl.similarity.recommend import candidate_key

    measured = [c for c in candidates if "resamples" in c]
    if not measured:
        return None, ("no assessment holds measures on random halves of the images (medtl similarity from images "
                      "or feature arrays writes them)")
    # scores of all the images beside those of halves: a half's LogME or H-score moves with its size, so the
    # mix would favour one side in every half
    whole = [candidate_key(c) for c in candidates if c.get("scores") and "resamples" not in c]
    if whole:
        return None, (f"{', '.join(whole)} {'has' if len(whole) == 1 else 'have'} scores of all the images but none "
                      "of random halves (an assessment written before medtl similarity measured halves, or scores "
                      "given by hand): run medtl similarity again for every measured option")
    draws = {json.dumps(c.get("resampling"), sort_keys=True) for c in measured}
    if len(draws) > 1 or len({len(c["resamples"]) for c in measured}) > 1:
        return None, ("the assessments drew their halves from different images (another --seed, --max-cases or "
                      "data set): run medtl similarity for every option with the same settings")
    n = len(measured[0]["resamples"])
    return [[{**_plain(c), "scores": c["resamples"][i]} if "resamples" in c else _plain(c) for c in candidates]
            for i in range(n)], ""


def run(args) -> int:
    from medtl.errors import MedtlError
    from medtl.similarity.recommend import recommend

    path = output_file(args.out, args.json, "recommendation.json")  # a bad --out is refused before any work
    target, candidates = load_candidates(args.candidates)
    if args.target:
        target = read_json(args.target, "target")
    weights = None
    if args.weight:
        weights = {}
        for item in args.weight:
            name, sep, value = item.partition("=")
            try:
                weights[name] = float(value)
            except ValueError:
                raise MedtlError(f"expected METRIC=NUMBER, got {item!r}", "--weight") from None
            if not sep or not name:
                raise MedtlError(f"expected METRIC=NUMBER, got {item!r}", "--weight")
    resampled, why_not = resampled_candidates(candidates)
    record = recommend(target, [_plain(c) for c in candidates], weights, resampled=resampled)
    for row in record["ranking"]:
        print(f"{row['rank']:>2}. {row['key']:<40} composite {row['composite']:.3f}  {'; '.join(row['reasons'])}")
    for e in record["excluded"]:
        print(f" -  {e['key']:<40} excluded: {e['reason']}")
    print()
    print(record["explanation"])
    if why_not:
        print(f"No stability check: {why_not}.")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")
    return 0
