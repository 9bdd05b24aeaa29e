"""The ``medtl`` command line: a thin shell over the Python API.

Each sub-command lives in its own module ``medtl/cli/<name>.py`` exposing ``register(subparsers)``,
which adds its parser and sets ``func`` (taking the parsed args, returning an exit status).
Commands hold no logic of their own: they parse arguments and call the API.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medtl import __version__
from medtl.errors import MedtlError

# Sub-command modules, in the order `medtl --help` lists them.
COMMANDS = ["demo", "manifest", "pretrain", "evaluate", "report", "similarity", "recommend", "run", "results", "predict"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medtl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medtl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"medtl.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"medtl.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MedtlError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
