"""`medtl demo`."""

from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser("demo", help="run the cross-domain scenario on generated synthetic data")
    parser.add_argument("--out", type=Path, default=Path("medtl-demo"), help="folder for data, runs and report")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images and their split")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="show no progress bars")
    parser.set_defaults(func=lambda args: _run(args))


def _run(args) -> int:
    from medtl.demo import run_demo

    run_demo(args.out, args.seed, progress=args.progress)
    return 0
