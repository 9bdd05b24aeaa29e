"""The report's sections: each reads the report dict (and the extras it is given) and adds blocks to a Document.

``fig_list`` collects the figures a section adds ({file, caption}), recorded in report.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from medtl.errors import MedtlError
from medtl.evaluation import figures as fig
from medtl.evaluation.embedding import Embedding
from medtl.evaluation.evaluate import CLASS_METRICS, SAME_IN_EVERY_RUN, SHOWN_RESOLUTION
from medtl.evaluation.metrics import DEFINITIONS
from medtl.evaluation.predictions import TRAINING_MEAN
from medtl.evaluation.report.document import Document, figure_name

NAMES = {
    "auroc": "AUROC", "auprc": "AUPRC", "sensitivity": "Sensitivity", "specificity": "Specificity",
    "ppv": "PPV", "npv": "NPV", "f1": "F1", "accuracy": "Accuracy", "balanced_accuracy": "Balanced acc.",
    "kappa": "Cohen's kappa", "mcc": "MCC", "brier": "Brier", "ece": "ECE", "mce": "MCE",
    "mae": "MAE", "rmse": "RMSE", "r2": "R²", "pearson_r": "Pearson r",
}  # fmt: skip
TABLES = {
    "classification": [
        ("Discrimination", ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv", "f1")),
        ("Agreement and calibration", ("accuracy", "balanced_accuracy", "kappa", "mcc", "brier", "ece", "mce")),
    ],
    "regression": [("Regression", ("mae", "rmse", "r2", "pearson_r"))],
}
HEADLINE = {"binary": "auroc", "multiclass": "auroc", "regression": "mae"}


# ----------------------------------------------------------------------------- formatting


# Intervals that are not the report's bootstrap, where a metric at 0 or 1 cannot vary under it: mark and note
SCORE_INTERVALS = {  # in the order their letters are written ("S N": a run's Newcombe interval for all seeds)
    SAME_IN_EVERY_RUN: ("S", "S: every run scored the same, so a t-interval over seeds would have no width; the "
                               "interval is the representative run's over the test cases"),
    "Wilson": ("W", "W: Wilson score interval, for a proportion of 0 or 1, which the bootstrap cannot vary (it treats "
                    "the cases as independent)"),
    "Newcombe": ("N", "N: Newcombe's score interval (2006, method 5), for an AUROC of 0 or 1, which the bootstrap "
                      "cannot vary, or where it is wider than the bootstrap's with fewer than 50 cases in a class, "
                      "where the bootstrap's is too narrow (it treats the cases as independent)"),
}


NO_WIDTH = ("D", "D: the interval has no width at the decimals shown (every resample, or every seed, scored about "
                 "the same); that is no certainty (an AUPRC, kappa or MCC of 1 on few cases)")


def interval_mark(m: dict | None) -> str:
    """The letters of a metric's interval when it is not the report's usual one ("S", "W", "N", or "S N":
    a run's Newcombe interval standing in for seeds that all scored the same), "D" for an interval with no
    width at the three decimals shown, or ""."""
    m = m or {}
    if m.get("ci_low") is not None and abs(m["ci_high"] - m["ci_low"]) < SHOWN_RESOLUTION:
        return NO_WIDTH[0]
    method = m.get("ci_method") or ""
    return " ".join(mark for name, (mark, _) in SCORE_INTERVALS.items() if name in method)


def _marks_note(metrics) -> str:
    """The caption's note on the marks that appear among ``metrics`` (metric dicts)."""
    marks = {letter for m in metrics for letter in interval_mark(m).split()}
    return "".join(f"; {note}" for mark, note in (*SCORE_INTERVALS.values(), NO_WIDTH) if mark in marks)


def _fmt(m: dict | None, foot: list[str] | None = None, where: str = "") -> str:
    """``0.853 (0.801-0.897)``; over seeds ``0.853 ± 0.012 (...)``; undefined values point to a footnote."""
    if m is None:
        return "–"
    if m.get("value") is None:
        if foot is not None:
            foot.append(f"{where}: {m.get('reason', 'undefined')}")
            return f"undefined [{len(foot)}]"
        return "undefined"
    s = f"{m['value']:.3f}"
    if m.get("std") is not None:
        s += f" ± {m['std']:.3f}"
    if m.get("outside_interval"):
        s += " *"
    if m.get("ci_low") is not None:
        mark = f" {interval_mark(m)}" if interval_mark(m) else ""
        s += f"\n({m['ci_low']:.3f}–{m['ci_high']:.3f}{mark})"  # the interval goes on a second line in HTML
    return s


# thresholds not chosen on validation, in words (evaluate.PREDICT_RULE: the one predict applied)
RULE_WORDS = {"model": "medtl predict's", "default": "default"}


def _fmt_threshold(t: dict | None) -> str:
    if t is None:
        return "–"
    if t.get("rule") == "argmax":
        return "argmax"
    if t.get("value") is None and t.get("per_run"):
        vals = [v for v in t["per_run"].values() if v is not None]
        return f"{t['rule']}: {min(vals):.3g}–{max(vals):.3g} per run" if vals else t["rule"]
    rule = RULE_WORDS.get(t["rule"], t["rule"]) if t.get("target") is None else f"{t['rule']} ≥ {t['target']:g}"
    src = f" on {t['chosen_on']}" if t.get("chosen_on") else ""
    return f"{t['value']:.4g} ({rule}{src})"


def _label(strategy: str, entry: dict) -> str:
    lf = entry.get("label_fraction")
    return strategy if lf is None else f"{strategy} @ {lf:g}"


def _rep_run(entry: dict) -> dict:
    rid = entry["representative_run"]
    return next(r for r in entry["runs"] if r["run_id"] == rid)


def _test_sets(t: dict) -> list[tuple[str, dict]]:
    """(who, representative run) per distinct test set (its size and class counts or label summary): one, with
    who "", when every strategy was scored on the same set; a merged report may hold several."""
    groups: dict[str, tuple[list[str], dict]] = {}
    for s, e in t["strategies"].items():
        r = _rep_run(e)
        summary = {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in (r.get("label_summary") or {}).items()}
        # label summaries rounded: float32 and float64 copies of one test set's labels are one set
        key = json.dumps([r["n_test"], r.get("n_test_patients"), (r.get("prevalence") or {}).get("test"),
                          summary], sort_keys=True)  # fmt: skip
        groups.setdefault(key, ([], r))[0].append(_label(s, e))
    if len(groups) == 1:
        return [("", next(iter(groups.values()))[1])]
    return [(", ".join(names), r) for names, r in groups.values()]


def _patients(rep: dict) -> str:
    """' from N patients', or what stands in for patient ids when there are none."""
    units = rep.get("n_test_patients")
    if rep.get("near_copy_units"):  # the bootstrap's units are fewer than the images: say what they are
        who = "images" if rep.get("patient_ids_per_image") else "patients, or images without one"
        return f" in {units} bootstrap units ({who}, with near-copies of one image joined into one unit)"
    if rep.get("patient_ids_per_image"):
        return " (no patient ids: each image counts as its own patient in the bootstrap)"
    return f" from {units} patients" if units else ""


def _no_skill_line(r: dict, who: str = "") -> str | None:
    """The values of a constant prediction on a run's test set: binary, the majority class and the prevalence;
    regression, the validation (else test) mean. Reports from before they were recorded: None."""
    ns = r.get("no_skill")
    if not ns:
        return None
    if "mae" in ns:  # regression
        return (f"{who + ': ' if who else ''}MAE {ns['mae']:.3g}, RMSE {ns['rmse']:.3g} (always {ns['constant']:.3g}, "
                f"the {'validation' if ns['from'] == 'val' else 'test'} mean)")
    return (f"{who + ': ' if who else ''}accuracy {ns['accuracy']:.3f} (always the majority class), "
            f"Brier {ns['brier']:.3f} (always the prevalence {ns['prevalence']:.3f}), AUPRC {ns['auprc']:.3f} "
            f"(the prevalence), AUROC {ns['auroc']:.1f}")


def _against_training_mean(strategies: dict) -> str:
    """Which strategies predict worse (by MAE) than the constant that is the training targets' mean."""
    base = (strategies[TRAINING_MEAN]["metrics"].get("mae") or {}).get("value")
    maes = {s: (e["metrics"].get("mae") or {}).get("value") for s, e in strategies.items() if s != TRAINING_MEAN}
    worse = [s for s, v in maes.items() if v is not None and base is not None and v >= base]
    shown = "n/a" if base is None else f"{base:.3g}"
    text = (f"`{TRAINING_MEAN}` predicts the mean of the labelled training targets for every test case (MAE "
            f"{shown}): a model with a higher MAE has learned nothing a constant would not give. ")
    return text + (f"Here {len(worse)} of {len(maes)} strategies are worse than it: {', '.join(worse)}." if worse
                   else f"Here every strategy ({len(maes)}) has a lower MAE.")


# ----------------------------------------------------------------------------- sections


def task_section(doc: Document, name: str, t: dict, fig_list: list[dict]) -> None:
    kind = t["kind"]
    desc = kind if kind == "regression" else f"{kind}; classes {', '.join(t['classes'])}"
    if t.get("positive_class"):
        desc += f"; positive class **{t['positive_class']}**"
    doc.h(2, f"Task: {name}")
    doc.p(f"Kind: {desc}.")
    strategies = t["strategies"]
    for who, rep in _test_sets(t):
        of = f" ({who})" if who else ""
        if kind != "regression":
            prev = rep["prevalence"]["test"]
            patients = _patients(rep)
            counts = ", ".join(f"{c} {v['n']} ({v['fraction']:.1%})" for c, v in prev.items())
            doc.p(f"Test prevalence{of}: {counts} of {rep['n_test']} test cases{patients}.")
        else:
            s = rep["label_summary"]
            doc.p(f"Test labels{of}: mean {s['mean']:.3g}, range {s['min']:.3g}–{s['max']:.3g}, n = {rep['n_test']}.")
    doc.bullets(t.get("notes", []))

    foot: list[str] = []
    group = "regression" if kind == "regression" else "classification"
    seeds = any(e["n_runs"] > 1 for e in strategies.values())
    for title, metrics in TABLES[group]:
        rows = []
        for s, e in strategies.items():
            row = [_label(s, e), str(e["n_runs"]), str(e["n_test"])]
            row += [_fmt(e["metrics"].get(m), foot, f"{s}, {NAMES[m]}") for m in metrics]
            if title != "Agreement and calibration" and kind != "regression":
                row.append(_fmt_threshold(e.get("threshold")))
            rows.append(row)
        header = ["Strategy", "Runs", "n test"] + [NAMES[m] for m in metrics]
        if title != "Agreement and calibration" and kind != "regression":
            header.append("Threshold")
        cap = f"Value ({doc.level} CI)"
        if seeds:
            cap += ("; with several runs: mean ± SD over seeds and a t-interval of that mean, which covers the "
                    "training randomness on this one test set, not the sampling of the test cases (each run's "
                    "bootstrap interval over the test cases is in the Runs table)"
                    + ("; a thresholded metric is then the mean over runs, each at its own threshold"
                       if kind == "binary" else ""))
        cap += _marks_note(e["metrics"].get(m) for e in strategies.values() for m in metrics)
        if any(e["metrics"].get(m, {}).get("outside_interval") for e in strategies.values() for m in metrics):
            cap += ("; * the estimate lies outside its bootstrap interval: the statistic is biased upwards under "
                    "resampling (binned ECE/MCE are, when bins hold few cases)")  # fmt: skip
        doc.h(3, title)
        doc.table(header, rows, cap)
    if foot:
        doc.p("Undefined values:")
        doc.bullets([f"[{i + 1}] {f}" for i, f in enumerate(foot)])
    no_skill = [line for who, r in _test_sets(t) if (line := _no_skill_line(r, who))]
    if no_skill:
        doc.p("**No-skill references** on the same test cases, what a prediction that ignores the image scores "
              "(read the model's values against them): " + "; ".join(no_skill) + ".")  # fmt: skip

    if kind == "regression" and TRAINING_MEAN in strategies:
        doc.p(_against_training_mean(strategies))
    if kind == "multiclass":
        _per_class_table(doc, strategies)
    if kind != "regression":
        _calibration_table(doc, strategies)
    _runs_table(doc, strategies, kind)
    _fraction_section(doc, name, t, fig_list)
    _comparisons(doc, t)
    _task_figures(doc, name, t, fig_list)


def _per_class_table(doc: Document, strategies: dict) -> None:
    doc.h(3, "Per class (one-vs-rest)")
    foot: list[str] = []
    rows = []
    for s, e in strategies.items():
        for c, ms in e["per_class"].items():
            rows.append([_label(s, e), c] + [_fmt(ms[m], foot, f"{s}, {c}, {NAMES[m]}") for m in CLASS_METRICS])
    note = _marks_note(ms.get(m) for e in strategies.values() for ms in e["per_class"].values() for m in CLASS_METRICS)
    doc.table(["Strategy", "Class"] + [NAMES[m] for m in CLASS_METRICS], rows,
              f"Value ({doc.level} CI), one class against the rest" + note)
    if foot:
        doc.bullets([f"[{i + 1}] {f}" for i, f in enumerate(foot)])


def _calibration_table(doc: Document, strategies: dict) -> None:
    rows = []
    for s, e in strategies.items():
        r = _rep_run(e)
        c = r["calibration"]
        scaled = e.get("calibration_scaled") or {}
        temp = f"{c['temperature']:.3f}" if c["temperature"] is not None else "not fitted (no validation rows)"
        rows.append([_label(s, e), temp, _fmt(e["metrics"]["ece"]), _fmt(scaled.get("ece")),
                     _fmt(e["metrics"]["brier"]), _fmt(scaled.get("brier"))])  # fmt: skip
    doc.h(3, "Calibration and temperature scaling")
    first = _rep_run(next(iter(strategies.values())))["calibration"]
    star = any(" *" in c for r in rows for c in r)
    doc.table(["Strategy", "Temperature T", "ECE", "ECE after T", "Brier", "Brier after T"], rows,
              f"ECE: {first['quantity']}, {first['binning']}. T fitted on validation (NLL), applied to test; "
              "T > 1 means the model was over-confident; T shown for the representative run"
              + ("; * the estimate lies outside its bootstrap interval: binned ECE is biased upwards under "
                 "resampling when bins hold few cases" if star else "")
              + _marks_note(m for e in strategies.values() for m in (
                  e["metrics"]["ece"], e["metrics"]["brier"], *((e.get("calibration_scaled") or {}).values()))))


def _runs_table(doc: Document, strategies: dict, kind: str) -> None:
    if all(len(e["runs"]) == 1 for e in strategies.values()):
        return
    m = HEADLINE[kind]
    rows, hidden = [], 0
    for s, e in strategies.items():
        for r in e["runs"]:
            if r["label_fraction"] != e["label_fraction"]:
                hidden += 1  # other label fractions: summarised in the label-fraction table
                continue
            lf = "–" if r["label_fraction"] is None else f"{r['label_fraction']:g}"
            rows.append([s, r["run_id"], "–" if r["seed"] is None else str(r["seed"]), lf, str(r["n_test"]),
                         _fmt(r["metrics"][m]), _fmt_threshold(r["threshold"])])  # fmt: skip
    doc.h(3, "Runs")
    more = f"; {hidden} runs at smaller label fractions are in report.json" if hidden else ""
    note = _marks_note(r["metrics"][m] for e in strategies.values() for r in e["runs"]
                       if r["label_fraction"] == e["label_fraction"])  # the rows shown
    doc.table(["Strategy", "Run", "Seed", "Label fraction", "n test", NAMES[m], "Threshold"], rows,
              f"Each run with its own bootstrap interval{more}{note}")  # fmt: skip


def _fraction_section(doc: Document, name: str, t: dict, fig_list: list[dict]) -> None:
    with_fractions = {s: e for s, e in t["strategies"].items() if e.get("by_label_fraction")}
    if not with_fractions:
        return
    m = HEADLINE[t["kind"]]
    rows, series = [], []
    for s, e in with_fractions.items():
        xs, ys, lo, hi = [], [], [], []
        for g in e["by_label_fraction"]:
            if g["label_fraction"] is None:
                continue
            v = g["metrics"][m]
            rows.append([s, f"{g['label_fraction']:g}", str(g["n_runs"]), _fmt(v)])
            xs.append(g["label_fraction"])
            ys.append(v["value"])
            lo.append(v["ci_low"])
            hi.append(v["ci_high"])
        series.append({"label": s, "x": xs, "y": ys, "low": lo, "high": hi})
    doc.h(3, "Label-fraction curve")
    note = _marks_note(g["metrics"][m] for e in with_fractions.values() for g in e["by_label_fraction"]
                       if g["label_fraction"] is not None)  # the rows shown
    doc.table(["Strategy", "Label fraction", "Runs", NAMES[m]], rows, note.removeprefix("; ") or None)
    baseline = next((s for s in with_fractions if s.split("/")[-1] == "scratch"), None)
    png = fig.label_fraction_figure(series, NAMES[m], f"{name}: {NAMES[m]} by label fraction", baseline=baseline)
    bands = ("band: t-interval over seeds, or a run's interval over the test cases for a single run or where "
             "every seed scored the same (marked in the table)"
             + (f"; with more than six strategies only {baseline}'s band (black) is drawn" if len(series) > 6
                and baseline else "; with more than six strategies no bands are drawn" if len(series) > 6 else ""))
    add_figures(doc, fig_list, [(f"{name}_label_fraction.png", png, f"{name}: {NAMES[m]} against the fraction of "
                                f"target labels used ({bands}; the table gives every interval)")])  # fmt: skip


def _comparisons(doc: Document, t: dict) -> None:
    if not t["comparisons"]:
        return
    rows, hidden = [], 0
    regression = t["kind"] == "regression"
    headline = {e["label_fraction"] for e in t["strategies"].values()}
    for c in t["comparisons"]:
        if c["label_fraction"] not in headline:
            hidden += 1
            continue
        seed = "–" if c.get("seed") is None else str(c["seed"])
        # a pair that was not tested (note) still shows its AUROCs when they were computed
        key = "mae" if regression else "auc"
        aucs = "–" if c.get(f"{key}_a") is None else f"{c[f'{key}_a']:.3f} vs {c[f'{key}_b']:.3f}"
        p, p_holm = (("–" if v is None else f"{v:.3f}" if v >= 1e-3 else "<0.001")
                     for v in (c.get("p_value"), c.get("p_holm")))
        diff = "–" if c.get("p_value") is None else f"{c['difference']:+.3f} ± {c['se']:.3f}"
        rows.append([c["strategy_a"], c["strategy_b"], seed, aucs, diff, p, p_holm, c.get("note") or ""])
    # run ids are long and say again what A, B and the seed say: they stay in report.json, and the Note
    # column only appears when a pair has one, so the table fits the page instead of scrolling sideways
    header = ["A", "B", "Seed", "MAE A vs B" if regression else "AUROC A vs B", "Difference ± SE", "p", "p (Holm)",
              "Note"]
    n_tested = sum(c.get("p_value") is not None for c in t["comparisons"])
    if not any(r[-1] for r in rows):
        header, rows = header[:-1], [r[:-1] for r in rows]
    doc.h(3, "Pairwise comparison (" + ("paired t-test of absolute errors)" if regression else "DeLong)"))
    doc.table(header, rows,
              ("Paired t-test of the two runs' absolute errors on the same test cases (MAE A - MAE B), two-sided"
               if regression else "DeLong's test for two correlated AUROCs on the same test cases, two-sided")
              + "; runs paired by seed and label fraction (run ids in report.json); p uncorrected, p (Holm) adjusted "
              f"by Holm's step-down method over all {n_tested} tested comparisons of this task (report.json included)"
              + (f"; {hidden} comparisons at smaller label fractions are in report.json" if hidden else "")
              + ("; where cases share a patient or are near-copies of one image, DeLong's variance is "
                 "cluster-robust over those units (Obuchowski 1997), as the bootstrap resamples them"
                 if not regression and any(c.get("n_clusters") for c in t["comparisons"]) else "")
              + ("; the paired t-test takes the test cases as independent, so where some are near-copies of one "
                 "image (as here: the bootstrap resamples them as one unit) its p-values are somewhat too small"
                 if regression and _near_copies(t) else ""))  # fmt: skip


def _near_copies(t: dict) -> bool:
    """Whether the task's bootstrap joined near-copy groups (medtl.evaluation.evaluate._boot_info)."""
    def joined(boot: dict) -> bool:  # a report.json from before the flag says it in the unit's words
        return boot.get("near_copy_groups", "near-copy" in (boot.get("unit") or ""))

    return any(joined(r.get("bootstrap") or {}) for e in t["strategies"].values() for r in e.get("runs", []))


def add_figures(doc: Document, fig_list: list[dict], items):
    doc.figures_row(items)
    fig_list.extend({"file": f"figures/{figure_name(n)}", "caption": c} for n, _, c in items)


def _task_figures(doc: Document, name: str, t: dict, fig_list: list[dict]) -> None:
    strategies = t["strategies"]
    reps = {s: _rep_run(e) for s, e in strategies.items()}
    several_runs = any(e["n_runs"] > 1 or e.get("by_label_fraction") for e in strategies.values())
    note = ("representative run per strategy (largest label fraction, first seed)" if several_runs
            else "one run per strategy")
    doc.h(3, "Figures")
    if t["kind"] == "regression":
        png = fig.scatter_figure([{"label": s, "points": r["scatter"], "mae": r["metrics"]["mae"]}
                                  for s, r in reps.items()], f"{name}: predicted vs true", name)  # fmt: skip
        add_figures(doc, fig_list, [(f"{name}_scatter.png", png, f"{name}: predicted against true ({note})")])
        return
    items = []
    if t["kind"] == "binary":
        roc = [{**r["curves"]["roc"][0], "label": s, "auc": r["metrics"]["auroc"], "point": _operating_point(r)}
               for s, r in reps.items()]
        pr = [{**r["curves"]["pr"][0], "label": s, "ap": r["metrics"]["auprc"]} for s, r in reps.items()]
        n_test = ", ".join(sorted({str(r["n_test"]) for r in reps.values()}))
        items.append((f"{name}_roc.png", fig.roc_figure(roc, f"{name}: ROC ({t['positive_class']}), test n={n_test}"),
                      f"ROC curves on test with {doc.level} bootstrap bands; circle: the operating point at the "
                      f"stated threshold (its sensitivity and specificity); dotted: chance; {note}"))  # fmt: skip
        items.append((f"{name}_pr.png", fig.pr_figure(pr, f"{name}: precision-recall"),
                      f"Precision-recall curves with bootstrap bands; dotted: prevalence; {note}"))  # fmt: skip
    else:
        for s, r in reps.items():
            pcs = _rep_metrics(strategies[s], r)
            roc = [{**c, "label": c["class"], "auc": pcs[c["class"]]["auroc"]} for c in r["curves"]["roc"]]
            pr = [{**c, "label": c["class"], "ap": pcs[c["class"]]["auprc"]} for c in r["curves"]["pr"]]
            items.append((f"{name}_{s}_roc.png", fig.roc_figure(roc, f"{name} / {s}: ROC, one-vs-rest"),
                          f"{s}: one-vs-rest ROC per class with bootstrap bands"))  # fmt: skip
            items.append((f"{name}_{s}_pr.png", fig.pr_figure(pr, f"{name} / {s}: PR, one-vs-rest"),
                          f"{s}: one-vs-rest precision-recall per class"))  # fmt: skip
    rel = []
    for s, r in reps.items():
        c = r["calibration"]
        lines = [{"label": "raw", "reliability": c["reliability"], "ece": r["metrics"]["ece"]}]
        if c.get("reliability_scaled"):
            lines.append({"label": f"T = {c['temperature']:.2f}", "reliability": c["reliability_scaled"],
                          "ece": (c.get("scaled") or {}).get("ece"), "style": "--"})  # fmt: skip
        rel.append({"title": s, "lines": lines})
    xlabel = "predicted probability of " + t["positive_class"] if t["kind"] == "binary" else "top-label confidence"
    items.append((f"{name}_reliability.png", fig.reliability_figure(rel, f"{name}: reliability", xlabel),
                  f"Reliability diagrams ({reps[next(iter(reps))]['calibration']['binning']}); dashed: after "
                  "temperature scaling; marker size and lower row: cases per bin"))  # fmt: skip
    cms = [{"label": s, **r["confusion_matrix"]} for s, r in reps.items()]
    thr = ("at " + "; ".join(f"{s}: threshold {_fmt_threshold(r['threshold'])}" for s, r in reps.items())
           if t["kind"] == "binary" else "argmax")
    items.append((f"{name}_confusion.png", fig.confusion_figure(cms, f"{name}: confusion matrices (test)"),
                  f"Confusion matrices on test, {thr}; colour: fraction of the true class"))  # fmt: skip
    add_figures(doc, fig_list, items)


def _operating_point(run: dict) -> tuple[float, float, float] | None:
    """(FPR, TPR, threshold) of a binary run at its threshold, for the ROC figure."""
    thr, m = run.get("threshold") or {}, run.get("metrics") or {}
    sens, spec = (m.get("sensitivity") or {}).get("value"), (m.get("specificity") or {}).get("value")
    if thr.get("value") is None or sens is None or spec is None:
        return None
    return 1 - spec, sens, thr["value"]


def _rep_metrics(entry: dict, run: dict) -> dict:
    return run.get("per_class") or entry.get("per_class") or {}


def methods_section(doc: Document, report: dict) -> None:
    st = report["settings"]
    kinds = {t["kind"] for t in report["tasks"].values()}
    doc.h(2, "Methods")
    doc.p(f"Threshold-dependent metrics and temperature scaling are fitted on rows with split `{st['val_split']}` "
          f"and reported on rows with split `{st['test_split']}`; nothing is tuned on test.")  # fmt: skip
    if "binary" in kinds:
        doc.p("**Threshold (binary).** A case is called positive when its positive-class probability is ≥ the "
              f"threshold. {_threshold_methods(report)} Each strategy's threshold and where it came from are in "
              "the tables and notes.")  # fmt: skip
    if "multiclass" in kinds:
        doc.p("**Multiclass.** The predicted class is the most probable one; sensitivity, specificity, PPV, NPV, F1, "
              "AUROC and AUPRC are one-vs-rest per class and their unweighted (macro) mean.")  # fmt: skip
    used = set()
    for t in report["tasks"].values():
        used |= set(("mae", "rmse", "r2", "pearson_r") if t["kind"] == "regression" else
                    ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv", "f1", "accuracy",
                     "balanced_accuracy", "kappa", "mcc", "brier", "ece", "mce"))  # fmt: skip
    doc.p("**Metric definitions.**")
    doc.bullets([f"{NAMES[m]}: {DEFINITIONS[m]}" for m in NAMES if m in used])
    prev = []
    for name, t in report["tasks"].items():
        if t["kind"] != "regression":
            for who, r in _test_sets(t):
                prev.append(f"{name}{f' ({who})' if who else ''}: "
                            + ", ".join(f"{c} {v['fraction']:.1%}" for c, v in r["prevalence"]["test"].items()))
    if prev:
        doc.p("**Prevalence on test** (PPV, NPV and AUPRC depend on it; compare AUPRC with the prevalence): "
              + "; ".join(prev) + ".")  # fmt: skip
    doc.p(f"**Confidence intervals.** {st['ci_method']}. Resamples where a metric is undefined are left out of its "
          "interval (their count is in report.json). With several seeds of one strategy the table shows the mean, "
          "the standard deviation over seeds and a t-interval of the mean; each run's bootstrap interval is in the "
          "runs table and report.json.")  # fmt: skip
    if kinds - {"regression"}:
        fitted_to = {(r.get("calibration") or {}).get("temperature_fitted_to") for t in report["tasks"].values()
                     for e in t["strategies"].values() for r in e.get("runs", [])} - {None}
        scaled = ("the log-probabilities" if "logits" not in fitted_to else "the logits" if len(fitted_to) == 1
                  else "the logits (the log-probabilities of runs without logit columns)")
        doc.p(f"**Calibration.** Binary: positive-class probability against the observed positive rate; multiclass: "
              f"top-label confidence against accuracy; {st['n_bins']} equal-width bins on [0, 1]. ECE = Σ_b n_b/n · "
              "|observed_b − confidence_b|, MCE = max_b of the same gap over non-empty bins. Temperature scaling "
              f"divides {scaled} by one T fitted on validation by negative log-likelihood.")  # fmt: skip
        doc.p("**Comparisons.** DeLong's test (1988) for two correlated AUROCs on the same test cases, using "
              "mid-rank structural components; two-sided normal p-value. Multiclass: the same test for the "
              "difference of two macro one-vs-rest AUROCs, medtl's extension (medtl.evaluation.delong."
              "delong_macro_test): each case's structural components are averaged over the classes, with the "
              "cases of each true class as one sample; it agrees with a paired bootstrap of the difference "
              "(tests/evaluation/test_delong.py).")  # fmt: skip
    if "regression" in kinds:
        doc.p("**Comparisons.** The paired t-test of two runs' absolute errors on the same test cases: the mean of "
              "|a − y| − |b − y| is MAE A − MAE B, its standard error the sample standard deviation over √n; "
              "two-sided t p-value with n − 1 degrees of freedom.")  # fmt: skip
    doc.p("**Undefined values.** A metric whose denominator is zero on the test set (AUROC with one class, PPV with "
          "no positive calls, ...) is reported as undefined with the reason (null in report.json), never as a number.")


