"""`medtl results RUN_DIR... --out docs` (writes docs/results.md)."""

from pathlib import Path

from medtl.cli.output import output_file


def register(sub) -> None:
    parser = sub.add_parser("results", help="write the results page from finished pipeline run folders")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by medtl run")
    # required: a default of docs/ overwrote the project's own page for a user who left it out at the repo root
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder to write results.md into (the project's page: docs)")
    parser.add_argument("--notes", type=Path, default=None,
                        help="folder of hand-written <pipeline>.md notes (default: results_notes/ in the --out folder)")
    parser.add_argument("--keep", default="", metavar="NAMES",
                        help="comma-separated pipelines whose sections are kept unchanged from the existing page "
                             "(their run folders are not at hand), or 'all' (default: none)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from medtl.pipeline.results import write_results

    path = output_file(args.out, None, "results.md")  # write_results makes the folder
    keep = tuple(x.strip() for x in args.keep.split(",") if x.strip())
    print(f"wrote {write_results(args.runs, path, args.notes, keep=keep)}")
    return 0
