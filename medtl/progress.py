"""Progress bars and console logging that do not tear them: the one place that decides how progress shows.

``bar(...)`` is a plain-text tqdm bar. In a Jupyter notebook it writes to stdout: Jupyter paints
stderr pink, and ``tqdm.auto`` needs ipywidgets, without which it falls back to text on stderr (pink
blocks). Outside a terminal and a notebook (a log file) it redraws at most every 30 s so the log
stays readable. ``logs_above_bars()`` sends console log lines through ``tqdm.write`` so they print
above a running bar instead of through it, and shows each repeated INFO line of the loggers named in
``once`` only the first time (the pretrained weights are loaded once per job).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

LOG_FILE_INTERVAL_S = 30.0  # redraw interval when stderr is a file: one line per 30 s, not ten per second


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where stderr is shown pink and a terminal bar is plain text on stdout)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return type(shell).__name__ == "ZMQInteractiveShell"


def bar(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar as described in the module docstring; ``enabled=False`` shows nothing."""
    from tqdm import tqdm

    notebook = in_notebook()
    kwargs.setdefault("file", sys.stdout if notebook else sys.stderr)
    if not notebook and not getattr(kwargs["file"], "isatty", lambda: False)():
        kwargs.setdefault("mininterval", LOG_FILE_INTERVAL_S)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not enabled, **kwargs)


class _Once(logging.Filter):
    """Lets an INFO record of a given message template through once; warnings and errors always pass."""

    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        self.names, self.first = names, {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not record.name.startswith(self.names):
            return True
        # the first record of a template passes every handler this filter sits on; later ones pass none
        return self.first.setdefault((record.name, record.msg), record) is record


@contextlib.contextmanager
def logs_above_bars(once: tuple[str, ...] = ("medtl.models.weights",)) -> Iterator[None]:
    """Console log lines print above running bars (see the module docstring) within this block."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    root = logging.getLogger()
    dedupe = _Once(once)
    with logging_redirect_tqdm():
        handlers = list(root.handlers)  # the tqdm-aware handlers that replaced the console ones
        for h in handlers:
            h.addFilter(dedupe)
        try:
            yield
        finally:
            for h in handlers:
                h.removeFilter(dedupe)


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 07 s``, ``1 h 02 min``: wall times people read at the end of a run."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"

