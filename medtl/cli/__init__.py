"""The ``medtl`` command line: a thin shell over the Python API.

Each sub-command lives in its own module ``medtl/cli/<name>.py`` exposing ``register(subparsers)``,
which adds its parser and sets ``func`` (taking the parsed args, returning an exit status).
Commands hold no logic of their own: they parse arguments and call the API.
"""

from __future__ import annotations

import argparse
import logging
import sys

from medtl import __version__
from medtl.cli import (
    demo,
    evaluate,
    explain,
    manifest,
    predict,
    pretrain,
    recommend,
    report,
    results,
    run,
    similarity,
    train,
)
from medtl.errors import TEMPFAIL_EXIT, MedtlError, TemporaryFailure
from medtl.runtime import torchrun_rank

# Sub-command modules, in the order `medtl --help` lists them.
COMMANDS = (demo, manifest, train, pretrain, evaluate, report, explain, similarity, recommend, run, results, predict)


class HelpFormatter(argparse.HelpFormatter):
    """Plain-text help: each option's default appended (unless its help already names one), and the
    reStructuredText ``literal`` marks of module docstrings (used as descriptions) dropped."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shows_default = action.option_strings and action.nargs != 0  # flags (nargs 0) need no default shown
        if shows_default and action.default not in (None, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text

    def _format_text(self, text: str) -> str:
        return super()._format_text(text.replace("``", "").replace("`", ""))

    def _expand_help(self, action: argparse.Action) -> str:
        return super()._expand_help(action).replace("``", "").replace("`", "")


def subparsers_of(parser: argparse.ArgumentParser):
    """Every parser below ``parser`` (sub-commands and their actions), depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield child
                yield from subparsers_of(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medtl", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"medtl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    for child in subparsers_of(parser):  # one help style for every command, set here rather than in each module
        child.formatter_class = HelpFormatter
        if not any("-v" in a.option_strings for a in child._actions):  # `medtl predict -v` works like `medtl -v predict`
            child.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                               help="debug logging (default: off; also before the command)")
    return parser


# commands that keep their finished work and continue it when run again with the same arguments
RESUMABLE_COMMANDS = ("run", "demo", "train", "pretrain", "predict")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # one INFO line per HTTP request (three per paged search) is noise in a system journal
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from medtl.progress import logs_above_bars

    try:
        with logs_above_bars():
            return int(args.func(args) or 0)
    except MedtlError as err:
        rank = torchrun_rank()
        print(f"error{'' if rank is None else f' [rank {rank}]'}: {err}", file=sys.stderr)  # torchrun: whose error
        # a PACS outage or a busy output folder is worth retrying later; a bad command is not
        return TEMPFAIL_EXIT if isinstance(err, TemporaryFailure) else 2
    except KeyboardInterrupt:
        if not torchrun_rank():  # under torchrun, one message (rank 0's)
            resumes = args.command in RESUMABLE_COMMANDS
            print("\ninterrupted" + (": finished work is kept; run the same command again to continue"
                                      if resumes else ""), file=sys.stderr)
        return 130


def entry() -> None:
    """The ``medtl`` command: :func:`main`, then leave without tearing the interpreter down.

    Unloading torch, MONAI and their thousands of modules takes about a second after every command;
    the exit handlers (logging, worker pools, temporary files) still run first and the output, Python's
    and C's, is flushed. A thread still running (not a daemon) gets the normal exit, which waits for it.
    """
    import atexit
    import ctypes
    import os
    import threading

    code = main()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        ctypes.CDLL(None).fflush(None)  # C libraries' buffered output
    except (OSError, AttributeError, TypeError):
        pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