def _threshold_methods(report: dict) -> str:
    """How the binary thresholds of this report's runs were set, one sentence per way that was used."""
    used = {}  # (rule, target, chosen on) -> None, in order
    for t in report["tasks"].values():
        if t["kind"] == "binary":
            for e in t["strategies"].values():
                for r in e["runs"]:
                    thr = r.get("threshold") or {}
                    used[(thr.get("rule"), thr.get("target"), thr.get("chosen_on"))] = None
    out = []
    for rule, target, on in used:
        if rule == "youden":
            out.append(f"The threshold maximising Youden's J = sensitivity + specificity − 1 on `{on}`")
        elif rule == "sensitivity":
            out.append(f"The highest threshold reaching sensitivity ≥ {target:g} on `{on}`")
        elif rule == "specificity":
            out.append(f"The lowest threshold reaching specificity ≥ {target:g} on `{on}`")
    if out:  # rules chosen on validation
        out = [f"{'; or '.join(out)}, placed midway between the chosen validation score and the next lower one, "
               "and applied unchanged to test."]
    rules = {rule for rule, _, _ in used}
    if "model" in rules:
        out.append("Without validation rows (or with one class in them), the threshold medtl predict applied: "
                   "the `threshold` column of its results.csv, which is the model's stored threshold, or the one "
                   "given to predict's --threshold.")  # fmt: skip
    if "default" in rules:
        out.append("Without validation rows (or with one class in them) and no threshold from the predictions, "
                   "the default 0.5.")  # fmt: skip
    return " ".join(out)


