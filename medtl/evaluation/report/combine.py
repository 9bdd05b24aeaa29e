"""Merging reports: several report.json files and predictions tables into one comparison report."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medtl.errors import MedtlError
from medtl.evaluation.evaluate import EvalSettings, evaluate_predictions, load_report
from medtl.evaluation.report.render import render_report
from medtl.evaluation.report.schema import Report


def combine_reports(reports: Sequence[dict | Report]) -> dict:
    """Merge report dicts into one: tasks joined, clashing strategy names suffixed with their source."""
    if not reports:
        raise MedtlError("no reports to combine", "reports")
    reports = [r.to_dict() if isinstance(r, Report) else r for r in reports]
    out = copy.deepcopy(reports[0])
    out["sources"], out["notes"] = list(out.get("sources", [])), list(out.get("notes", []))
    for rep in reports[1:]:
        src = Path((rep.get("sources") or ["report"])[0]).stem
        out["sources"] += rep.get("sources", [])
        out["notes"] += [n for n in rep.get("notes", []) if n not in out["notes"]]
        if {k: v for k, v in rep["settings"].items()} != out["settings"]:
            out["notes"].append(f"{src}: evaluated with different settings ({rep['settings']['ci_method']}; "
                                f"threshold rule {rep['settings']['threshold_rule']})")  # fmt: skip
        for name, t in rep["tasks"].items():
            if name not in out["tasks"]:
                out["tasks"][name] = copy.deepcopy(t)
                continue
            mine = out["tasks"][name]
            if (mine["kind"], mine["classes"]) != (t["kind"], t["classes"]):
                raise MedtlError(f"task {name!r} has kind/classes {mine['kind']} {mine['classes']} in one input and "
                                 f"{t['kind']} {t['classes']} in another", src)  # fmt: skip
            for s, e in t["strategies"].items():
                key = s if s not in mine["strategies"] else f"{s} [{src}]"
                mine["strategies"][key] = copy.deepcopy(e)
            mine["comparisons"] += copy.deepcopy(t["comparisons"])
            mine["notes"] += [n for n in t.get("notes", []) if n not in mine["notes"]]
    if len(reports) > 1:
        out["notes"].append("DeLong comparisons need predictions on the same cases: comparisons across separate "
                            "report.json inputs are not made; pass prediction files to compare them")  # fmt: skip
    out.pop("figures", None)
    out.pop("extras", None)
    return out


def combine(inputs: Sequence, out_dir: str | Path, *, settings: EvalSettings | None = None, **kwargs) -> dict[str, Path]:
    """``medtl report``: predictions tables (evaluated together, so DeLong compares them) and report.json files
    merged into one comparison report. ``kwargs``: EvalSettings fields and render_report extras."""
    extras = {k: kwargs.pop(k) for k in ("metrics_log", "features", "embedding", "gradcam") if k in kwargs}
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
        reports.insert(0, evaluate_predictions(preds, settings, **kwargs))
    return render_report(combine_reports(reports), out_dir, title="medtl comparison report", **extras)
