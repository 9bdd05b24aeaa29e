"""`medtl run <pipeline.yaml> --data-root <dir> --out <dir> [--profile quick|cpu]`."""

import argparse
from pathlib import Path

from medtl.paths import default_data_root


def register(sub) -> None:
    parser = sub.add_parser("run", help="run (or resume) a pipeline config, stage by stage")
    parser.add_argument("config", type=Path, help="pipeline YAML (see pipelines/)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder the manifests' paths are relative to (default: $MEDTL_DATA_ROOT or ../shared/data)")
    parser.add_argument("--out", type=Path, required=True, help="run folder; rerunning resumes it")
    parser.add_argument("--profile", default=None,
                        help="profile from the config: quick (CI), cpu (2 cores); default: the config as written (one GPU)")
    parser.add_argument("--redo", action="append", default=[], choices=["similarity", "report"], metavar="STAGE",
                        help="run a finished stage again, no training redone: report (render report.json/html again "
                             "from the finished predictions) or similarity (measure again; the report follows)")
    parser.add_argument("--redo-report", dest="redo", action="append_const", const="report",
                        help=argparse.SUPPRESS)  # the older spelling of --redo report
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="show no progress bars")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from medtl.pipeline import run_pipeline

    import shlex

    report = run_pipeline(args.config, args.data_root or default_data_root(), args.out, args.profile,
                          redo=tuple(args.redo), progress=args.progress)
    out = shlex.quote(str(args.out))
    print(f"report: {report} (and report.md, report.json beside it)\n"
          "next: a results page of this run (hand-written notes go in DIR/results_notes/<pipeline name>.md):\n"
          f"  medtl results {out} --out DIR\n"
          "  each job's model (for medtl predict, explain, train --init) is its folder's best.pt under "
          f"{shlex.quote(str(Path(args.out) / 'transfer'))}")
    example = next(iter(sorted((Path(args.out) / "transfer").rglob("best.pt"))), None)
    if example is not None:
        print(f"  e.g. medtl predict --model {shlex.quote(str(example))} --input IMAGES --out PREDICTIONS")
    return 0
