"""Batch inference: folder / manifest / DICOMweb -> series -> model -> results table (+ DICOM SR).

``predict_batch`` is the whole job; ``medtl predict`` only parses arguments and calls it.

Outputs in ``out``:

- ``results.jsonl``: the ledger, one JSON object per series, appended as each finishes (resumable,
  see ``medtl.deploy.ledger``);
- ``results.csv``: the same rows as a table, rebuilt at the end of every run;
- ``excluded.csv``: series the selection rules left out, and why;
- ``sr/<StudyInstanceUID>/<SeriesInstanceUID>.dcm``: one Comprehensive SR per DICOM series (``write_sr``);
- ``run.json``: the model (name, version, weights hash) the folder belongs to.

Rows: ``key, source, study_uid, series_uid, modality, n_instances, n_images, status (ok | error),
error, prediction, probabilities, prob_<label>..., threshold, model_name, model_version, sr_path,
sr_stored, finished_utc`` and the manifest's ``label``/``split`` when present. Identifying header values
(patient name, id, birth date, accession number, dates) are added only with
``include_identifiers=True``; without it they are also scrubbed from error texts, and DICOM series
rows carry no file path (folder names often hold patient names).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medtl.deploy.dicomweb import DicomwebSource, is_url
from medtl.deploy.discover import (
    SCRUBBED_TAGS,
    Series,
    SeriesRules,
    scan_files,
    scan_folder,
    scan_manifest,
)
from medtl.deploy.inputs import SeriesLoader
from medtl.deploy.ledger import Ledger, scrub, scrubber
from medtl.deploy.model import Predictor, load_model
from medtl.deploy.uids import safe_name
from medtl.errors import MedtlError

log = logging.getLogger(__name__)

IDENTIFIER_COLUMNS = {"PatientName": "patient_name", "PatientID": "patient_id", "PatientBirthDate": "patient_birth_date",
                      "AccessionNumber": "accession_number", "StudyDate": "study_date"}


@dataclass
class BatchResult:
    out: Path
    ok: int = 0
    errors: int = 0
    resumed: int = 0  # rows already in the ledger, not processed again
    excluded: int = 0
    rows: list[dict] = field(default_factory=list)

    @property
    def csv(self) -> Path:
        return self.out / "results.csv"


def discover(input: str | Path, *, out: Path | None = None, data_root: str | Path | None = None,
             split: str | None = None, source=None) -> list[Series]:
    """The series of a folder, a file, a manifest (``.csv``) or a DICOMweb URL (``source`` given)."""
    if source is not None:
        return source.list_series()
    p = Path(input)
    if p.is_file() and p.suffix.lower() == ".csv":
        from medtl.paths import default_data_root

        return scan_manifest(p, data_root if data_root is not None else default_data_root(), split)
    if p.is_dir():
        return scan_folder(p, skip=out)
    if p.is_file():  # one image file, or one multi-frame DICOM
        return scan_files([p], p.parent)
    raise MedtlError("input is neither a folder, a file, a manifest (.csv) nor a DICOMweb URL (http[s]://...)", p)


class _Prepared(torch.utils.data.Dataset):
    """Series -> model input, in DataLoader workers when asked; failures come back as error texts."""

    def __init__(self, series: list[Series], loader: SeriesLoader, source, tmp_root: Path, include_identifiers: bool):
        self.series, self.loader, self.source = series, loader, source
        self.tmp_root, self.include_identifiers = tmp_root, include_identifiers

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.series[i]
        item: dict[str, Any] = {"index": i, "x": None, "error": None, "files": [str(f) for f in s.files], "tmp": None}
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
            item["x"] = self.loader(s, files)
        except Exception as err:  # every failure is a row, never the end of the run
            item["error"] = describe_error(err, s, sops, self.include_identifiers)
        return item


def describe_error(err: BaseException, s: Series, sops: dict[str, str], include_identifiers: bool) -> str:
    """The reason for an error row, without identifiers unless they were asked for."""
    if isinstance(err, MedtlError):
        text = err.reason
        where = err.where or ""
        if where and where in sops and sops[where]:
            text += f" (instance {sops[where]})"  # a UID locates the file without naming the patient
        elif where and include_identifiers:
            text += f" ({where})"
        elif where and not s.is_dicom:
            text += f" ({s.source or Path(where).name})"
    else:
        text = f"{type(err).__name__}: {err}"
    if not include_identifiers:
        text = scrub(text, s.identifiers)
        for f in s.files:  # paths of DICOM files may hold patient names in folder names
            if s.is_dicom:
                text = text.replace(str(f), "[file]")
    return " ".join(text.split())[:1000]


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
    batch_size: int = 8,
    workers: int = 0,
    device: str | None = None,
    threshold: float | None = None,
    progress: bool = True,
    retry_errors: bool = False,
) -> BatchResult:
    """Predict every selected series of ``input`` and write the results to ``out``; see the module docstring.

    ``store_sr`` (default: on when the input is a DICOMweb URL and ``write_sr``) sends each SR back
    to the PACS with STOW-RS. Reruns into the same ``out`` process only the series not yet in it;
    with ``retry_errors`` also those whose row is an error (e.g. after a PACS outage): the new row is
    appended, and the table keeps the latest row of each series.
    """
    from tqdm.auto import tqdm

    predictor = model if isinstance(model, Predictor) else load_model(model, device=device, threshold=threshold)
    if threshold is not None and isinstance(model, Predictor):
        predictor = dataclasses.replace(predictor, threshold=float(threshold))
    out = Path(out)
    rules = rules or SeriesRules()
    source = input if isinstance(input, DicomwebSource) else DicomwebSource(str(input)) if is_url(str(input)) else None
    store_sr = bool(write_sr and source is not None) if store_sr is None else bool(store_sr)
    if store_sr and source is None:
        raise MedtlError("storing SRs needs a DICOMweb input", "store_sr")
    if batch_size < 1:
        raise MedtlError(f"batch_size must be at least 1, got {batch_size}", "batch_size")

    ledger = Ledger(out)
    done = ledger.start({
        "model_name": predictor.name, "model_version": predictor.version, "model_digest": predictor.digest,
        "label_names": predictor.label_names, "preprocess": predictor.preprocess,
        "input": str(source) if source else str(input),
    })
    result = BatchResult(out)
    try:
        series = discover(input, out=out, data_root=data_root, split=split, source=source)
        # Every identifier seen anywhere in the input: scrubbed from all texts (an unreadable file's
        # path may hold the name its folder was given, which only other files' headers reveal).
        redact = (lambda text: text) if include_identifiers else \
            scrubber({v for s in series for k, v in s.identifiers.items() if k in SCRUBBED_TAGS})
        chosen, excluded = rules.split(series)
        _write_excluded(out, excluded)
        result.excluded = len(excluded)
        if retry_errors:
            done = {k: r for k, r in done.items() if r.get("status") != "error"}
        todo = [s for s in chosen if s.key not in done]
        result.resumed = len(chosen) - len(todo)
        log.info("%d series found, %d selected, %d already done, %d to predict", len(series), len(chosen),
                 result.resumed, len(todo))
        loader = SeriesLoader(predictor.preset, predictor.preset_options, predictor.spatial_dims)
        with tempfile.TemporaryDirectory(prefix="medtl-predict-") as tmp_root:
            data = _Prepared(todo, loader, source, Path(tmp_root), include_identifiers)
            batches = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers,
                                                  collate_fn=_as_is)
            writer = _RowWriter(predictor, ledger, out, source if store_sr else None, write_sr, include_identifiers,
                                result, redact)
            pending: list[tuple[Series, dict]] = []
            with tqdm(total=len(todo), unit="series", desc="predict", disable=not progress) as bar:
                for item in batches:
                    s = todo[item["index"]]
                    if item["error"] is not None:
                        writer.write(s, item, None)
                        bar.update(1)
                        continue
                    pending.append((s, item))
                    if sum(it["x"].shape[0] for _, it in pending) >= batch_size:
                        bar.update(_flush(pending, predictor, writer, batch_size))
                        pending = []
                bar.update(_flush(pending, predictor, writer, batch_size))
    finally:
        ledger.close()
        _finish_csv(ledger, predictor, include_identifiers)
    result.rows = ledger.rows()
    log.info("predicted %d series: %d ok, %d error(s); results in %s", result.ok + result.errors, result.ok,
             result.errors, out / "results.csv")
    return result


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

    def __init__(self, predictor, ledger, out, store, write_sr, include_identifiers, result, redact):
        self.predictor, self.ledger, self.out, self.store = predictor, ledger, out, store
        self.write_sr, self.include_identifiers, self.result = write_sr, include_identifiers, result
        self.redact = redact

    def write(self, s: Series, item: dict, probs: list[float] | None) -> None:
        pr = self.predictor
        row: dict[str, Any] = {
            "key": s.key,
            "source": s.source if (self.include_identifiers or not s.is_dicom or s.extra) else "",
            "study_uid": s.study_uid, "series_uid": s.series_uid, "modality": s.modality,
            "n_instances": len(item["files"]), "n_images": item.get("n_images"),
            "status": "ok", "error": "", "prediction": None, "probabilities": None,
            **{f"prob_{label}": None for label in pr.label_names},
            "threshold": pr.threshold, "model_name": pr.name, "model_version": pr.version,
            "sr_path": "", "sr_stored": False,
            **s.extra,
        }
        if self.include_identifiers:
            for tag, column in IDENTIFIER_COLUMNS.items():
                row[column] = s.identifiers.get(tag, "")
            if s.is_dicom and item["files"] and s.remote is None:
                row["source"] = str(Path(item["files"][0]).parent)
        if probs is None:
            row.update(status="error", error=item["error"])
        else:
            named = {label: round(float(p), 6) for label, p in zip(pr.label_names, probs)}
            row.update(prediction=pr.decide(probs), probabilities=named,
                       **{f"prob_{label}": p for label, p in named.items()})
            if self.write_sr and s.is_dicom:
                self._sr(s, item, row)
        row["source"], row["error"] = self.redact(row["source"]), self.redact(row["error"])
        row["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.ledger.append(row)
        if row["status"] == "ok":
            self.result.ok += 1
        else:
            self.result.errors += 1
            log.warning("series %s: %s", s.key, row["error"])
        if item.get("tmp"):
            shutil.rmtree(item["tmp"], ignore_errors=True)

    def _sr(self, s: Series, item: dict, row: dict) -> None:
        import pydicom

        from medtl.deploy.sr import build_sr, read_headers

        pr = self.predictor
        try:
            ds = build_sr(read_headers([Path(f) for f in item["files"]]), row["probabilities"], row["prediction"],
                          model_name=pr.name, model_version=pr.version, threshold=pr.threshold)
            path = self.out / "sr" / safe_name(s.study_uid) / f"{safe_name(s.series_uid)}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
            os.replace(tmp, path)
            row["sr_path"] = path.relative_to(self.out).as_posix()
            if self.store is not None:
                self.store.store([ds])
                row["sr_stored"] = True
        except Exception as err:  # the prediction stands; the row says what went wrong with its SR
            row.update(status="error", error="SR: " + describe_error(err, s, s.sop_uids, self.include_identifiers))


def _write_excluded(out: Path, excluded: list[tuple[Series, str]]) -> None:
    tmp = out / "excluded.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "study_uid", "series_uid", "modality", "reason"])
        for s, why in excluded:
            w.writerow([s.key, s.study_uid, s.series_uid, s.modality, why])
    os.replace(tmp, out / "excluded.csv")


def _finish_csv(ledger: Ledger, predictor: Predictor, include_identifiers: bool) -> None:
    columns = ["key", "source", "study_uid", "series_uid", "modality", "n_instances", "n_images", "status", "error",
               "prediction", "probabilities", *[f"prob_{label}" for label in predictor.label_names], "threshold",
               "model_name", "model_version", "sr_path", "sr_stored", "label", "split", "finished_utc"]
    if include_identifiers:
        columns += list(IDENTIFIER_COLUMNS.values())
    try:
        ledger.write_csv(columns)
    except OSError as err:
        log.error("could not write results.csv: %s", err)