def learning_curves(doc: Document, metrics_log, fig_list: list[dict]) -> dict:
    path = Path(metrics_log)
    try:
        if path.suffix.lower() == ".csv":
            log = pd.read_csv(path)
        else:
            text = path.read_text()
            log = pd.DataFrame(json.loads(text)) if text.lstrip().startswith("[") else pd.read_json(path, lines=True)
    except (OSError, ValueError) as err:
        raise MedtlError(f"cannot read metrics log: {err}", path) from err
    x = next((c for c in ("epoch", "step", "iteration") if c in log), None)
    if x is None:
        log = log.reset_index().rename(columns={"index": "row"})
        x = "row"
    by = next((c for c in ("run_id", "strategy") if c in log and log[c].nunique() > 1), None)
    colour = "strategy" if by == "run_id" and "strategy" in log else None
    # the losses and the validation metric the runs are judged by; the other log keys (loss terms, learning
    # rates, domain accuracy) are in the log for whoever debugs a method, not for a reader of the report.
    # Metrics that never change (a loss a method does not use) say nothing as curves.
    logged = [c for c in CURVES if c in log and pd.api.types.is_numeric_dtype(log[c])]
    if not logged:  # not a training log at all
        raise MedtlError(f"the metrics log has none of the columns {', '.join(CURVES)} to plot", path)
    metrics = [c for c in logged if log[c].nunique(dropna=True) > 1]
    metrics = [c for c in metrics if c in LOSSES] + [c for c in metrics if c not in LOSSES][:1]
    doc.h(2, "Learning curves")
    if not metrics:  # one epoch (or values that never moved): a point is no curve
        doc.p(f"No curve to draw: every logged value ({', '.join(CURVES[c] for c in logged)}) has a single value "
              f"per run ({len(log)} row(s) in {path.name}).")
        return {"source": str(path), "x": x, "metrics": [], "by": by, "colour": colour}
    named = log.rename(columns=CURVES)
    png = fig.learning_curve_figure(named, x, [CURVES[m] for m in metrics], by, colour)
    panels = ", ".join(CURVES[m] for m in metrics)
    caption = (f"{panels[0].upper()}{panels[1:]} against {x}" + (f"; one line per {by}" if by else "")
               + (f", coloured by {colour}" if colour else "")
               + ". By default medtl's trainer keeps the epoch with the lowest validation loss (training loss "
               "without a validation split; in unsupervised adaptation the validation split is the source's and "
               "the pipeline's train.selector picks the epoch); linear probes are fitted, not trained by epoch, "
               "and have no curve")
    add_figures(doc, fig_list, [("learning_curves.png", png, caption)])
    return {"source": str(path), "x": x, "metrics": metrics, "by": by, "colour": colour}


