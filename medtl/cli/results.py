"""`medtl results RUN_DIR... --out docs/results.md`."""

from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser("results", help="write the results page from finished pipeline run folders")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of `medtl run`")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--notes", type=Path, default=None,
                        help="folder of hand-written <pipeline>.md notes (default: results_notes/ beside --out)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from medtl.pipeline.results import write_results

    print(f"wrote {write_results(args.runs, args.out, args.notes)}")
    return 0
