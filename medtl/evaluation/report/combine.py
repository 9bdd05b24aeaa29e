"""Merging reports: several report.json files and predictions tables into one comparison report."""

from __future__ import annotations

import copy
import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medtl import __version__
from medtl.errors import MedtlError
from medtl.evaluation.batch_results import evaluate_files
from medtl.evaluation.evaluate import EvalSettings, load_report
from medtl.evaluation.report.render import output_folder, render_report
from medtl.evaluation.report.schema import Report


# The settings that change a report's numbers. model_threshold is left out: each model's results bring their
# own, and every strategy's threshold entry says which it used.
COMPARED_SETTINGS = ("val_split", "test_split", "threshold_rule", "target", "positive_class", "n_boot", "seed",
                     "level", "n_bins")


def _source(rep: dict) -> str:
    return (rep.get("sources") or ["report"])[0]


def combine_reports(reports: Sequence[dict | Report]) -> dict:
    """Merge report dicts into one: tasks joined, clashing strategy names suffixed with their source."""
    if not reports:
        raise MedtlError("no reports to combine", "reports")
    reports = [r.to_dict() if isinstance(r, Report) else r for r in reports]
    out = copy.deepcopy(reports[0])
    many = len(reports) > 1

    def notes_of(k: int, rep: dict) -> list[str]:  # merged, an input's notes say whose they are
        return [f"input {k + 1} ({_source(rep)}): {n}" if many else n for n in rep.get("notes", [])]

    out["sources"], out["notes"] = list(out.get("sources", [])), notes_of(0, reports[0])
    if len(reports) > 1:  # the merge is made now, by this medtl; each input's own time is in its report.json
        out["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        out["medtl_version"] = __version__
    first = Path(_source(reports[0])).stem
    for k, rep in enumerate(reports[1:], start=1):
        src = Path(_source(rep)).stem  # appended to clashing strategy names
        out["sources"] += rep.get("sources", [])
        out["notes"] += notes_of(k, rep)
        differ = [f"{k} {rep['settings'].get(k)!r} (in {_source(reports[0])}: {out['settings'].get(k)!r})"
                  for k in COMPARED_SETTINGS if rep["settings"].get(k) != out["settings"].get(k)]
        if differ:
            out["notes"].append(f"{_source(rep)} was evaluated with other settings: {'; '.join(differ)}")
        for name, t in rep["tasks"].items():
            if name not in out["tasks"]:
                out["tasks"][name] = copy.deepcopy(t)
                continue
            mine = out["tasks"][name]
            if (mine["kind"], mine["classes"]) != (t["kind"], t["classes"]):
                raise MedtlError(f"task {name!r} has kind/classes {mine['kind']} {mine['classes']} in one input and "
                                 f"{t['kind']} {t['classes']} in another", src)  # fmt: skip
            renamed = {}
            for s, e in t["strategies"].items():
                # a clash takes the input's file name; inputs from one file (e.g. with and without --exclude)
                # are told apart by their order
                names = [s, *([f"{s} [{src}]"] if src != first else []), f"{s} [input {k + 1}]"]
                key = next((n for n in names if n not in mine["strategies"]), names[-1])
                mine["strategies"][key] = copy.deepcopy(e)
                renamed[s] = key
            for c in copy.deepcopy(t["comparisons"]):  # an input's tests name its strategies as the table does
                c["strategy_a"], c["strategy_b"] = renamed.get(c["strategy_a"], c["strategy_a"]), renamed.get(
                    c["strategy_b"], c["strategy_b"])
                mine["comparisons"].append(c)
            mine["notes"] += [n for n in t.get("notes", []) if n not in mine["notes"]]
    if len(reports) > 1:
        out["notes"].append("DeLong comparisons need predictions on the same cases: comparisons across separate "
                            "report.json inputs are not made; pass prediction files to compare them")  # fmt: skip
    out.pop("figures", None)
    out.pop("extras", None)
    return out


def combine(inputs: Sequence, out_dir: str | Path, *, settings: EvalSettings | None = None, labels=None,
            exclude=None, **kwargs) -> dict[str, Path]:
    """``medtl report``: predictions tables and predict's results.csv files (evaluated together, so DeLong
    compares them; ``labels``: the manifest for results.csv files without labels, as ``medtl evaluate
    --labels``; ``exclude``: cases left out of them, as ``medtl evaluate --exclude``) and report.json files
    merged into one comparison report. ``kwargs``: EvalSettings fields and render_report extras."""
    extras = {k: kwargs.pop(k) for k in ("metrics_log", "features", "embedding", "gradcam") if k in kwargs}
    output_folder(out_dir)  # before anything is computed
    preds, reports = [], []
    for item in inputs:
        if isinstance(item, (dict, Report)):
            reports.append(item)
        elif isinstance(item, pd.DataFrame) or Path(item).suffix.lower() in (".csv", ".parquet", ".pq"):
            preds.append(item)
        elif Path(item).suffix.lower() == ".json":
            reports.append(load_report(item))
        else:
            raise MedtlError("inputs must be predictions (.csv, .parquet) or report.json files", item)
    if preds:
        reports.insert(0, evaluate_files(preds, settings, labels, exclude=exclude, **kwargs))
    elif labels is not None:
        raise MedtlError("--labels is for medtl predict's results.csv; no results.csv was given", labels)
    elif exclude is not None:
        raise MedtlError("--exclude leaves cases out of prediction files; only report.json files were given "
                         "(each was made with its own exclusions)", exclude)
    return render_report(combine_reports(reports), out_dir, title="medtl comparison report", **extras)
