"""Batch inference: folder / manifest / DICOMweb -> series -> model -> results table (+ DICOM SR).

``predict_batch`` is the whole job; ``medtl predict`` only parses arguments and calls it.

Outputs in ``out`` (one writer at a time: ``.medtl.lock``, see ``medtl.lock``):

- ``results.jsonl``: the ledger, one JSON object per series, appended as each finishes and fsync'd
  once per model batch (resumable: a kill loses at most the rows of the batch in flight; see
  ``medtl.deploy.ledger``);
- ``results.csv``: the same rows as a table, rebuilt at the end of every run;
- ``excluded.csv``: series the selection rules left out, and why;
- ``sr/<StudyInstanceUID>/<SeriesInstanceUID>.dcm``: one Comprehensive SR per DICOM series (``write_sr``);
- ``run.json``: the model (name, version, weights hash) the folder belongs to;
- ``.tmp-<pid>/`` (0700): DICOMs fetched from a PACS while they are processed; removed at the end,
  and by the next run after a crash.

Rows: ``case_id, source, study_uid, series_uid, modality, n_instances, n_images, status (ok | error |
duplicate), error, predicted_label, probabilities, prob_<label>..., threshold, model_name, model_version,
sr_path, sr_stored, finished_utc`` and the manifest's ``label``/``split`` when present. Every input
file is in exactly one row: a series row, or a row of its own (unreadable, over a limit, a
duplicate copy of an instance). Identifying header values (patient name, id, birth date, accession
number, dates) are added only with ``include_identifiers=True``; without it they are also scrubbed
from every text written. Everything written (rows, run.json, log lines, warnings) passes one
redaction layer (``medtl.deploy.redact``): URL credentials and query strings, secrets, control characters.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import dataclasses
import datetime as _dt
import logging
import os
import queue
import re
import secrets as _secrets
import shutil
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from medtl.data.io import RADIOGRAPH_MODALITIES
from medtl.data.transforms import Preset
from medtl.deploy.dicomweb import READ_TIMEOUT, DicomwebSource, PacsAuth, PacsUnreachable, is_url
from medtl.deploy.discover import (
    SCRUBBED_TAGS,
    Series,
    SeriesRules,
    scan_files,
    scan_folder,
    scan_manifest,
)
from medtl.deploy.inputs import SeriesLoader
from medtl.deploy.ledger import SUPERSEDED, Ledger, csv_cell
from medtl.deploy.limits import MiB, Limits, check_file, check_series
from medtl.lock import OutputLock
from medtl.deploy.model import Predictor, load_model
from medtl.deploy.redact import (
    Redactor,
    add_identifiers,
    escape_controls,
    held_until_learned,
    redacting,
    shown_uid,
)
from medtl.deploy.uids import safe_name
from medtl.errors import MedtlError
from medtl.paths import PATH_SALT_FILE, image_suffix, path_tag, salted_path

log = logging.getLogger(__name__)

IDENTIFIER_COLUMNS = {"PatientName": "patient_name", "PatientID": "patient_id", "PatientBirthDate": "patient_birth_date",
                      "AccessionNumber": "accession_number", "StudyDate": "study_date"}
# QIDO filters whose values identify a patient: scrubbed from every text, like header identifiers.
IDENTIFYING_FILTERS = ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs",
                       "IssuerOfPatientID")
# Row values that are ours, not read from inputs: never passed through the identifier scrubber.
OWN_COLUMNS = ("status", "predicted_label", "model_name", "model_version", "finished_utc", "sr_path")
# The user's manifest's label and split of a row: their own vocabulary, which evaluate matches word for
# word. Scrubbing them would turn "test" into "[redacted]" whenever a patient is called Test.
MANIFEST_COLUMNS = ("label", "split")
# UIDs are written as they are (a PatientID "123" must not cut a component out of "1.2.123.4"), with
# control characters escaped; a "UID" that is not digits and dots is free text, and redacted as text.
UID_COLUMNS = ("study_uid", "series_uid")
UNREDACTED_COLUMNS = frozenset(OWN_COLUMNS + MANIFEST_COLUMNS + ("case_id",))  # our words, or the user's labels
ERROR_CHARS = 1000  # an error row's text is cut to this length
MAX_PACS_FAILURES = 5


@dataclass
class BatchResult:
    out: Path
    ok: int = 0
    errors: int = 0
    duplicates: int = 0  # files that repeat an instance already used (a row each, status "duplicate")
    resumed: int = 0  # rows already in the ledger, not processed again
    excluded: int = 0
    sr_pending: int = 0  # ok rows whose SR the PACS could not take: a rerun stores them
    unexpected_modalities: dict[str, int] = field(default_factory=dict)  # modality -> series the model did not learn
    rows: list[dict] = field(default_factory=list)

    @property
    def csv(self) -> Path:
        return self.out / "results.csv"


def discover(input: str | Path, *, out: Path | None = None, data_root: str | Path | None = None,
             split: str | None = None, source=None, limits: Limits | None = None, display=None,
             volume: bool = False) -> list[Series]:
    """The series of a folder, a file, a manifest (``.csv``) or a DICOMweb URL (``source`` given)."""
    if source is not None:
        return source.list_series()
    p = Path(input)
    if p.is_file() and p.suffix.lower() == ".csv":
        from medtl.data.manifest import data_root_of_file

        return scan_manifest(p, data_root_of_file(p, data_root), split, limits, display, volume)
    if p.is_dir():
        return scan_folder(p, skip=out, limits=limits, display=display, volume=volume)
    if p.is_file():  # one image file, or one multi-frame DICOM
        return scan_files([p], p.parent, limits, display, volume)
    if p.exists():
        raise MedtlError("input is not a regular file or folder (a FIFO, socket or device)", p)
    raise _missing_input(input)


def _missing_input(input: str | Path) -> MedtlError:
    """The error for an input that is not there: a mistyped URL scheme named as typed, else not found."""
    scheme, sep, _ = str(input).partition("://")
    if sep and scheme.isalnum():  # as typed: a path would fold the '//' into one '/'
        return MedtlError(f"unknown URL scheme {scheme!r}: a DICOMweb URL starts with http:// or https://", str(input))
    return MedtlError("input not found: no such file or folder", Path(input))


class _Prepared(torch.utils.data.Dataset):
    """Series -> model input, in DataLoader workers when asked; failures come back as error texts."""

    def __init__(self, series: list[Series], loader: SeriesLoader, source, tmp_root: Path, include_identifiers: bool,
                 limits: Limits):
        self.series, self.loader, self.source = series, loader, source
        self.tmp_root, self.include_identifiers, self.limits = tmp_root, include_identifiers, limits

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.series[i]
        item: dict[str, Any] = {"index": i, "x": None, "error": None, "files": [str(f) for f in s.files], "tmp": None,
                                "retryable": False}
        sops = dict(s.sop_uids)
        try:
            if s.error:
                raise MedtlError(s.error)
            files = list(s.files)
            if s.remote is not None:
                item["tmp"] = tempfile.mkdtemp(prefix=f"{safe_name(s.series_uid)[:40]}-", dir=self.tmp_root)
                files, fetched = self.source.fetch(s, Path(item["tmp"]))
                sops.update(fetched)
                item["files"] = [str(f) for f in files]
                # A PACS is an input like any other: its instances pass the same limits before decoding.
                total = 0
                for f in files:
                    try:
                        total += check_file(f, self.limits)
                    except MedtlError as err:
                        raise MedtlError(err.reason, f) from None
                check_series(total, self.limits, self.loader.spatial_dims == 3)
            notes: list[str] = []
            item["x"] = self.loader(s, files, notes)
            item["note"] = "; ".join(notes)
        except PacsUnreachable as err:  # the PACS, not the series: a rerun retries it
            item["error"], item["retryable"] = describe_error(err, s, sops, self.include_identifiers), True
        except Exception as err:  # every failure is a row, never the end of the run
            item["error"] = describe_error(err, s, sops, self.include_identifiers)
        return item


def describe_error(err: BaseException, s: Series, sops: dict[str, str], include_identifiers: bool) -> str:
    """The reason for an error row, without identifiers unless they were asked for."""
    if isinstance(err, MedtlError):
        text = err.reason
        where = err.where or ""
        if where and where in sops and sops[where]:
            # a UID locates the file without naming the patient; asked for identifiers, the path too
            text += f" (instance {sops[where]}{', ' + where if include_identifiers else ''})"
        elif where and include_identifiers:
            text += f" ({where})"
        elif where and not s.is_dicom:
            text += f" ({s.source or Path(where).name})"
    else:
        text = f"{type(err).__name__}: {err}"
    if not include_identifiers and s.is_dicom:
        # Identifiers are scrubbed where the row is written (the run's redactor knows every series' headers);
        # paths of DICOM files may hold patient names in folder names that no header spells alike.
        # The data layer's series errors name instances by file name alone (Smith_Alice_00091.dcm): those go
        # too, but for the one file a row of one file shows as its own path (scrubbed by the redactor), and names
        # without a letter (1, 00091.dcm), which identify no one and would garble the numbers of the message.
        for f in s.files:
            text = text.replace(str(f), "[file]")
        for name in {Path(f).name for f in s.files}:
            shown_as_source = len(s.files) == 1 and PurePosixPath(s.source or "").name == name
            if not shown_as_source and any(c.isalpha() for c in name[: len(name) - len(image_suffix(name))]):
                text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", "[file]", text)
    return " ".join(text.split())  # cut to ERROR_CHARS where the row is written, after the redaction


def predict_batch(
    model: Predictor | str | Path,
    input: str | Path | DicomwebSource,
    out: str | Path,
    *,
    data_root: str | Path | None = None,
    split: str | None = None,
    rules: SeriesRules | None = None,
    write_sr: bool = False,
    store_sr: bool | None = None,
    include_identifiers: bool = False,
    redact_paths: bool = False,
    limits: Limits | None = None,
    pacs_auth: PacsAuth | None = None,
    ca_bundle: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
    pacs_retries: int = 3,
    pacs_timeout: float = READ_TIMEOUT,
    max_pacs_failures: int = MAX_PACS_FAILURES,
    batch_size: int = 8,
    workers: int | None = None,
    device: str | None = None,
    threshold: float | None = None,
    progress: bool = True,
    retry_errors: bool = False,
) -> BatchResult:
    """Predict every selected series of ``input`` and write the results to ``out``; see the module docstring.

    ``store_sr`` (default: on when the input is a DICOMweb URL and ``write_sr``) sends each SR back
    to the PACS with STOW-RS. Reruns into the same ``out`` process only the series not yet in it,
    and those that failed because the PACS could not be reached; with ``retry_errors`` also every
    error row: the new row is appended, and the table keeps the latest row of each series.

    Security (docs/batch.md, "Security and data protection"): one process per ``out`` (a second one
    raises :class:`MedtlError` naming the holder); ``limits`` bound what any input may make us
    decode; ``redact_paths`` stores salted hashes instead of input paths; ``pacs_auth``,
    ``ca_bundle``, ``client_cert``/``client_key``, ``pacs_retries`` and ``pacs_timeout`` (seconds a PACS may
    take to start answering) configure a DICOMweb input
    given as a URL, whose credentials are checked once before the batch; after
    ``max_pacs_failures`` consecutive series the PACS could not serve, the run stops (rerun to resume).

    ``workers``: DataLoader processes that read and preprocess series while the model runs; ``None``
    (default) chooses :func:`default_workers` from the usable CPUs (none on 2 cores, where measured
    they only took CPU from the model: docs/performance.md, inference). Without workers a thread
    reads ahead (:class:`ReadAhead`).
    """
    redactor = Redactor()
    with redacting(redactor):
        try:
            return _predict_batch(model, input, Path(out), redactor, data_root=data_root, split=split, rules=rules,
                                  write_sr=write_sr, store_sr=store_sr, include_identifiers=include_identifiers,
                                  redact_paths=redact_paths, limits=limits or Limits(), pacs_auth=pacs_auth,
                                  ca_bundle=ca_bundle, client_cert=client_cert, client_key=client_key,
                                  pacs_retries=pacs_retries, pacs_timeout=pacs_timeout,
                                  max_pacs_failures=max_pacs_failures,
                                  batch_size=batch_size, workers=workers, device=device, threshold=threshold,
                                  progress=progress, retry_errors=retry_errors)
        except MedtlError as err:  # its text reaches stderr: through the same redaction as everything else
            raise type(err)(redactor(err.reason), redactor(err.where) if err.where else None) from None
        except Exception as err:
            if isinstance(err, OSError) and err.errno in UNWRITABLE:  # a full disk, a read-only folder: said
                where = redactor(str(err.filename)) if err.filename else str(out)
                raise MedtlError(f"cannot write ({err.strerror}); the rows written so far are kept and a rerun "
                                 "resumes once it can write", where) from None
            # a bug: its traceback goes to the log, redacted like every log line
            log.error("medtl predict failed", exc_info=True)
            raise MedtlError(f"internal error ({type(err).__name__}: {redactor(str(err))[:300]}); the traceback "
                             "is in the log") from None


UNWRITABLE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _predict_batch(model, input, out: Path, redactor: Redactor, *, data_root, split, rules, write_sr, store_sr,
                   include_identifiers, redact_paths, limits, pacs_auth, ca_bundle, client_cert, client_key,
                   pacs_retries, pacs_timeout, max_pacs_failures, batch_size, workers, device, threshold, progress,
                   retry_errors) -> BatchResult:
    from medtl.progress import bar as progress_bar

    if isinstance(input, DicomwebSource):
        source = input
    elif is_url(str(input)):
        source = DicomwebSource(str(input), auth=pacs_auth, ca_bundle=ca_bundle, client_cert=client_cert,
                                client_key=client_key, retries=pacs_retries, timeout=(10.0, float(pacs_timeout)))
    else:
        source = None
    if source is not None:
        for secret in source.secrets():
            redactor.add_secret(secret)
        add_identifiers(redactor, ((k, v) for k, v in source.filters.items() if k in IDENTIFYING_FILTERS))
    store_sr = bool(write_sr and source is not None) if store_sr is None else bool(store_sr)
    if store_sr and source is None:
        raise MedtlError("storing SRs needs a DICOMweb input", "store_sr")
    if batch_size < 1:
        raise MedtlError(f"batch_size must be at least 1, got {batch_size}", "batch_size")
    if workers is None:
        workers = default_workers()
    if workers < 0:
        raise MedtlError(f"workers must be 0 or more, got {workers}", "workers")
    rules = rules or SeriesRules()

    if source is None:  # a local input's mistakes, before anything is loaded or written
        _check_local_input(input, Path(out))
    # The lock first: a second run into the same folder is refused at once, not after loading the model.
    created = not out.exists()
    lock = OutputLock(out).acquire()
    tmp_root = ahead = predictor = None
    ledger = Ledger(out)
    result = BatchResult(out)
    try:
        predictor = model if isinstance(model, Predictor) else load_model(model, device=device, threshold=threshold)
        if threshold is not None and isinstance(model, Predictor):
            predictor = dataclasses.replace(predictor, threshold=float(threshold))
        if write_sr and predictor.is_regression:
            raise MedtlError("the DICOM SR medtl writes reports class probabilities; this model predicts a value "
                             f"({predictor.label_names[0]}): run without --sr", "--sr")
        _remove_leftovers(out)
        salt = _salt(out)
        display = (lambda rel: salted_path(rel, salt)) if redact_paths else None
        if source is not None:
            source.check()  # a wrong password or an untrusted certificate: one clear error, now
        dims = predictor.spatial_dims or Preset(predictor.preset).spatial_dims
        if source is not None:  # an answer is held whole before its files can be checked
            source.bound_responses((limits.volume_bytes if dims == 3 else limits.series_bytes) + 16 * MiB)
        with held_until_learned(redactor):  # what is logged while the headers are read waits for their identifiers
            series = discover(input, out=out, data_root=data_root, split=split, source=source, limits=limits,
                              display=display, volume=dims == 3)
            if not include_identifiers:
                # Every identifier seen anywhere in the input is scrubbed from all texts (an unreadable
                # file's path may hold the name its folder was given, which only other files' headers reveal).
                add_identifiers(redactor, ((k, v) for s in series for k, v in s.identifiers.items()
                                           if k in SCRUBBED_TAGS))
        for s in series:
            s.case_id = _case_id(s, redactor, salt)
        if source is not None:
            shown_input = str(source)
        elif redact_paths:
            shown_input = salted_path(str(Path(input).resolve()), salt)
        else:  # resolved: the same folder given as 'export' or './export/' is the same input
            shown_input = redactor(str(Path(input).resolve()))
        done = ledger.start({
            "model_name": predictor.name, "model_version": predictor.version, "model_digest": predictor.digest,
            "threshold": predictor.threshold,
            "label_names": predictor.label_names, "preprocess": predictor.preprocess, "input": shown_input,
            "redact_paths": bool(redact_paths), "include_identifiers": bool(include_identifiers),
            "limits": dataclasses.asdict(limits),
        }, identifier_columns=tuple(IDENTIFIER_COLUMNS.values()))
        chosen, excluded = rules.split(series)
        _warn_unexpected_modalities(chosen, predictor, rules, result)
        _write_excluded(out, excluded, redactor)
        result.excluded = len(excluded)
        # A PACS outage is not a result, except where only the SR's upload failed: the prediction stands
        # (it is never redone, so a failing rerun cannot replace it) and its SR file is sent again below.
        unsent = {k: r for k, r in done.items() if r.get("retryable") and r.get("status") == "ok"}
        done = {k: r for k, r in done.items() if not r.get("retryable") or k in unsent}
        if retry_errors:
            errors = {k for k, r in done.items() if r.get("status") == "error"}
            done = {k: r for k, r in done.items() if k not in errors}
            if source is None and Path(input).is_dir():
                _supersede_file_rows(ledger, errors, chosen, Path(input), display)
        _adopt_unsalted_ids(chosen, done)
        grown = _changed_since(chosen, done)
        if grown:  # images that arrived (or went) after the series was predicted: its row would be stale
            log.warning("%d input(s) changed since they were predicted (a series' number of instances, or another "
                        "file saved at a file's path): predicted again (a new row replaces the old one; a new SR is "
                        "another instance)", len(grown))
            done = {k: r for k, r in done.items() if k not in grown}
            unsent = {k: r for k, r in unsent.items() if k not in grown}  # their old SR is not sent either
        todo = [s for s in chosen if s.case_id not in done]
        result.resumed = len(chosen) - len(todo)
        log.info("%d series found, %d selected, %d already done, %d to predict", len(series), len(chosen),
                 result.resumed, len(todo))
        loader = SeriesLoader(predictor.preset, predictor.preset_options, predictor.spatial_dims)
        tmp_root = out / f".tmp-{os.getpid()}"
        tmp_root.mkdir(mode=0o700)
        os.chmod(tmp_root, 0o700)  # whatever the umask: fetched DICOMs are patient data
        data = _Prepared(todo, loader, source, tmp_root, include_identifiers, limits)
        batches = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, collate_fn=_as_is)
        # Without workers, read the next series while the model runs on the last batch. Resuming is
        # unaffected: a series is done when this loop writes its row, so a kill loses at most the reads ahead.
        # (Training does not read ahead: measured, the thread slowed a bf16 ResNet-18 epoch by 14%.)
        if workers == 0:
            batches = ahead = ReadAhead(batches, batch_size)
        writer = _RowWriter(predictor, ledger, out, source if store_sr else None, write_sr, include_identifiers,
                            result, redactor, max_pacs_failures, sr_modalities=_sr_modalities(predictor, rules))
        if source is None and Path(input).is_dir():
            writer.input_folder = Path(input).resolve()
        if store_sr:
            writer.send_again(list(unsent.values()))
        else:
            result.sr_pending = len(unsent)
        pending: list[tuple[Series, dict]] = []
        n_pending = 0  # images in pending
        failures = 0  # consecutive series the PACS could not serve: the circuit breaker
        with progress_bar(total=len(todo), unit="series", desc="predict", enabled=progress) as bar:
            for item in batches:
                s = todo[item["index"]]
                if item["error"] is None:
                    failures = 0
                    pending.append((s, item))
                    n_pending += item["x"].shape[0]
                    if n_pending >= batch_size:
                        bar.update(_flush(pending, predictor, writer, batch_size))
                        ledger.sync()  # one fsync per model batch: a kill loses at most this batch's rows
                        pending, n_pending = [], 0
                    continue
                writer.write(s, item, None)  # durable with the next batch (or at the end)
                bar.update(1)
                failures = failures + 1 if item["retryable"] else 0
                if max_pacs_failures and failures >= max_pacs_failures:
                    bar.update(_flush(pending, predictor, writer, batch_size))
                    ledger.sync()
                    pending, n_pending = [], 0
                    raise PacsUnreachable(
                        f"stopped: the PACS could not serve {failures} series in a row (last: {item['error']}). "
                        "The rows done so far are kept; rerun the same command when the PACS is back and it "
                        "resumes where this run stopped", str(source) if source else None)
            bar.update(_flush(pending, predictor, writer, batch_size))
    finally:
        # fetched DICOMs are removed once no read can still be writing into tmp_root (a read in a PACS request
        # finishes, then removes them: it recreated the folder after an early removal)
        remove_tmp = (lambda: shutil.rmtree(tmp_root, ignore_errors=True)) if tmp_root is not None else None
        if ahead is not None:
            ahead.close(remove_tmp)
        elif remove_tmp is not None:
            remove_tmp()
        ledger.close()  # fsyncs what the last batch wrote, also when stopped by an exception
        try:
            if ledger.path.exists() and predictor is not None:
                _finish_csv(ledger, predictor, include_identifiers)
        finally:
            lock.release()
            if created and not ledger.path.exists():  # stopped before any result: leave no empty folder
                shutil.rmtree(out, ignore_errors=True)
    result.rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in ledger.rows()]  # as results.csv
    log.info("predicted %d series: %d ok, %d error(s), %d duplicate file(s); results in %s",
             result.ok + result.errors + result.duplicates, result.ok, result.errors, result.duplicates,
             out / "results.csv")
    return result


class ReadAhead:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the consumer.

    Without DataLoader workers, reading and preprocessing would take turns with the model's forward
    pass; the thread overlaps them. Decoding, numpy and torch release the GIL, so the reads fill the
    gaps the forward pass leaves between its parallel regions (docs/performance.md, inference). An
    exception in the thread is raised in the consumer; closing (or leaving the loop) stops the thread.
    Resuming is unaffected: a series counts as done only when its row is written, and rows are written
    by the consumer, so a kill loses at most what was read ahead.
    """

    _END = object()

    def __init__(self, items, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._handover = threading.Lock()  # who runs the cleanup: the consumer, or a thread still reading
        self._finished = False
        self._cleanup = None  # set by close() when the thread outlives it
        self._thread = threading.Thread(target=self._fill, args=(items,), name="medtl-read-ahead", daemon=True)
        self._thread.start()

    def _fill(self, items) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as err:  # noqa: BLE001 (re-raised in the consumer)
            self._put((None, err))
        finally:
            with self._handover:
                self._finished = True
                cleanup = self._cleanup
            if cleanup is not None:  # the consumer left while this thread read: what it wrote goes now
                cleanup()

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        try:
            while True:
                item, err = self._queue.get()
                if err is not None:
                    raise err
                if item is self._END:
                    return
                yield item
        finally:
            self.close()

    def close(self, cleanup=None) -> None:
        """Stop reading; ``cleanup`` (removing the folder reads write into) runs now, and when a read is still
        in a PACS request (up to --pacs-timeout) again in the thread as that read ends: Ctrl-C and a stopped run
        need not wait for it, the command line's exit (which ends the thread) leaves only what that read had
        written so far, and a process that goes on keeps nothing."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=1.0)  # once: a second close does not wait again
        with self._handover:
            if not self._finished:
                self._cleanup = cleanup
        if cleanup is not None:
            cleanup()


# DICOM modalities a preset's images come from; a series of any other modality (an MR, a CT, an RT dose
# grid) is not what the model learned (a chest X-ray model still answers "pneumonia" on a brain MR).
# Secondary captures (OT, SC), a missing Modality and non-DICOM pictures carry no telling modality and pass
# unremarked.
PRESET_MODALITIES = {"cxr": RADIOGRAPH_MODALITIES, "mri2d": ("MR",), "mri3d": ("MR",)}
UNTELLING_MODALITIES = ("OT", "SC", "")
# Objects without pixels (reports, key images, presentation states, RT plans): their rows are errors, not
# predictions, so the warning about predicting another modality leaves them out.
PIXELLESS_MODALITIES = ("SR", "KO", "PR", "DOC", "RTSTRUCT", "RTPLAN", "RTRECORD", "REG", "FID", "PLAN")


def _warn_unexpected_modalities(chosen: list[Series], predictor: Predictor, rules: SeriesRules,
                                result: BatchResult) -> None:
    """Say (log and result) how many selected series are of a modality the model was not trained on,
    unless the user chose the modalities with ``rules``; they are predicted all the same (with no SR)."""
    expected = PRESET_MODALITIES.get(predictor.preset)
    if not expected or rules.modalities:
        return
    odd = Counter(s.modality.upper() for s in chosen
                  if s.modality.upper() not in (*UNTELLING_MODALITIES, *PIXELLESS_MODALITIES, *expected))
    if odd:
        result.unexpected_modalities = dict(odd)
        log.warning("%d series are %s, not the %s this model (preset %s) was trained on: they are predicted "
                    "anyway (with no SR); --modality %s predicts only those", sum(odd.values()),
                    ", ".join(f"{m} ({n})" for m, n in sorted(odd.items())), "/".join(expected), predictor.preset,
                    ",".join(expected))


def _supersede_file_rows(ledger: Ledger, errors: set[str], chosen: list[Series], root: Path, display) -> None:
    """An unreadable file's error row, once the repaired file reads as part of a DICOM series, is replaced
    by that series' row: a ``superseded`` line (left out of results.csv) keeps the table one row per unit."""
    from medtl.deploy.discover import file_key

    show = display or (lambda rel: rel)
    for s in chosen:
        if not s.is_dicom or s.key.startswith("file-"):
            continue
        for f in s.files:
            key = file_key(show(Path(f).relative_to(root).as_posix())) if Path(f).is_relative_to(root) else None
            if key in errors:
                ledger.append({"case_id": key, "status": SUPERSEDED, "error": f"now part of series {s.case_id}"})
                errors.discard(key)


def _check_local_input(input: str | Path, out: Path) -> None:
    p = Path(input)
    if not p.exists():
        raise _missing_input(input)
    if p.is_dir() and p.resolve() == out.resolve():
        raise MedtlError("--out is the input folder: results and SRs would be written among the images (and read "
                         "as input by the next run); choose another folder", out)


FILE_STAMP = "_file_stamp"  # a one-file input's size and modification time when it was predicted (ledger only)


def _file_stamp(s: Series) -> str | None:
    """Size and modification time of a one-file, non-DICOM-series input (a PNG, a NIfTI): another file saved
    at the same path changes it."""
    if s.remote is not None or s.is_dicom or len(s.files) != 1:
        return None
    try:
        st = Path(s.files[0]).stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _changed_since(chosen: list[Series], done: dict[str, dict]) -> set[str]:
    """The inputs whose row would be stale: DICOM series predicted before (ok rows) whose instance count
    differs now (a folder's files, or the count the PACS lists: nightly runs into one --out meet series that
    were still arriving), and one-file inputs replaced by another file at the same path since their row."""
    changed = set()
    for s in chosen:
        row = done.get(s.case_id)
        if not row:
            continue
        listed = len(s.files) if s.remote is None else s.n_frames  # a PACS lists instances, not frames
        if (s.is_dicom and row.get("status") == "ok" and listed
                and isinstance(row.get("n_instances"), int) and row["n_instances"] != listed):
            changed.add(s.case_id)
        elif row.get(FILE_STAMP) and row[FILE_STAMP] != _file_stamp(s):
            changed.add(s.case_id)
    return changed


def _an(abbreviation: str) -> str:
    """The article an abbreviation takes when read out by letters: an MR, an SR, a CT."""
    return "an" if abbreviation[:1].upper() in "AEFHILMNORSX" else "a"


def _sr_modalities(predictor: Predictor, rules: SeriesRules) -> tuple[str, ...] | None:
    """The modalities whose series get an SR: the model's own, unless the user chose them (--modality)."""
    if rules.modalities:
        return None
    return PRESET_MODALITIES.get(predictor.preset)


def default_workers(cpus: int | None = None) -> int:
    """DataLoader workers for reading when none are asked for: the usable CPUs beyond two, at most 4.

    Two CPUs stay with the main process (the model's forward pass, the rows); reading and
    preprocessing move to workers only on CPUs beyond those. With two or fewer CPUs: 0, the main
    process reads (measured on 2 CPUs: docs/performance.md; more CPUs were not available to measure).
    """
    from medtl.runtime import usable_cpus

    n = usable_cpus() if cpus is None else cpus
    return max(0, min(4, n - 2))


def _adopt_unsalted_ids(series: list[Series], done: dict[str, dict]) -> None:
    """A folder written before scrubbed case ids carried their salted hash holds them without it: a series
    whose id, less the hash, is such a row (and is the only one that scrubs to it) keeps that id, so the
    rerun neither predicts it again nor writes it twice."""
    def unsalted(s: Series) -> str:  # the id without the salted hash _case_id added to a scrubbed path
        old, _, suffix = s.case_id.rpartition("#")
        return old if s.case_id != s.key and re.fullmatch(r"[0-9a-f]{8}", suffix) else ""

    bare = Counter(unsalted(s) for s in series)
    for s in series:
        old = unsalted(s)
        if old and s.case_id not in done and old in done and bare[old] == 1:
            s.case_id = old
        elif s.key == s.series_uid and s.case_id not in done and s.key in done:  # a text "UID" once kept whole
            s.case_id = s.key


def _case_id(s: Series, redactor: Redactor, salt: bytes) -> str:
    """The row's ``case_id`` as written (and as a rerun finds it in the ledger). A path the redactor changed
    gets a salted hash of itself: ``Smith_Jane/study1`` and ``Brown_Paul/study1`` both read
    ``[redacted]_[redacted]/study1``, and must stay two cases; so does a "UID" that is text holding an
    identifier (``1.2.3.SMITHJ01.1``)."""
    shown = shown_uid(s.key, redactor) if s.key == s.series_uid else redactor(s.key)
    if s.key == s.series_uid and shown == escape_controls(s.key):  # a UID, kept whole
        return shown
    if shown == s.key:
        return shown
    return f"{shown}#{path_tag(s.key, salt)}"


def _remove_leftovers(out: Path) -> None:
    """Temporary folders of a run that was killed (we hold the lock: nobody else is using them)."""
    for p in out.glob(".tmp-*"):
        if p.is_dir() and not p.is_symlink():
            log.info("removing %s left by an interrupted run", p.name)
            shutil.rmtree(p, ignore_errors=True)
    for p in list(out.glob("*.tmp")) + list(out.glob("sr/*/*.tmp")):
        p.unlink(missing_ok=True)


def _salt(out: Path) -> bytes:
    """The output folder's path salt (made once, 0600): the same input path hashes the same way on a
    rerun (resuming needs it), and differently in every other output folder."""
    path = out / PATH_SALT_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def _as_is(item):  # DataLoader collate: items are dicts of their own, no stacking
    return item


def _flush(pending: list[tuple[Series, dict]], predictor: Predictor, writer: _RowWriter, batch_size: int) -> int:
    """Run the model on the pending series' images (in chunks of ``batch_size``) and write their rows."""
    if not pending:
        return 0
    try:
        probs = _predict(predictor, torch.cat([it["x"] for _, it in pending]), batch_size)
    except Exception:
        probs = None  # one bad input spoils the batch: retry each series alone to find it
    start = 0
    for s, item in pending:
        n = item["x"].shape[0]
        if probs is not None:
            p = probs[start:start + n]
        else:
            try:
                p = _predict(predictor, item["x"], batch_size)
            except Exception as err:
                item["error"] = describe_error(err, s, s.sop_uids, writer.include_identifiers)
                writer.write(s, item, None)
                continue
        start += n
        item["x"] = None  # free the pixels before the SR is built
        item["n_images"] = n
        writer.write(s, item, p.mean(0).tolist())  # a 2D model on a stack: mean over its images
    return len(pending)


def _predict(predictor: Predictor, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([predictor.predict(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


class _RowWriter:
    """Builds a row (and the SR) for a finished series and appends it to the ledger."""

    def __init__(self, predictor, ledger, out, store, write_sr, include_identifiers, result, redactor,
                 max_store_failures: int = 0, sr_modalities: tuple[str, ...] | None = None):
        self.predictor, self.ledger, self.out, self.store = predictor, ledger, out, store
        self.sr_modalities = sr_modalities  # series of other modalities get no SR (None: every series)
        self.write_sr, self.include_identifiers, self.result = write_sr, include_identifiers, result
        self.redactor = redactor
        self.max_store_failures = max_store_failures  # the circuit breaker for SR uploads (0: none)
        self.input_folder: Path | None = None  # set for a folder input: series folders are shown relative to it
        self.store_failures = 0  # consecutive SRs the PACS could not take

    def _shown_folder(self, folder: Path) -> str:
        """A series' folder as file rows show their paths: relative to the input folder when under it."""
        if self.input_folder is not None:
            with contextlib.suppress(ValueError):
                return folder.resolve().relative_to(self.input_folder).as_posix() or "."
        return str(folder)

    def _store(self, ds) -> str | None:
        """STOW-RS one SR: None when stored, else why not (the PACS unreachable); stops the run after
        ``max_store_failures`` in a row, as a series the PACS cannot serve does."""
        try:
            self.store.store([ds])
        except PacsUnreachable as err:
            self.store_failures += 1
            if self.max_store_failures and self.store_failures >= self.max_store_failures:
                raise PacsUnreachable(
                    f"stopped: the PACS could not take {self.store_failures} SRs in a row (last: {err.reason}). "
                    "The predictions and SR files so far are kept; rerun the same command when the PACS is back: "
                    "it sends the SRs and goes on", err.where) from None
            return err.reason
        self.store_failures = 0
        return None

    def send_again(self, rows: list[dict]) -> None:
        """The SRs of earlier ok rows that the PACS could not take, sent from their files; each sent one
        gets its row again, stored and no longer retryable (the table keeps the latest row)."""
        import pydicom

        for row in rows:
            path = self.out / str(row.get("sr_path") or "")
            if not row.get("sr_path") or not path.is_file():
                self.result.sr_pending += 1
                continue
            why = self._store(pydicom.dcmread(path))
            if why is not None:
                self.result.sr_pending += 1
                continue
            again = {k: v for k, v in row.items() if k != "retryable"}
            again.update(error="", sr_stored=True,
                         finished_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            self.ledger.append(again, sync=False)
        self.ledger.sync()

    def write(self, s: Series, item: dict, probs: list[float] | None) -> None:
        pr = self.predictor
        row: dict[str, Any] = {
            "case_id": s.case_id,
            "source": s.source,  # relative path of a one-file row; empty for a DICOM series
            "study_uid": s.study_uid, "series_uid": s.series_uid, "modality": s.modality,
            "n_instances": len(item["files"]), "n_images": item.get("n_images"),
            "status": "ok", "error": "", "predicted_label": None, "probabilities": None,
            **({f"predicted_{pr.label_names[0]}": None} if pr.is_regression else
               {f"prob_{label}": None for label in pr.label_names}),
            "threshold": pr.threshold, "model_name": pr.name, "model_version": pr.version,
            "sr_path": "", "sr_stored": False,
            **s.extra,
            **({FILE_STAMP: stamp} if (stamp := _file_stamp(s)) else {}),
        }
        if self.include_identifiers:
            for tag, column in IDENTIFIER_COLUMNS.items():
                row[column] = s.identifiers.get(tag, "")
            if s.is_dicom and item["files"] and s.remote is None and not row["source"]:
                row["source"] = "; ".join(sorted({self._shown_folder(Path(f).parent) for f in item["files"]}))
        if probs is None:
            row.update(status=s.status or "error", error=item["error"])
            if item.get("retryable"):
                row["retryable"] = True  # not a result: the next run tries this series again
        else:
            modality = s.modality.upper()
            # a series of a modality the model never saw (a chest X-ray model on an MR series): said in its row
            outside = (s.is_dicom and self.sr_modalities is not None and modality not in self.sr_modalities
                       and modality not in UNTELLING_MODALITIES)
            caveat = (f"{_an(s.modality)} {s.modality} series, not the {'/'.join(self.sr_modalities or ())} this model "
                      "was trained on, so its prediction here is outside what the model learned") if outside else ""
            if pr.is_regression:  # a value in the target's units (the head de-standardises), no class
                row[f"predicted_{pr.label_names[0]}"] = round(float(probs[0]), 6)
            else:
                named = {label: round(float(p), 6) for label, p in zip(pr.label_names, probs)}
                row.update(predicted_label=pr.decide(probs), probabilities=named,
                           **{f"prob_{label}": p for label, p in named.items()})
            row["error"] = item.get("note") or ""
            if outside:  # a chest X-ray model's finding must not reach a radiologist's MR study as a report
                row["error"] = "; ".join(filter(None, [row["error"], ("no SR: " if self.write_sr else "") + caveat]))
            elif self.write_sr and s.is_dicom and not pr.is_regression:
                self._sr(s, item, row)
        for k, v in row.items():  # one redaction for every text read from an input
            if k in UID_COLUMNS and isinstance(v, str):
                row[k] = shown_uid(v, self.redactor)
            elif isinstance(v, str) and k not in UNREDACTED_COLUMNS:
                row[k] = self.redactor(v)
        if isinstance(row["error"], str):  # cut after the redaction: an identifier cut in two would survive it
            row["error"] = row["error"][:ERROR_CHARS]
        row["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.ledger.append(row, sync=False)  # the loop syncs once per model batch
        if row["status"] == "ok":
            self.result.ok += 1
            if row["error"]:  # a result with a caveat (little coverage, no SR): said where the run is watched
                log.warning("series %s: %s", row["case_id"], row["error"])
        elif row["status"] == "duplicate":
            self.result.duplicates += 1
            log.info("file %s: %s", row["source"], row["error"])
        else:
            self.result.errors += 1
            where = f" ({row['source']})" if row.get("source") and row["source"] != row["case_id"] else ""
            log.warning("series %s%s: %s", row["case_id"], where, row["error"])  # source: redacted like the row
        if item.get("tmp"):
            shutil.rmtree(item["tmp"], ignore_errors=True)

    def _sr(self, s: Series, item: dict, row: dict) -> None:
        import pydicom

        from medtl.deploy.sr import build_sr, read_headers

        pr = self.predictor
        try:
            ds = build_sr(read_headers([Path(f) for f in item["files"]]), row["probabilities"], row["predicted_label"],
                          model_name=pr.name, model_version=pr.version, threshold=pr.threshold)
            path = self.out / "sr" / safe_name(s.study_uid) / f"{safe_name(s.series_uid)}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
            os.replace(tmp, path)
            row["sr_path"] = path.relative_to(self.out).as_posix()
            if self.store is not None:
                why = self._store(ds)
                if why is not None:
                    # The prediction and the SR file stand: the row stays ok (evaluate reads it), marked
                    # retryable so that a rerun sends the SR (without predicting the series again).
                    row.update(error=f"SR not stored: {why}; a rerun stores it", retryable=True)
                    self.result.sr_pending += 1
                    return
                row["sr_stored"] = True
        except PacsUnreachable:
            raise  # the circuit breaker: the run stops
        except MedtlError as err:  # the source's headers forbid an SR (invalid UIDs): for good, not for this run
            why = "no SR: " + describe_error(err, s, s.sop_uids, self.include_identifiers)
            row["error"] = "; ".join(filter(None, [row["error"], why]))  # the prediction stands: the row stays ok
        except Exception as err:  # writing failed (disk full, permissions): the next run predicts and writes again
            row.update(status="error", retryable=True,
                       error="SR not written: " + describe_error(err, s, s.sop_uids, self.include_identifiers))


def _write_excluded(out: Path, excluded: list[tuple[Series, str]], redactor: Redactor) -> None:
    tmp = out / "excluded.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "study_uid", "series_uid", "modality", "reason"])
        for s, why in excluded:  # header values, like results.csv: redacted and formula-escaped
            w.writerow([csv_cell(v) for v in (s.case_id, escape_controls(s.study_uid),
                                           escape_controls(s.series_uid), redactor(s.modality), redactor(why))])
    os.replace(tmp, out / "excluded.csv")


def _finish_csv(ledger: Ledger, predictor: Predictor, include_identifiers: bool) -> None:
    columns = ["case_id", "source", "study_uid", "series_uid", "modality", "n_instances", "n_images", "status",
               "error", "predicted_label", "probabilities",
               *([f"predicted_{predictor.label_names[0]}"] if predictor.is_regression else
                 [f"prob_{label}" for label in predictor.label_names]),
               "threshold", "model_name", "model_version", "sr_path", "sr_stored", "retryable", "label", "split",
               "finished_utc"]  # a fixed header, whichever rows this run holds
    if include_identifiers:
        columns += list(IDENTIFIER_COLUMNS.values())
    try:
        ledger.write_csv(columns)
    except OSError as err:
        log.error("could not write results.csv: %s", err)