# the log columns a report plots, with the panel titles; at most one non-loss metric (the first found)
CURVES = {"train_loss": "training loss", "val_loss": "validation loss", "val_auroc": "validation AUROC",
          "val_mae": "validation MAE", "val_accuracy": "validation accuracy"}
LOSSES = ("train_loss", "val_loss")


def embedding_section(doc: Document, emb: Embedding, fig_list: list[dict]) -> dict:
    """The domain embedding computed by evaluation.embedding; what report.json records of it."""
    doc.h(2, "Feature embedding")
    add_figures(doc, fig_list, [("embedding.png", fig.embedding_figure(emb.xy, emb.domains, emb.title, emb.axis_labels),
                                 f"{emb.title}, coloured by domain (n = {len(emb.xy)}){emb.detail}")])  # fmt: skip
    return emb.info


def gradcam_section(doc: Document, pngs, fig_list: list[dict]) -> tuple[list[str], list[dict]]:
    # PNG overlays, plus any deletion-test JSON (explain.save_deletion_test) whose number is printed
    # with them: a map is only worth showing with evidence that it marks what the model uses.
    items, tests = [], []
    for p in pngs:
        p = Path(p)
        if p.is_file() and p.suffix.lower() == ".json":
            from medtl.evaluation.explain import load_deletion_test  # lazy: it imports torch

            tests.append((p, load_deletion_test(p)))
            continue
        if not p.is_file() or p.suffix.lower() != ".png":
            raise MedtlError("Grad-CAM inputs must be existing .png overlays or deletion-test .json files", p)
        items.append((f"gradcam_{p.name}", p.read_bytes(), f"Grad-CAM: {p.stem}"))
    doc.h(2, "Grad-CAM examples")
    doc.p("Class activation maps (MONAI Grad-CAM) over the input: warm and opaque where the evidence for the "
          "explained class is strongest; for volumes, three orthogonal slices through the map's peak (+). They "
          "show where the model found evidence, not whether it was right.")  # fmt: skip
    if tests:
        from medtl.evaluation.explain import deletion_summary

        doc.p("**Faithfulness of the maps**")
        doc.bullets([f"`{p.name}`: {deletion_summary(t)}" for p, t in tests])
    else:
        doc.p("No deletion test was given with these maps, so nothing here shows that they mark what the model "
              "uses (explain.deletion_test measures it).")  # fmt: skip
    add_figures(doc, fig_list, items)
    faith = [{"file": str(p), **{k: t[k] for k in ("n", "fraction", "control", "fill", "class_idx", "level",
                                                   "drop_top", "drop_random", "difference", "top_larger")}}
             for p, t in tests]  # fmt: skip
    return [str(p) for p in pngs], faith


