"""`medtl recommend`: rank (source, encoder, strategy) options for a target from their scores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medtl.cli.output import output_file


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


def _read_json(path: Path, what: str):
    from medtl.errors import MedtlError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MedtlError(f"{what} file not found", path) from None
    except json.JSONDecodeError as err:
        raise MedtlError(f"{what} is not valid JSON: {err}", path) from None


def load_candidates(path: Path) -> tuple[dict, list[dict]]:
    """Target description and candidates, with ``assessment`` files flattened into ``scores``."""
    from medtl.errors import MedtlError

    data = _read_json(path, "candidates")
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
            a = _read_json(where, "assessment")
            if not isinstance(a, dict) or not ({"distances", "transferability"} & set(a)):
                keys = ", ".join(map(str, a)) if isinstance(a, dict) else type(a).__name__
                raise MedtlError("not the similarity.json of one source-target pair (medtl similarity --source S "
                                 f"--target T --out DIR writes one); this file holds {keys}", where)
            scores = {**a.get("distances", {}), **a.get("transferability", {})}
            c["scores"] = {**scores, **c.get("scores", {})}
        out.append(c)
    return dict(data.get("target") or {}), out


def run(args) -> int:
    from medtl.errors import MedtlError
    from medtl.similarity.recommend import recommend

    path = output_file(args.out, args.json, "recommendation.json")  # a bad --out is refused before any work
    target, candidates = load_candidates(args.candidates)
    if args.target:
        target = _read_json(args.target, "target")
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
    record = recommend(target, candidates, weights)
    for row in record["ranking"]:
        print(f"{row['rank']:>2}. {row['key']:<40} composite {row['composite']:.3f}  {'; '.join(row['reasons'])}")
    for e in record["excluded"]:
        print(f" -  {e['key']:<40} excluded: {e['reason']}")
    print()
    print(record["explanation"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")
    return 0
