"""One writer per output folder: an exclusive lock on ``<out>/.medtl.lock``.

The lock is an ``flock`` on the file, so the kernel releases it when its holder dies in any way
(kill -9, power loss of a local disk): a lock file left behind is stale exactly when nobody holds
the flock, and the next run takes it over (and says so). The file records the holder (PID, host,
start time) so a second process refuses with a message that names it.

Not for network file systems whose flock is not shared between hosts (some NFS setups): run one
job per output folder there, as docs/batch.md says.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

from medtl.errors import MedtlError, TemporaryFailure

log = logging.getLogger(__name__)

LOCK = ".medtl.lock"


class OutputLock:
    """``with OutputLock(out): ...``; raises :class:`MedtlError` when another process holds ``out``."""

    def __init__(self, out: str | Path, command: str = "medtl predict"):
        self.path = Path(out) / LOCK
        self.command = command  # named to a second process that finds the folder taken
        self._fd: int | None = None
        self.took_over: dict | None = None  # the stale holder's record, when one was found
        self._made = False  # whether acquire made the folder: one a refused run leaves empty is removed

    def acquire(self) -> OutputLock:
        try:
            self._made = not self.path.parent.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as err:  # a file where a folder should be, no permission, a read-only disk ...
            raise MedtlError(f"cannot write the output folder: {err.strerror or type(err).__name__}",
                             self.path.parent) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise TemporaryFailure(
                f"another {holder.get('command', 'medtl process')} is writing to this output folder (PID "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started_utc', '?')}); "
                "wait for it to finish or choose another --out", self.path.parent) from None
        except OSError:
            os.close(fd)
            raise
        previous = _read(fd)
        if previous.get("pid"):
            self.took_over = previous
            log.warning("output folder was locked by PID %s on %s (started %s), which is gone: taking the lock over",
                        previous.get("pid"), previous.get("host"), previous.get("started_utc"))
        record = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                  "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
        except OSError as err:  # a full disk: said with the file, not a traceback
            os.close(fd)
            raise MedtlError(f"cannot write the lock file: {err.strerror or type(err).__name__}", self.path) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty lock file is a clean exit, not a stale holder
        except OSError:
            pass
        if self._made and [p.name for p in self.path.parent.iterdir()] == [LOCK]:
            # a run refused before it wrote anything (a misspelt option, a bad input) leaves no folder behind
            self.path.unlink(missing_ok=True)
            try:
                self.path.parent.rmdir()
            except OSError:  # another process made something in it meanwhile: keep it
                pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data.decode()) if data.strip() else {}
    except (OSError, ValueError):
        return {}