# ----------------------------------------------------------------------------- what was run


# below these, a test set's confidence intervals are too wide to separate strategies
SMALL_TEST_N = 50
SMALL_TEST_POSITIVES = 10


def what_was_run(doc: Document, report: dict, out: Path) -> dict:
    """The report's opening: the data (and whether it is synthetic), source -> target, encoder, epochs and
    image size from the run folder's config.yaml (a pipeline run), then each task's test set, with a
    warning when it is too small for the intervals to mean much."""
    config_path = out / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else None
    items = _config_lines(config) if config else []
    warnings = []
    for name, t in report["tasks"].items():
        for who, rep in _test_sets(t):  # a merged report may hold several test sets: each its own line
            n, patients = rep["n_test"], rep.get("n_test_patients")
            label = ", ".join(w for w in (name if len(report["tasks"]) > 1 else "", who) if w)
            where = f"test set ({label})" if label else "test set"
            size = f"n = {n}" + (_patients(rep) if patients and (patients != n or rep.get("patient_ids_per_image")
                                                                 or rep.get("near_copy_units")) else "")
            if t["kind"] == "regression":
                items.append(f"**{where.capitalize()}:** {size}.")
                few = None
            else:
                prev = rep["prevalence"]["test"]
                items.append(f"**{where.capitalize()}:** {size}; "
                             + ", ".join(f"{c} {v['n']} ({v['fraction']:.0%})" for c, v in prev.items()) + ".")
                # binary: the positive class; multiclass: the rarest class (its one-vs-rest metrics are the weakest)
                cls = t.get("positive_class") or min(prev, key=lambda c: prev[c]["n"])
                few = (cls, prev[cls]["n"])
            if n < SMALL_TEST_N or (few and few[1] < SMALL_TEST_POSITIVES):
                warnings.append(_small_test_warning(name if not who else f"{name} ({who})", t, n, few))
    doc.h(2, "What was run")
    doc.bullets(items)
    for w in warnings:
        doc.warn(w)
    return {"config": str(config_path) if config else None, "lines": items, "warnings": warnings}


