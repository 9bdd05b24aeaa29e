"""Batch runs end to end on DICOM made from the real images: rows, error rows, identifiers, resuming."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from medtl.deploy import SeriesRules, load_model, predict_batch
from medtl.deploy.sr import build_sr, read_headers, sr_summary
from medtl.errors import MedtlError

pytestmark = [pytest.mark.real_data, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

NAME, BIRTH, PID = "Secretname^Patientone", "19010203", "PID-777"
SECRETS = ("secretname", "patientone", BIRTH, PID.lower())
EXPECTED = {  # series tag -> expected status and a piece of its error
    "good-a": ("ok", ""), "good-b": ("ok", ""), "chest.png": ("ok", ""),
    "nopix": ("error", "no pixel data"), "report": ("error", "no pixel data"),
    "trunc": ("error", ""), "corrupt.dcm": ("error", "incomplete DICOM header"),
    "odd": ("ok", "no SR: the source's SeriesInstanceUID break"),  # the prediction stands
}


@pytest.fixture(scope="module")
def hospital(tmp_path_factory, mprage_files, data_root, new_series) -> Path:
    """A export folder as a hospital might hand it over: good series, bad files, a report, a picture."""
    root = tmp_path_factory.mktemp("hospital")
    patient = root / f"{NAME}_{BIRTH}"  # folder names often carry the patient's name
    ids = {"PatientName": NAME, "PatientBirthDate": BIRTH, "PatientID": PID}
    new_series(mprage_files[10:14], patient / "mr_a", "good-a", **ids)
    good_b = new_series(mprage_files[14:16], patient / "mr_b", "good-b", **ids)
    (nopix,) = new_series(mprage_files[16:17], patient / "nopix", "nopix", **ids)
    ds = pydicom.dcmread(nopix)
    del ds.PixelData  # a DICOM without pixels
    ds.save_as(nopix)
    (trunc,) = new_series(mprage_files[17:18], patient / "trunc", "trunc", **ids)
    trunc.write_bytes(trunc.read_bytes()[:-30000])  # header intact, pixel data cut short
    (patient / "corrupt.dcm").write_bytes(mprage_files[18].read_bytes()[:300])  # header cut short
    report = build_sr(read_headers(good_b), {"x": 0.5, "y": 0.5}, "x", model_name="reader", model_version="1")
    report.SeriesDescription = "radiologist report"  # a non-image series
    pydicom.dcmwrite(patient / "report.dcm", report, enforce_file_format=True)
    shutil.copy(min((data_root / "cxr_nih" / "images" / "pneumonia").glob("*.png")), root / "chest.png")
    # A header value that tries to steer output paths.
    new_series(mprage_files[19:20], root / "odd", "odd", SeriesInstanceUID="../../../evil")
    return root


def _tag(row: dict) -> str:
    for tag in EXPECTED:
        if tag in (row["case_id"], row["source"]) or row["series_uid"] == pydicom.uid.generate_uid(
                entropy_srcs=[tag, "series"]):
            return tag
    if row["series_uid"] == "../../../evil":
        return "odd"
    if row["modality"] == "SR":
        return "report"
    return row["source"].rsplit("/", 1)[-1]


def _table(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rows(out: Path) -> list[dict]:
    """Every line of the ledger (not only the latest per series)."""
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_rows_and_error_rows(hospital, model_mr2d, tmp_path, dciodvfy):
    out = tmp_path / "out"
    result = predict_batch(model_mr2d, hospital, out, write_sr=True, progress=False)
    rows = {_tag(r): r for r in _rows(out)}
    assert len(rows) == len(_rows(out)) == 8
    assert {t: r["status"] for t, r in rows.items()} == {t: s for t, (s, _) in EXPECTED.items()}
    for tag, (_, error) in EXPECTED.items():
        assert error in rows[tag]["error"], (tag, rows[tag]["error"])
    assert (result.ok, result.errors) == (4, 4)
    good = rows["good-a"]
    assert good["n_instances"] == 4 and good["n_images"] == 4 and good["modality"] == "MR"
    assert abs(sum(good["probabilities"].values()) - 1) < 1e-5
    assert good["predicted_label"] in ("no_finding", "pneumonia") and good["threshold"] == 0.5
    assert good["model_name"] == "medtl-resnet10-mri2d" and len(good["model_version"]) == 12
    assert rows["chest.png"]["source"] == "chest.png" and rows["chest.png"]["sr_path"] == ""  # no SR without DICOM
    # The CSV holds the same rows as the ledger.
    table = _table(out / "results.csv")
    assert sorted(r["case_id"] for r in table) == sorted(r["case_id"] for r in rows.values())
    assert float(next(r for r in table if r["case_id"] == good["case_id"])["prob_pneumonia"]) == good["prob_pneumonia"]
    # One valid SR per good DICOM series, saying what the row says. A hostile UID steers no path, and
    # gets no SR (it would be invalid DICOM), though its prediction is kept.
    srs = sorted(out.glob("sr/*/*.dcm"))
    assert len(srs) == 2 and all(p.resolve().is_relative_to((out / "sr").resolve()) for p in srs)
    assert rows["odd"]["predicted_label"] and rows["odd"]["sr_path"] == ""
    assert not list(tmp_path.rglob("evil*")) and not list(hospital.parent.rglob("evil*"))
    for path in srs:
        assert dciodvfy(path) == []
    back = sr_summary(pydicom.dcmread(out / good["sr_path"]))
    assert back["prediction"] == good["predicted_label"]
    assert back["probabilities"] == pytest.approx(good["probabilities"])


def test_identifiers_stay_out_unless_asked(hospital, model_2d, tmp_path, caplog, capsys):
    import logging

    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    predict_batch(model_2d, hospital, out, progress=False)
    written = " ".join(p.read_text() for p in out.iterdir() if p.is_file())
    seen = (written + caplog.text + "".join(capsys.readouterr())).lower()
    for secret in SECRETS:
        assert secret not in seen, secret
    assert "[redacted]" in written  # the corrupt file's folder name was scrubbed, its file name kept

    named = tmp_path / "named"
    predict_batch(model_2d, hospital, named, include_identifiers=True, progress=False)
    table = {r["patient_name"] for r in _table(named / "results.csv")}
    assert NAME in table
    assert any(NAME in r["source"] for r in _rows(named))
    # a series row's folder is shown as a file row's path is: relative to the input folder
    good = next(r for r in _rows(named) if _tag(r) == "good-a")
    assert good["source"] == f"{NAME}_{BIRTH}/mr_a"
    # asked for identifiers, a bad instance's row names its file, not only its UID (IT has to find it)
    trunc = next(r for r in _rows(named) if _tag(r) == "trunc")
    assert "(instance " in trunc["error"] and str(hospital / f"{NAME}_{BIRTH}" / "trunc") in trunc["error"]


def test_rules_and_a_3d_model(hospital, model_3d, tmp_path):
    out = tmp_path / "out"
    rules = SeriesRules(modalities=("MR",), min_slices=3)
    result = predict_batch(model_3d, hospital, out, rules=rules, progress=False)
    rows = {_tag(r): r for r in _rows(out)}
    # good-a (4 slices) runs as one volume; broken files are never filtered away by rules.
    assert rows["good-a"]["status"] == "ok" and rows["good-a"]["n_images"] == 1
    # 4 slices of 1 mm against the model's 128 mm (3%): the prediction rests on padding, and the row says so
    assert "the volume covers 3% of the model's 128x128x128 mm field of view" in rows["good-a"]["error"]
    assert set(rows) == {"good-a", "corrupt.dcm"}
    assert result.excluded == 6
    excluded = _table(out / "excluded.csv")
    assert len(excluded) == 6 and any("fewer than 3" in r["reason"] for r in excluded)


def test_resume_after_an_interrupt(hospital, model_2d, tmp_path):
    out = tmp_path / "out"
    predictor = load_model(model_2d, device="cpu")
    calls = []

    def interrupted(batch):
        calls.append(batch.shape[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        return predictor.predict(batch)

    with pytest.raises(KeyboardInterrupt):
        predict_batch(dataclasses.replace(predictor, predict=interrupted), hospital, out, batch_size=1,
                      progress=False)
    first = _rows(out)
    assert 0 < len(first) < 8 and (out / "results.csv").exists()  # what was done is already in the table

    resumed_calls = []

    def counting(batch):
        resumed_calls.append(batch.shape[0])
        return predictor.predict(batch)

    result = predict_batch(dataclasses.replace(predictor, predict=counting), hospital, out, batch_size=1,
                           progress=False)
    rows = _rows(out)
    assert sorted(r["case_id"] for r in rows) == sorted({r["case_id"] for r in rows}) and len(rows) == 8
    assert result.resumed == len(first)
    done = {r["case_id"] for r in first}
    missing_images = sum(r["n_images"] or 0 for r in rows if r["case_id"] not in done)
    assert len(resumed_calls) == missing_images  # only what was missing ran again


def test_a_series_that_gained_an_instance_is_predicted_again(mprage_files, new_series, model_mr2d, tmp_path, caplog):
    # A nightly run into one --out met a series still arriving: its row (and SR) would describe 2 of 3 slices.
    series = new_series(mprage_files[20:23], tmp_path / "in" / "mr", "growing")
    late = series[-1].rename(tmp_path / "late.dcm")
    out = tmp_path / "out"
    predict_batch(model_mr2d, tmp_path / "in", out, write_sr=True, progress=False)
    (first,) = _rows(out)
    assert first["n_instances"] == 2
    late.rename(series[-1])
    result = predict_batch(model_mr2d, tmp_path / "in", out, write_sr=True, progress=False)
    assert "1 input(s) changed since they were predicted (a series' number of instances" in caplog.text
    assert result.resumed == 0 and result.ok == 1
    rows = _table(out / "results.csv")
    assert len(rows) == 1 and rows[0]["n_instances"] == "3"  # the new row replaces the old one
    srs = sorted(out.glob("sr/*/*.dcm"))
    assert len(srs) == 1 and len(read_headers(srs)[0].CurrentRequestedProcedureEvidenceSequence[0]
                                 .ReferencedSeriesSequence[0].ReferencedSOPSequence) == 3
    caplog.clear()
    assert predict_batch(model_mr2d, tmp_path / "in", out, progress=False).resumed == 1  # and then it is done
    assert "changed since they were predicted" not in caplog.text


def test_a_repaired_file_retried_joins_its_series_and_its_error_row_goes(mprage_files, new_series, model_mr2d,
                                                                        tmp_path):
    series = new_series(mprage_files[24:26], tmp_path / "in" / "mr", "repaired")
    good = series[-1].read_bytes()
    series[-1].write_bytes(good[:200])  # cut short in transfer: a row of its own, an error
    out = tmp_path / "out"
    predict_batch(model_mr2d, tmp_path / "in", out, progress=False)
    assert sorted(r["status"] for r in _table(out / "results.csv")) == ["error", "ok"]
    series[-1].write_bytes(good)  # sent again, whole
    predict_batch(model_mr2d, tmp_path / "in", out, progress=False, retry_errors=True)
    (row,) = _table(out / "results.csv")  # one series of two instances; the file's error row is gone
    assert row["status"] == "ok" and row["n_instances"] == "2"


def test_a_rerun_at_another_threshold_is_refused_not_mixed_into_the_table(hospital, model_2d, tmp_path):
    """Rows made at one decision threshold never share a results table with rows made at another: a rerun
    with another --threshold (or without the one the folder was made with) is refused, naming the way to
    resume; the same threshold resumes."""
    out = tmp_path / "out"
    first = predict_batch(model_2d, hospital, out, threshold=0.3, progress=False)
    assert first.ok > 0 and {r["threshold"] for r in _rows(out) if r["status"] == "ok"} == {0.3}
    for other in (None, 0.5):  # None: the model's own threshold
        with pytest.raises(MedtlError, match=r"threshold 0\.3.*--threshold 0\.3"):
            predict_batch(model_2d, hospital, out, threshold=other, progress=False)
    assert predict_batch(model_2d, hospital, out, threshold=0.3, progress=False).resumed == 8


def test_a_rerun_that_changes_redact_paths_or_include_identifiers_is_refused(hospital, model_2d, tmp_path):
    """A hospital-IT review: a rerun with --redact-paths into a folder made without it predicted every one-file
    input again under a hashed key (two rows each, the plain paths kept); one without --include-identifiers into a
    folder made with it kept the identifier columns. Both are refused now, naming how to resume; a folder from
    before the option was recorded counts as made with it where its rows hold identifiers."""
    import json

    for key, first, then, flag in (("paths", {}, {"redact_paths": True}, "--redact-paths"),
                                   ("ids", {"include_identifiers": True}, {}, "--include-identifiers")):
        out = tmp_path / key
        made = predict_batch(model_2d, hospital, out, progress=False, **first)
        assert made.ok > 0
        n = len(_rows(out))
        with pytest.raises(MedtlError, match=f"results made with{'out' if not first else ''} {flag}, and this "
                                             f"run is with{'out' if first else ''} it.*to resume, rerun"):
            predict_batch(model_2d, hospital, out, progress=False, **then)
        assert len(_rows(out)) == n  # nothing added
        assert predict_batch(model_2d, hospital, out, progress=False, **first).resumed == made.ok + made.errors
    run = json.loads((tmp_path / "ids" / "run.json").read_text())
    del run["include_identifiers"]  # as a folder written before the option was recorded
    (tmp_path / "ids" / "run.json").write_text(json.dumps(run))
    with pytest.raises(MedtlError, match="results made with --include-identifiers"):
        predict_batch(model_2d, hospital, tmp_path / "ids", progress=False)
    # such an old folder with no rows yet (killed before its first series) holds nothing to mix with
    (tmp_path / "ids" / "results.jsonl").write_text("")
    assert predict_batch(model_2d, hospital, tmp_path / "ids", progress=False).ok == made.ok


def test_a_manifests_labels_and_splits_are_kept_as_written_while_names_are_scrubbed(model_2d, mprage_files,
                                                                                        new_series, tmp_path):
    """A patient called "Alpha Test": identifiers are scrubbed from the texts, but the manifest's own split
    'test' and labels reach results.csv as written, so medtl evaluate can still score the test rows."""
    root = tmp_path / "root"
    new_series(mprage_files[20:22], root / "s1", "scrub-1", PatientName="Alpha Test^Smithers", PatientID="ID-1")
    new_series(mprage_files[22:24], root / "s2", "scrub-2", PatientName="Alpha Test^Smithers", PatientID="ID-1")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\ns1,pneumonia,test\ns2,no_finding,val\n")
    result = predict_batch(model_2d, manifest, tmp_path / "out", data_root=root, progress=False)
    rows = {r["case_id"]: r for r in result.rows}
    assert {k: (r["status"], r["split"], r["label"]) for k, r in rows.items()} == {
        "s1": ("ok", "test", "pneumonia"), "s2": ("ok", "val", "no_finding")}
    text = (tmp_path / "out" / "results.csv").read_text()
    assert "Smithers" not in text and "ID-1" not in text


def test_a_truncated_copy_found_first_does_not_replace_the_intact_instance(model_2d, mprage_files, new_series,
                                                                             tmp_path):
    """Copies of one instance are not merged: the fuller copy is used even when a partial copy comes first in walk
    order (it would fail the whole series), and the partial one gets the duplicate row."""
    root = tmp_path / "export"
    files = new_series(mprage_files[24:28], root / "b_series", "dup-trunc")
    partial = root / "a_partial" / files[1].name
    partial.parent.mkdir(parents=True)
    partial.write_bytes(files[1].read_bytes()[:-20000])  # header intact, pixels cut short
    result = predict_batch(model_2d, root, tmp_path / "out", progress=False)
    series = [r for r in result.rows if r["status"] != "duplicate"]
    (dup,) = [r for r in result.rows if r["status"] == "duplicate"]
    assert [(r["status"], r["n_instances"]) for r in series] == [("ok", 4)]
    assert dup["source"] == f"a_partial/{files[1].name}" and f"b_series/{files[1].name}, a larger copy" in dup["error"]
    # a larger copy must pass the limits like any instance: one whose header claims 4000 frames is not swapped in
    from medtl.deploy.discover import scan_files
    from medtl.deploy.limits import Limits

    big = pydicom.dcmread(files[2])
    big.NumberOfFrames = 4000
    big.PixelData = big.PixelData + b"\0" * 100000
    (root / "c_big").mkdir()
    big.save_as(root / "c_big" / "x.dcm")
    found = scan_files(sorted(files) + [root / "c_big" / "x.dcm"], root, Limits(instance_bytes=8 * 2**20))
    (series,) = [f for f in found if f.status != "duplicate"]
    assert root / "c_big" / "x.dcm" not in series.files and series.n_frames == 4 and not series.error


def test_series_of_a_modality_the_model_did_not_learn_are_named(hospital, model_2d, tmp_path, caplog):
    """The chest X-ray model on an export holding brain MR: predicted (the user may mean it), but the run says
    how many series are of a modality the model was not trained on and how to select the right ones;
    choosing modalities yourself silences it."""
    with caplog.at_level("WARNING", logger="medtl.deploy.batch"):
        result = predict_batch(model_2d, hospital, tmp_path / "a", progress=False)
    mr = sum(r["modality"] == "MR" and r["status"] != "duplicate" for r in result.rows)
    assert mr >= 2 and result.unexpected_modalities == {"MR": mr}
    assert f"{mr} series are MR ({mr}), not the CR/DX/DR/RG this model (preset cxr)" in caplog.text
    assert "--modality CR,DX,DR,RG" in caplog.text
    chosen = predict_batch(model_2d, hospital, tmp_path / "b", rules=SeriesRules(modalities=("MR",)), progress=False)
    assert chosen.unexpected_modalities == {}


KILLER = """
import os, signal, sys
from medtl.deploy import ledger, predict_batch

