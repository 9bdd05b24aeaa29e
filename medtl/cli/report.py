"""``medtl report``: one comparison report from several report.json and/or predictions files.

Prediction files (predictions tables, medtl predict's results.csv) are evaluated together, so
strategies scored on the same test cases are compared by DeLong's test; report.json files are merged
side by side (their own comparisons kept).
"""

from __future__ import annotations

from medtl.cli.evaluate import (add_exclude_argument, add_labels_argument, add_settings_arguments, extras_from_args,
                                settings_from_args)


def run(args) -> int:
    from medtl.evaluation.report import combine

    paths = combine(args.inputs, args.out, settings=settings_from_args(args), labels=args.labels,
                    exclude=args.exclude, **extras_from_args(args))
    print(f"wrote {paths['json']}, {paths['md']}, {paths['html']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="combined comparison report from report.json / predictions files",
                              description=__doc__)  # fmt: skip
    p.add_argument("inputs", nargs="+",
                   help="report.json files, predictions tables (.csv, .parquet) and/or medtl predict's results.csv")
    add_labels_argument(p)
    add_exclude_argument(p)  # for the prediction files (a report.json was made with its own)
    p.add_argument("--out", required=True, help="output folder")
    add_settings_arguments(p)
    p.set_defaults(func=run)