def _config_lines(c: dict) -> list[str]:
    src, tgt, enc, pre, train = c["source"], c["target"], c["encoder"], c["pretrain"], c["train"]
    data = ("**synthetic** images generated by medtl (not patient data): numbers below say whether the pipeline "
            "works, not how well a method does on real images") if c.get("synthetic") else (
            "images read through the source and target manifests (next line)")
    lines = [f"**Pipeline:** {c['name']}" + (f": {c['description']}" if c.get("description") else ""),
             f"**Data:** {data}.",
             f"**Source -> target:** `{Path(src['manifest']).stem}` -> `{Path(tgt['manifest']).stem}`"
             + ("; target labels used for evaluation only (unsupervised adaptation)" if c.get("unlabelled_target") else "")
             + "."]
    lift = f", lifted to 3D by {enc['lift']}" if enc.get("lift") not in (None, "none") else ""
    start = (f"weights from {pre['checkpoint']}" if pre.get("checkpoint") else
             f"pretrained on the source ({pre['mode']}, {pre['epochs']} epochs)")
    lines.append(f"**Encoder:** {enc['arch']}{lift}; {start}.")
    strategies = [s["label"] or s["name"] for s in c["strategies"]]
    steps = (f" (at least {train['min_steps']} optimiser steps: more epochs where few labels make an epoch short)"
             if train.get("min_steps") else "")
    lines.append(f"**Transfer:** {train['epochs']} epochs per run{steps}, batch {train['batch_size']}; "
                 f"{len(strategies)} strategies ({', '.join(strategies)}); "
                 + (f"labelled training rows {', '.join(map(str, c['label_counts']))}" if c.get("label_counts")
                    else f"label fractions {', '.join(f'{f:g}' for f in c['label_fractions'])}")
                 + f"; seeds {', '.join(map(str, c['seeds']))}"
                 + "".join(f" ({n} at label fraction {float(f):g})"
                           for f, n in (c.get("seeds_per_fraction") or {}).items())
                 + ".")
    lines.append(f"**Image size:** source {_size(src)}, target {_size(tgt)}.")
    return lines