sync, append, syncs, appends, rows = ledger.Ledger.sync, ledger.Ledger.append, [0], [0], [0]
mode, n, batch_size = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])

def sync_then_die(self):
    rows[0] += sync(self)
    syncs[0] += 1
    if mode == "sync" and syncs[0] == n:  # right after the n-th commit of the ledger
        print(f"DURABLE {rows[0]}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: like a power cut

def append_then_die(self, row, sync=True):
    append(self, row, sync)
    appends[0] += 1
    if mode == "append" and appends[0] == n:  # a row written, not yet synced: in the middle of a batch
        print(f"DURABLE {rows[0]}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

ledger.Ledger.sync, ledger.Ledger.append = sync_then_die, append_then_die
predict_batch(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=batch_size, write_sr=True, progress=False)
"""


def _killed(model, inputs, out, mode: str, n: int, batch_size: int) -> int:
    """Run predict_batch in a child that SIGKILLs itself; the number of rows it had made durable."""
    run = subprocess.run([sys.executable, "-c", KILLER, str(model), str(inputs), str(out), mode, str(n),
                          str(batch_size)], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    return int(run.stderr.split("DURABLE ")[-1].split()[0])


def test_resume_after_sigkill(hospital, model_2d, tmp_path):
    out = tmp_path / "out"
    durable = _killed(model_2d, hospital, out, "sync", 2, 1)  # killed right after the second batch's fsync
    assert 2 <= durable < 8
    assert len(_rows(out)) == durable and not (out / "results.csv").exists()
    result = predict_batch(model_2d, hospital, out, write_sr=True, progress=False)
    rows = _rows(out)
    assert len(rows) == 8 and len({r["case_id"] for r in rows}) == 8  # every series exactly once
    assert result.resumed == durable and result.ok + result.errors == 8 - durable
    assert len(_table(out / "results.csv")) == 8
    # A third run has nothing left to do.
    assert predict_batch(model_2d, hospital, out, progress=False).resumed == 8
    assert len(_rows(out)) == 8
    # Asked to, a rerun retries the error rows; the table still has one row per series (the latest).
    retried = predict_batch(model_2d, hospital, out, progress=False, retry_errors=True)
    redo = 8 - sum(r["status"] == "ok" for r in rows)
    assert retried.resumed == 8 - redo and retried.ok + retried.errors == redo
    assert len(_rows(out)) == 8 + redo and len(_table(out / "results.csv")) == 8


@pytest.mark.parametrize("n", [1, 3, 5])
def test_sigkill_in_the_middle_of_a_batch_loses_only_that_batch(hospital, model_2d, tmp_path, n):
    # Rows are fsync'd once per model batch: a kill after the n-th row was written but before its
    # batch was synced loses the unsynced rows (never a synced one), and the rerun makes each series
    # exactly once, the lost ones included.
    out = tmp_path / "out"
    durable = _killed(model_2d, hospital, out, "append", n, 4)
    on_disk = _rows(out) if (out / "results.jsonl").exists() else []
    assert len(on_disk) == durable < n  # the row being written was not synced: it is not there
    result = predict_batch(model_2d, hospital, out, write_sr=True, progress=False, batch_size=4)
    rows = _rows(out)
    assert len(rows) == 8 and len({r["case_id"] for r in rows}) == 8
    assert result.resumed == durable and result.ok + result.errors == 8 - durable
    assert len(_table(out / "results.csv")) == 8


def test_a_single_file_is_a_batch_of_one(hospital, model_2d, tmp_path):
    out = tmp_path / "out"
    result = predict_batch(model_2d, hospital / "chest.png", out, progress=False)
    rows = _rows(out)
    assert (result.ok, result.errors) == (1, 0) and len(rows) == 1
    assert rows[0]["status"] == "ok" and rows[0]["source"] == "chest.png"
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-5


def test_default_workers_leave_two_cpus_to_the_model():
    from medtl.deploy.batch import default_workers

    assert [default_workers(n) for n in (1, 2, 3, 4, 6, 16)] == [0, 0, 1, 2, 4, 4]


def test_a_series_of_a_modality_the_model_never_learned_gets_no_sr(mprage_files, new_series, model_2d, model_mr2d,
                                                                  tmp_path):
    """A chest X-ray model still answers on an MR series (a warning says so), but its finding must not reach
    the MR study as a report; naming the modality (--modality MR) writes one."""
    from medtl.deploy import SeriesRules

    new_series(mprage_files[:3], tmp_path / "in" / "mr", "no-sr")
    for model, rules, written in ((model_2d, None, False), (model_2d, SeriesRules(modalities=("MR",)), True),
                                  (model_mr2d, None, True)):
        out = tmp_path / f"out-{model.stem}-{bool(rules)}"
        result = predict_batch(model, tmp_path / "in", out, write_sr=True, rules=rules, progress=False)
        (row,) = _rows(out)
        assert row["status"] == "ok" and bool(row["sr_path"]) == written and result.ok == 1
        assert list(out.glob("sr/*/*.dcm")) if written else not (out / "sr").exists()
        if not written:
            assert row["error"].startswith("no SR: an MR series, not the CR/DX/DR/RG this model was trained on")
    # without --sr the row says so too: a results table read in a notebook looked like a normal result
    predict_batch(model_2d, tmp_path / "in", tmp_path / "no-sr", progress=False)
    (row,) = _rows(tmp_path / "no-sr")
    assert row["status"] == "ok" and row["error"].startswith("an MR series, not the CR/DX/DR/RG this model was "
                                                             "trained on, so its prediction here is outside")
    predict_batch(model_mr2d, tmp_path / "in", tmp_path / "mr-model", progress=False)
    assert _rows(tmp_path / "mr-model")[0]["error"] == ""


def test_a_non_imaging_pixel_object_gets_no_sr_and_is_named(model_2d, tmp_path, caplog):
    """An RT dose grid has pixels, so a model answers on it; it is no chest X-ray: no SR, and the warning counts it."""
    from pydicom.data import get_testdata_file

    (tmp_path / "in").mkdir()
    shutil.copy(get_testdata_file("rtdose.dcm", download=False), tmp_path / "in" / "dose.dcm")  # pydicom's own file
    with caplog.at_level("WARNING", logger="medtl.deploy.batch"):
        result = predict_batch(model_2d, tmp_path / "in", tmp_path / "out", write_sr=True, progress=False)
    (row,) = _rows(tmp_path / "out")
    assert row["status"] == "ok" and row["sr_path"] == "" and not (tmp_path / "out" / "sr").exists()
    assert row["error"].startswith("no SR: an RTDOSE series, not the CR/DX/DR/RG")
    assert result.unexpected_modalities == {"RTDOSE": 1} and "1 series are RTDOSE (1)" in caplog.text



def test_field_of_view_coverage_follows_the_axes_to_ras(data_root):
    """The extent of each voxel axis lands on the RAS axis it runs along (IXI volumes are stored PSR), and the
    coverage is the product over axes of min(1, extent / field)."""
    import numpy as np

    from medtl.data import io
    from medtl.deploy.inputs import field_of_view_coverage

    ixi = io.read(min((data_root / "mri3d_ixi").rglob("*.nii.gz")))
    assert field_of_view_coverage(ixi, (2.0, 2.0, 2.0), (80, 96, 80)) == 1.0  # 240 x 240 x 180 mm: all of it
    slab = io.Image(np.zeros((32, 200, 10)), np.diag([1.0, 1.0, 5.0, 1.0]))  # 32 x 200 x 50 mm, RAS
    assert field_of_view_coverage(slab, (2.0, 2.0, 2.0), (80, 96, 80)) == (32 / 160) * 1.0 * (50 / 160)
    permuted = io.Image(np.zeros((10, 32, 200)), np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [5.0, 0, 0, 0],
                                                            [0, 0, 0, 1]]))  # the same slab, stored S, R, A
    assert field_of_view_coverage(permuted, (2.0, 2.0, 2.0), (80, 96, 80)) == (32 / 160) * (50 / 160)


def test_a_series_error_names_no_file_whose_name_holds_the_patient(mprage_files, new_series, model_3d, tmp_path):
    """The data layer names a misplaced instance by its file name; exports name files after the patient."""
    files = new_series(mprage_files[:9], tmp_path / "in" / "mr", "gap")
    del files[4]
    (tmp_path / "in" / "mr" / "gap-004.dcm").unlink()  # one slice missing: the grid check names a neighbour
    for i, f in enumerate(files):
        f.rename(f.with_name(f"Smith_Alice_{i:05d}.dcm"))
    manifest = tmp_path / "labels.csv"  # a manifest row naming the series folder (how docs/own_data.md predicts DICOM)
    manifest.write_text("path,label,split\nmr,F,test\n")
    for include, redact, given in ((False, False, "in"), (False, True, "in"), (True, False, "in"),
                                   (False, False, "manifest")):
        out = tmp_path / f"out-{include}-{redact}-{given}"
        source = tmp_path / "in" if given == "in" else manifest
        predict_batch(model_3d, source, out, data_root=tmp_path / "in", include_identifiers=include,
                      redact_paths=redact, progress=False)
        (row,) = _rows(out)
        assert row["status"] == "error" and "mm" in row["error"], row["error"]
        written = " ".join(p.read_text() for p in out.iterdir() if p.is_file())
        assert ("Smith_Alice" in written) == include, written[:500]
    # files named by bare numbers identify no one: the message keeps them (and its numbers readable)
    for i, f in enumerate(sorted((tmp_path / "in" / "mr").iterdir())):
        f.rename(f.with_name(f"{i + 1}"))
    predict_batch(model_3d, tmp_path / "in", tmp_path / "numbers", progress=False)
    (row,) = _rows(tmp_path / "numbers")
    assert "[file]" not in row["error"] and re.search(r"2\.00 mm from \d+, the slice before", row["error"]), row["error"]


@pytest.mark.parametrize("redact_paths", [False, True])
def test_results_with_scrubbed_or_hashed_paths_still_join_their_labels_manifest(mprage_files, new_series, model_2d,
                                                                               tmp_path, redact_paths):
    """File names that hold the patient's name are scrubbed in case_id (or every path hashed, --redact-paths);
    evaluate --labels finds each row through the output folder's path salt, so no row is lost."""
    from medtl.evaluation.batch_results import read_batch_results

    root = tmp_path / "data"
    lines = ["path,label,patient_id,domain,split,modality"]
    for i, (name, label) in enumerate([("Smith^Alice", "pneumonia"), ("Brown^Paul", "no_finding"),
                                       ("Green^Olga", "pneumonia"), ("White^Sven", "no_finding")]):
        (f,) = new_series(mprage_files[i:i + 1], root / "export", f"join{i}", PatientName=name, PatientID=f"P{i}")
        named = f.with_name(name.replace("^", "_") + "_001.dcm")
        f.rename(named)
        lines.append(f"export/{named.name},{label},P{i},export,test,cxr")
    manifest = tmp_path / "labels.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    predict_batch(model_2d, manifest, out, data_root=root, redact_paths=redact_paths, progress=False)
    written = (out / "results.csv").read_text()
    assert "Smith" not in written and ("[redacted]" in written) != redact_paths
    res = read_batch_results(out / "results.csv", labels=manifest)
    assert len(res.table) == 4 and not [n for n in res.notes if "left out" in n], res.notes
    assert sorted(res.table["patient_id"]) == ["P0", "P1", "P2", "P3"]  # from the labels manifest: bootstrap units


def test_an_sr_that_could_not_be_written_is_written_by_the_next_run(mprage_files, new_series, model_mr2d, tmp_path):
    """A failed write (here: sr/ is a file; a full disk, a permission) is not the source's fault: the row is a
    retryable error, and the next run predicts the series again and writes its SR."""
    new_series(mprage_files[:2], tmp_path / "in" / "mr", "sr-retry")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sr").write_text("in the way")
    first = predict_batch(model_mr2d, tmp_path / "in", out, write_sr=True, progress=False)
    (row,) = _rows(out)
    assert row["status"] == "error" and row["retryable"] and row["error"].startswith("SR not written")
    assert first.errors == 1
    (out / "sr").unlink()
    again = predict_batch(model_mr2d, tmp_path / "in", out, write_sr=True, progress=False)
    assert again.ok == 1 and again.resumed == 0 and len(list(out.glob("sr/*/*.dcm"))) == 1
    assert _table(out / "results.csv")[0]["status"] == "ok"


@pytest.mark.real_data
def test_a_file_replaced_at_its_path_is_predicted_again(data_root, model_2d, tmp_path):
    """Another image saved under a predicted file's name kept the old row ('already done'): a one-file input's
    size and modification time are now in the ledger, and a change predicts it again (3D review)."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    a, b, c = sorted((data_root / "cxr_nih" / "images" / "pneumonia").glob("*.png"))[:3]
    shutil.copy(a, folder / "x.png")
    shutil.copy(b, folder / "y.png")
    predict_batch(model_2d, folder, out, progress=False)
    before = {r["source"]: r for r in _table(out / "results.csv")}
    assert "_file_stamp" not in before["x.png"]  # bookkeeping stays out of results.csv
    shutil.copy(c, folder / "x.png")  # another patient's image under the same name
    result = predict_batch(model_2d, folder, out, progress=False)
    after = {r["source"]: r for r in _table(out / "results.csv")}
    assert result.resumed == 1 and len(after) == 2 and len(_rows(out)) == 3  # x.png again: a new line replaces it
    fresh = predict_batch(model_2d, folder, tmp_path / "fresh", progress=False)
    assert fresh.ok == 2
    want = {r["source"]: r for r in _table(tmp_path / "fresh" / "results.csv")}["x.png"]
    assert after["x.png"]["prob_pneumonia"] == want["prob_pneumonia"] != before["x.png"]["prob_pneumonia"]
    assert after["y.png"] == before["y.png"]


def test_radiographs_given_to_a_3d_model_are_named_as_such(dicom_root, model_3d, tmp_path):
    """A chest CR series under a 3D brain model failed with 'series lacks ImageOrientationPatient/...: cannot
    order slices', which sent the reader looking for a broken header (notebook review)."""
    shutil.copytree(dicom_root / "cr_chest", tmp_path / "in" / "cr")
    predict_batch(model_3d, tmp_path / "in", tmp_path / "out", progress=False)
    rows = _rows(tmp_path / "out")
    assert rows and all(r["status"] == "error" for r in rows)
    assert all("projection radiograph(s), not the slices of a volume: read as a volume by a 3D model" in r["error"]
               for r in rows), [r["error"] for r in rows]
