"""The results ledger: an append-only JSON-lines file that makes a batch run resumable.

Each finished series appends one line; the lines are flushed and fsync'd together by :meth:`Ledger.sync`,
which batch inference calls after every model batch (the batch's rows and the error rows written since
the last one) and :meth:`Ledger.close` calls at the end. A run killed at any moment (SIGKILL, power
loss) leaves every row of every synced batch on disk, loses at most the rows written since the last
sync, and leaves at most one torn last line, which the next run cuts off. A rerun reads the ledger, skips every series it already
holds (``ok`` or ``error``) and appends the rest: every series ends with exactly one row. (A rerun
asked to retry errors appends a second line for a series; readers keep the latest line per ``case_id``.)
``results.csv`` is rebuilt from the ledger at the end of each run (written to a temporary file and
renamed, so a reader never sees half a table).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from medtl.errors import MedtlError
from medtl.paths import write_text_atomic

log = logging.getLogger(__name__)

LEDGER = "results.jsonl"
CSV = "results.csv"
RUN = "run.json"
SUPERSEDED = "superseded"  # a unit whose file now reads as part of another (predict --retry-errors)


class Ledger:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = self.out / LEDGER
        self._fh = None
        self._unsynced = 0  # rows written since the last fsync
        self._warned = False  # damaged lines are reported once, not at every read

    def start(self, run_info: dict[str, Any], identifier_columns: tuple[str, ...] = ()) -> dict[str, dict]:
        """Open for appending; returns the rows already done, by ``case_id``.

        Refuses to mix models: ``run_info['model_digest']`` must match the ledger's first run; to mix
        decision thresholds: rows made at another ``threshold`` would sit in one table with these; and to mix
        ``redact_paths`` or ``include_identifiers`` (a folder from before the latter was recorded has it on where
        its rows hold any of ``identifier_columns``).
        """
        self.out.mkdir(parents=True, exist_ok=True)
        run_file = self.out / RUN
        if run_file.exists():
            previous = json.loads(run_file.read_text())
            for k in ("model_name", "model_version", "model_digest"):
                if previous.get(k) != run_info.get(k):
                    # same name and version, other file: e.g. the MONAI bundle exported from this checkpoint
                    same = (" (same name and version, another weights file: a bundle exported from the checkpoint "
                            "that made them, or the checkpoint of a bundle? Predict with the file that made these "
                            "results to resume)") if k == "model_digest" else ""
                    raise MedtlError(
                        f"this output folder holds results of another model ({k} {previous.get(k)!r}, now "
                        f"{run_info.get(k)!r}){same}; choose a new --out", run_file)
            # folders from before the threshold was recorded have no such key: nothing to compare with
            if "threshold" in previous and previous["threshold"] != run_info.get("threshold"):
                raise MedtlError(
                    f"this output folder holds results at decision threshold {previous['threshold']!r}, now "
                    f"{run_info.get('threshold')!r}; to resume, rerun with --threshold {previous['threshold']}, "
                    "or choose a new --out for the new threshold", run_file)
            if "include_identifiers" not in previous and "include_identifiers" in run_info:
                rows = self._read_and_repair()  # no rows (killed before its first series): nothing to mix with
                previous["include_identifiers"] = (any(c in r for r in rows.values() for c in identifier_columns)
                                                   if rows else run_info["include_identifiers"])
            for key, flag, mixed in (
                    ("redact_paths", "--redact-paths", "every one-file input twice, by its path and hashed, and the "
                     "paths it was asked to hide"),
                    ("include_identifiers", "--include-identifiers", "patients' identifiers that a run without "
                     "the option promises to leave out")):
                if key in previous and key in run_info and bool(previous[key]) != bool(run_info[key]):
                    was = "with" if previous[key] else "without"
                    raise MedtlError(
                        f"this output folder holds results made {was} {flag}, and this run is "
                        f"{'with' if run_info[key] else 'without'} it: one table would then hold {mixed}; to "
                        f"resume, rerun {was} {flag}, or choose a new --out", run_file)
            if previous.get("input") is not None and not _same_input(previous["input"], run_info.get("input")):
                # allowed (new studies each night), but said
                log.warning("this output folder's results were made from %s; this run reads %s: its rows join "
                            "the same table (a file reached from both inputs would be two rows)", previous["input"],
                            run_info.get("input"))
        else:
            write_text_atomic(run_file, json.dumps(run_info, indent=2) + "\n")
        done = self._read_and_repair()
        self._fh = open(self.path, "a", encoding="utf-8")
        return done

    def _read_and_repair(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line from a killed run: cut it off before appending
            with open(self.path, "r+b") as f:
                f.truncate(end)
        done: dict[str, dict] = {}
        damaged = []
        for number, line in enumerate(data[:end].decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):  # a block of the disk lost (power loss): that series is redone
                damaged.append(number)
                continue
            done[row.get("case_id", row.get("key"))] = row  # "key": ledgers written before the rename
        if damaged and not self._warned:
            self._warned = True
            log.warning("%s: line(s) %s are damaged and were skipped; the series they held are predicted again",
                        self.path, ", ".join(map(str, damaged[:10])) + (" ..." if len(damaged) > 10 else ""))
        return done

    def append(self, row: dict[str, Any], sync: bool = True) -> None:
        """Append one row; durable at once with ``sync``, else at the next :meth:`sync` (or :meth:`close`)."""
        self._fh.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
        self._unsynced += 1
        if sync:
            self.sync()

    def sync(self) -> int:
        """Flush and fsync the rows appended since the last sync; returns how many there were."""
        n, self._unsynced = self._unsynced, 0
        if self._fh is not None and n:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return n

    def close(self) -> None:
        if self._fh is not None:
            try:
                self.sync()
            finally:
                self._fh.close()
                self._fh = None

    def rows(self) -> list[dict]:
        """The latest row of each unit, less the units another row replaced (``superseded``)."""
        return [r for r in self._read_and_repair().values() if r.get("status") != SUPERSEDED]

    def write_csv(self, columns: list[str]) -> Path:
        """``results.csv`` from the ledger: ``columns`` first, any other keys after them (not the ledger's own
        bookkeeping, whose keys start with ``_``)."""
        rows = self.rows()
        names = list(columns) + sorted({k for r in rows for k in r if not k.startswith("_")} - set(columns))
        tmp = self.out / (CSV + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, names, extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: csv_cell(r.get(k)) for k in names})
        os.replace(tmp, self.out / CSV)
        return self.out / CSV


def csv_cell(value: Any) -> Any:
    """A value as a results.csv cell (shared by the ledger and the batch's CSV rebuild): JSON for lists and
    dicts, true/false, and text that a spreadsheet would run as a formula quoted."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r", "|", "%"):
        return "'" + value  # a header value must not run as a spreadsheet formula
    return value


def _same_input(before: str, now: str | None) -> bool:
    """One input, however it was written: folders compare resolved (older folders recorded the path as typed)."""
    if now is None or "://" in before or "://" in now:
        return before == now
    return before == now or Path(before).resolve() == Path(now).resolve()