def _size(spec: dict) -> str:
    if spec.get("volume_shape"):
        return "volumes " + "x".join(map(str, spec["volume_shape"])) + (
            f" at {'x'.join(f'{s:g}' for s in spec['spacing'])} mm" if spec.get("spacing") else "")
    if spec.get("image_size"):
        return f"{spec['image_size']}x{spec['image_size']} px"
    return "the preset's default (2D 128x128 px; 3D 80x96x80 at 2 mm)"


def _small_test_warning(name: str, t: dict, n: int, few: tuple[str, int] | None) -> str:
    m = HEADLINE[t["kind"]]
    # the test cases' sampling: each run's bootstrap interval (a seed t-interval is narrow however few cases)
    widths = [(v["ci_high"] - v["ci_low"], v) for e in t["strategies"].values() for r in (e.get("runs") or [e])
              if (v := (r.get("metrics") or {}).get(m)) and v.get("ci_low") is not None]
    width = max(widths, key=lambda w: w[0], default=None)
    spread = (f"; here one run's bootstrap {NAMES[m]} interval over the test cases reaches "
              f"{width[1]['ci_low']:.2f}–{width[1]['ci_high']:.2f}" if width else "")
    counted = f" with {few[1]} {few[0]}" if few else ""
    tested = [c for c in t.get("comparisons") or [] if c.get("p_holm") is not None]
    resolved = sum(c["p_holm"] < 0.05 for c in tested)
    if len(t["strategies"]) < 2:
        verdict = "Read the model's values with their intervals, not as settled numbers."
    elif resolved:  # the paired test on the same cases resolves what overlapping intervals do not
        verdict = (f"Compare strategies by the paired tests, not by their overlapping intervals: {resolved} of "
                   f"{len(tested)} paired comparison(s) resolve a difference (Holm-adjusted p < 0.05); the rest "
                   "of the ranking is unsettled.")
    else:
        verdict = ("No paired test resolves a difference between strategies on this test set"
                   + ("" if tested else " (none could be run)") + ": read the ranking as unsettled.")
    return (f"The test set of task {name} is small (n = {n}{counted}; below {SMALL_TEST_N} cases or "
            f"{SMALL_TEST_POSITIVES} of a class the intervals are wide{spread}). " + verdict)
