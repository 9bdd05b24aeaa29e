"""medtl evaluate: a predictions table -> report.json, report.md, report.html (+ figures/).

Reads the evaluation's predictions tables and medtl predict's results.csv alike (same column names:
case_id, label, split, prob_<class>). For results.csv, rows whose status is not ok are skipped (and
counted), labels come from its label column or from --labels MANIFEST (joined by path); the binary threshold
is chosen on the validation rows, and without them the threshold predict applied (its threshold column) is
used. The output folder is created first: one that cannot be made is refused before anything is computed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medtl.errors import MedtlError


def add_settings_arguments(p: argparse.ArgumentParser) -> None:
    """Evaluation and rendering options shared by ``evaluate`` and ``report``."""
    g = p.add_argument_group("evaluation")
    g.add_argument("--val-split", default="val", help="split whose rows choose the threshold and temperature")
    g.add_argument("--test-split", default="test", help="split whose rows are reported")
    g.add_argument("--threshold-rule", default="youden", choices=["youden", "sensitivity", "specificity"],
                   help="how the binary operating threshold is chosen on the validation rows")
    g.add_argument("--target", type=float, help="target sensitivity/specificity for those rules, e.g. 0.9")
    g.add_argument("--positive-class", help="binary tasks: the positive class (default: the last prob_ column)")
    g.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    g.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    g.add_argument("--level", type=float, default=0.95, help="confidence level")
    g.add_argument("--bins", type=int, default=15, help="calibration bins")
    x = p.add_argument_group("report extras")
    x.add_argument("--metrics-log", help="training log (CSV or JSON lines) for learning curves")
    x.add_argument("--features", help="features for a domain embedding: .npz (features, domain) or CSV")
    x.add_argument("--embedding", default="pca", choices=["pca", "tsne"],
                   help="projection of --features to 2D for the domain embedding figure")
    x.add_argument("--gradcam", nargs="+", default=None, metavar="PNG", help="Grad-CAM PNGs to embed")


def settings_from_args(args):
    from medtl.evaluation.evaluate import EvalSettings

    return EvalSettings(val_split=args.val_split, test_split=args.test_split, threshold_rule=args.threshold_rule,
                        target=args.target, positive_class=args.positive_class, n_boot=args.n_boot,
                        seed=args.seed, level=args.level, n_bins=args.bins)  # fmt: skip


def extras_from_args(args) -> dict:
    return {"metrics_log": args.metrics_log, "features": args.features, "embedding": args.embedding,
            "gradcam": args.gradcam}  # fmt: skip


HEADLINE = ("auroc", "sensitivity", "specificity", "balanced_accuracy", "accuracy", "mae", "r2")


def fmt_metric(m: dict | None) -> str:
    """``0.853 [0.801, 0.897]``, saying which interval it is where it is not the line's usual one (the report's
    marks S, W, N and D)."""
    from medtl.evaluation.evaluate import FEW_FOR_THE_BOOTSTRAP, SAME_IN_EVERY_RUN, SHOWN_RESOLUTION

    if not m or m.get("value") is None:
        return "n/a" + (f" ({m['reason']})" if m and m.get("reason") else "")
    ci = f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" if m.get("ci_low") is not None else ""
    method = m.get("ci_method") or ""
    said = [text for key, text in (
        (SAME_IN_EVERY_RUN, "every seed scored the same: a run's interval over the test cases"),
        ("Wilson", "Wilson's score interval: the bootstrap cannot vary a proportion of 0 or 1"),
        ("Newcombe", "Newcombe's score interval: " + ("the bootstrap cannot vary an AUROC of 0 or 1" if
                                                      "does not vary" in method else
                                                      f"wider than the bootstrap's with under {FEW_FOR_THE_BOOTSTRAP} "
                                                      "cases in a class")),
    ) if key in method]
    if ci and m["ci_high"] - m["ci_low"] < SHOWN_RESOLUTION:
        said.append("no width at the decimals shown, which is no certainty")
    return f"{m['value']:.3f}{ci}" + "".join(f" ({text})" for text in said)


def summary_lines(report: dict) -> list[str]:
    """One line per task and strategy: test size, the headline metrics with their intervals."""
    level = f"{report['settings'].get('level', 0.95):.0%}"
    lines = []
    for task, t in report["tasks"].items():
        for strategy, e in t["strategies"].items():
            shown = "; ".join(f"{k} {fmt_metric(e['metrics'][k])}" for k in HEADLINE if k in e.get("metrics", {}))
            thr = e.get("threshold") or {}
            at = f", threshold {thr['value']:.4g} ({thr['rule']})" if thr.get("value") is not None else ""
            positive = f", positive class {t['positive_class']}" if t.get("positive_class") else ""
            runs = len(e.get("runs") or [])
            # over seeds the interval is a t-interval of the mean: training randomness, not the test cases' sampling
            kind = ("no intervals (n_boot 0)" if not report["settings"].get("n_boot", 1) else
                    f"{level} t-interval over {runs} seeds" if runs > 1 else f"{level} CI over the test cases")
            lines.append(f"{task} / {strategy}: test n={e.get('n_test')}{positive}{at}, {kind}: {shown}")
            if thr.get("note"):  # where the threshold came from, or how it differs from predict's
                lines.append(f"  threshold: {thr['note']}")
    return lines


def run(args) -> int:
    from medtl.evaluation.batch_results import evaluate_files
    from medtl.evaluation.report import render_report
    from medtl.evaluation.report.render import output_folder

    given = [*(args.predictions if isinstance(args.predictions, list) else [args.predictions]), args.labels,
             args.exclude]
    for path in given:  # a mistyped input is said before the output folder is made
        if path is not None and not Path(path).exists():
            raise MedtlError("not found: no such file", path)
    output_folder(args.out)  # a folder that cannot be made fails now, not after the whole evaluation
    report = evaluate_files(args.predictions, settings_from_args(args), args.labels, exclude=args.exclude)
    paths = render_report(report, args.out, **extras_from_args(args))
    for line in summary_lines(report):
        print(line)
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"wrote {paths['json']}, {paths['md']}, {paths['html']}")
    return 0


def add_labels_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", default=None, metavar="MANIFEST",
                   help="results.csv without labels: the manifest of the predicted images, joined by path "
                        "(its split is kept: val rows choose the threshold, test rows are scored; default: the "
                        "results' own label column)")  # fmt: skip


def add_exclude_argument(p) -> None:
    p.add_argument("--exclude", default=None, metavar="CSV",
                   help="leave out the cases a CSV lists (its case_id or path column), e.g. the near-copies "
                        "`medtl manifest check --spanning-csv` lists; the report says how many")


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="metrics with CIs, calibration and a report from a predictions table",
                              description=__doc__)  # fmt: skip
    p.add_argument("--predictions", required=True, nargs="+",
                   help="predictions table(s) (.csv or .parquet) or medtl predict's results.csv")
    add_labels_argument(p)
    add_exclude_argument(p)
    p.add_argument("--out", required=True, help="output folder")
    add_settings_arguments(p)
    p.set_defaults(func=run)
