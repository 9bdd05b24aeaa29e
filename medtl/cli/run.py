"""`medtl run <pipeline.yaml> --data-root <dir> --out <dir> [--profile quick|cpu]`."""

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
    parser.add_argument("--redo-report", action="store_true",
                        help="render report.json/html again from the finished predictions (no training is redone)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="show no progress bars")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from medtl.pipeline import run_pipeline

    run_pipeline(args.config, args.data_root or default_data_root(), args.out, args.profile,
                 redo_report=args.redo_report, progress=args.progress)
    return 0
