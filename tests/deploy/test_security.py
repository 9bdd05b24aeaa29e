"""Batch processing a security review would sign, on files of our own making around real images:
one writer per output folder, every input file a row, resource bounds before decoding, a folder walk
that never blocks or leaves the input, and nothing secret or identifying written anywhere."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pydicom
import pytest

from medtl.deploy import predict_batch
from medtl.deploy.discover import scan_folder
from medtl.deploy.limits import Limits
from medtl.lock import OutputLock
from medtl.deploy.redact import Redactor
from medtl.paths import salted_path
from medtl.errors import MedtlError

pytestmark = [pytest.mark.real_data, pytest.mark.filterwarnings("ignore:Invalid value for VR")]

SECRETS = ("secretname", "patientone", "19010203", "pid-777")
# Runs the CLI and reports the peak resident memory of that process.
# the child's own peak since it started (VmHWM): rusage's ru_maxrss also counts the size of the process that forked
# it, here pytest's, which grows with the session (a 2.5 GB parent made a 14 MB child report 2.5 GB)
CLI_RSS = ("import sys; from medtl.cli import main; rc = main(sys.argv[1:]); "
           "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')); "
           "print('PEAK_RSS_KB', hwm.split()[1], file=sys.stderr); sys.exit(rc)")


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _by_source(rows: list[dict]) -> dict[str, dict]:
    return {r["source"]: r for r in rows if r["source"]}


def _uid(tag: str) -> str:
    return pydicom.uid.generate_uid(entropy_srcs=[tag, "series"])


def test_every_hostile_file_gets_its_own_row(hostile, model_2d, tmp_path):
    root, expect = hostile
    out = tmp_path / "out"
    result = predict_batch(model_2d, root, out, progress=False)
    rows = _rows(out)
    by_source = _by_source(rows)
    by_series = {r["series_uid"]: r for r in rows}
    # Paths are kept, but the patient's name and birth date are scrubbed from the folder name.
    shown = Redactor(["Secretname^Patientone", "19010203"])
    for name, (status, reason) in expect.items():
        if name == "good":
            row = by_series[_uid("hostile-good")]
        elif name == "inject":
            row = by_series["1.2.3\\x0aERROR forged line"]  # the newline escaped, not written raw
        elif name.startswith("pix-"):
            row = by_series[_uid(name)]
        else:
            row = by_source.get(shown(name)) or by_series.get(_uid(Path(name).stem.rsplit("-", 1)[0]))
        assert row is not None, name
        assert row["status"] == status and reason in row["error"], (name, row["status"], row["error"])
    # Every file is in exactly one row: the good series holds 3 files, the rest one each.
    assert sum(r["n_instances"] for r in rows) == len(expect) - 1 + 3
    assert (result.ok, result.duplicates) == (2, 2) and result.errors == len(rows) - 4
    # A duplicate names the file that was used instead.
    dup = by_source["[redacted]_[redacted]/zcopy/dup.dcm"]["error"]
    assert "was already read from [redacted]_[redacted]/mr/hostile-good-000.dcm, which was used; this file was not" \
        in dup


def test_hostile_batch_cli_memory_and_no_leaks(hostile, model_2d, tmp_path):
    """The "show" run: the CLI with debug logging and --redact-paths over the hostile folder."""
    root, expect = hostile
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", CLI_RSS, "-v", "predict", "--model", str(model_2d), "--input",
                          str(root), "--out", str(out), "--no-progress", "--redact-paths"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    peak_kb = int(run.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    assert peak_kb < 2 * 1024 * 1024, peak_kb  # the documented bound: under 2 GB with the default limits
    rows = _rows(out)
    assert len(rows) == len(expect) - 1 + 1  # "good" and "inject" are series rows, pix-* too
    written = "\n".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    seen = (written + run.stdout + run.stderr).lower()
    for secret in SECRETS:
        assert secret not in seen, secret
    # No log line was forged by the header value holding a newline.
    assert not any(line.startswith("ERROR forged") for line in run.stderr.splitlines())
    # Paths are salted hashes, stable within this output folder: the same file hashes the same way.
    salt = bytes.fromhex((out / ".path-salt").read_text())
    assert (out / ".path-salt").stat().st_mode & 0o077 == 0
    sources = {r["source"] for r in rows}
    assert salted_path("bombs/156mpx.png", salt) in sources
    assert all(s == "" or s.startswith("h-") for s in sources)
    assert json.loads((out / "run.json").read_text())["input"].startswith("h-")
    import collections

    reasons = collections.Counter((r["status"], r["error"].split(" (")[0].split(":")[0][:60]) for r in rows)
    print(f"\nSHOW hostile batch: {len(expect) + 2} files, {len(rows)} rows, peak RSS {peak_kb / 1024:.0f} MB, "
          f"secrets found: {[seen.count(s) for s in SECRETS]}")
    for (status, reason), n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        print(f"SHOW   {n:3d} {status:9s} {reason}")


def test_limits_are_options(tmp_path, mprage_files, new_series, model_2d):
    new_series(mprage_files[:4], tmp_path / "in", "limits")  # 4 x 256 x 256 x 16 bit = 512 KiB decoded
    series = scan_folder(tmp_path / "in", limits=Limits(series_bytes=300_000))
    assert len(series) == 1 and "per series (--max-series-mb)" in series[0].error
    (volume,) = scan_folder(tmp_path / "in", limits=Limits(volume_bytes=300_000), volume=True)
    assert "per volume for a 3D model (--max-volume-mb)" in volume.error  # a 3D model holds the series whole
    (one,) = scan_folder(tmp_path / "in", limits=Limits())
    assert one.error is None and one.decoded_bytes == 4 * 256 * 256 * 2
    result = predict_batch(model_2d, tmp_path / "in", tmp_path / "out", limits=Limits(instance_bytes=100_000),
                           progress=False)
    assert result.errors == 4 and result.ok == 0  # each instance its own error row; the run went on


LOCK_HOLDER = """
import os, sys, time
from medtl.deploy import ledger, predict_batch

append = ledger.Ledger.append

def slow_append(self, row, sync=True):
    append(self, row, True)  # this one row durable now (the run itself syncs once per batch)
    print("ROW", flush=True)
    time.sleep(600)  # hold the output folder until killed

ledger.Ledger.append = slow_append
predict_batch(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=1, write_sr=True, progress=False)
"""


def test_one_writer_per_output_folder_and_stale_lock_takeover(hostile, model_2d, tmp_path, caplog):
    import logging

    root, _ = hostile
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(model_2d), str(root), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "ROW"  # it holds the lock and has written a row
        second = subprocess.run([sys.executable, "-c", "import sys; from medtl.cli import main; "
                                 "sys.exit(main(sys.argv[1:]))", "predict", "--model", str(model_2d), "--input",
                                 str(root), "--out", str(out), "--no-progress"],
                                capture_output=True, text=True, timeout=300, check=False)
        assert second.returncode == 75  # busy, not wrong: a scheduler retries later
        assert f"another medtl predict is writing to this output folder (PID {holder.pid} on" in second.stderr
        assert "started 20" in second.stderr
        print(f"\nSHOW second process: rc={second.returncode} {second.stderr.strip().splitlines()[-1]}")
        assert list(out.glob(".tmp-*"))  # the holder's private temporary folder
        assert oct(next(out.glob(".tmp-*")).stat().st_mode & 0o777) == "0o700"
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup at all: a stale lock and temporary folder stay
        holder.wait()
    assert json.loads((out / ".medtl.lock").read_text())["pid"] == holder.pid
    caplog.set_level(logging.INFO)
    result = predict_batch(model_2d, root, out, write_sr=True, progress=False)
    assert f"locked by PID {holder.pid}" in caplog.text and "taking the lock over" in caplog.text
    rows = _rows(out)
    assert len(rows) == len({r["case_id"] for r in rows}) and result.resumed == 1  # each series once
    assert not list(out.glob(".tmp-*")) and not list(out.rglob("*.tmp"))  # the crashed run's leftovers are gone
    assert (out / ".medtl.lock").read_text() == ""  # released cleanly
    print(f"SHOW after kill -9: {[m for m in caplog.messages if 'taking the lock over' in m][0]}; "
          f"{len(rows)} rows, each series once, resumed {result.resumed}")


def test_lock_in_process(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(MedtlError, match=f"PID {os.getpid()}"):
            OutputLock(tmp_path).acquire()
    with OutputLock(tmp_path) as again:  # released: free again, and not a stale takeover
        assert again.took_over is None


def test_an_output_folder_that_cannot_be_made_is_a_one_line_error(model_2d, tmp_path, capsys):
    """--out below a regular file: the CLI's one-line error naming the folder (exit 2), not an internal error."""
    from medtl.cli import main

    (tmp_path / "afile").write_text("x")
    image = tmp_path / "in"
    image.mkdir()
    assert main(["predict", "--model", str(model_2d), "--input", str(image), "--out", str(tmp_path / "afile" / "sub"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'afile' / 'sub'}: cannot write the output folder: Not a directory" in err
    assert "internal error" not in err and "Traceback" not in err


def test_excluded_csv_is_escaped_like_results(hostile, model_2d, tmp_path):
    root, _ = hostile
    out = tmp_path / "out"
    from medtl.deploy import SeriesRules

    predict_batch(model_2d, root, out, rules=SeriesRules(modalities=("CT",)), progress=False)
    with open(out / "excluded.csv", newline="") as f:
        excluded = list(csv.DictReader(f))
    inject = next(r for r in excluded if r["series_uid"].startswith("1.2.3"))
    assert inject["modality"] == "'=1+1"  # a formula is text
    assert inject["series_uid"] == "1.2.3\\x0aERROR forged line"
    assert "\n" not in (out / "excluded.csv").read_text().replace("\r\n", "").rstrip("\n").split("\n")[0]


def test_symlinks_inside_followed_outside_refused(tmp_path, mprage_files):
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    shutil.copy(mprage_files[0], root / "a" / "x.dcm")
    os.symlink(root / "a", root / "inside")  # a second way to the same files: duplicates, not two series
    os.symlink(mprage_files[1].parent, root / "outside")
    found = scan_folder(root)
    errors = {s.source: s.error for s in found if s.error}
    assert errors == {"outside": "symbolic link points outside the input folder: not followed"}
    assert sum(len(s.files) for s in found if not s.error) == 1  # a followed folder link is walked once


def test_a_fifo_never_blocks(tmp_path, model_2d):
    (tmp_path / "in").mkdir()
    os.mkfifo(tmp_path / "in" / "x.dcm")
    started = time.monotonic()
    result = predict_batch(model_2d, tmp_path / "in", tmp_path / "out", progress=False)
    assert time.monotonic() - started < 60 and result.errors == 1
    assert "not a regular file" in _rows(tmp_path / "out")[0]["error"]
    with pytest.raises(MedtlError, match="not a regular file or folder"):
        predict_batch(model_2d, tmp_path / "in" / "x.dcm", tmp_path / "out2", progress=False)
    # A file swapped for a FIFO after the walk: the reader opens without blocking and refuses it.
    from medtl.deploy.discover import regular_file
    from medtl.deploy.inputs import SeriesLoader

    with pytest.raises(MedtlError, match="not a regular file"):
        with regular_file(tmp_path / "in" / "x.dcm"):
            pass
    from medtl.deploy.discover import Series

    with pytest.raises(MedtlError, match="not a regular file"):
        SeriesLoader("cxr", {"image_size": 32})(Series("k", [tmp_path / "in" / "x.dcm"]))


UNREADABLE = """
import json, sys
from medtl.deploy.discover import scan_folder
print(json.dumps(sorted((s.source, s.error) for s in scan_folder(sys.argv[1]) if s.error)))
"""


def test_unreadable_folders_and_files_are_error_rows(tmp_path, mprage_files):
    """Run as an unprivileged user (root reads everything): the walk must report what it cannot read."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="medtl-unreadable-"))
    try:
        root.chmod(0o755)
        (root / "locked").mkdir()
        shutil.copy(mprage_files[0], root / "locked" / "x.dcm")
        shutil.copy(mprage_files[1], root / "secret.dcm")
        shutil.copy(mprage_files[2], root / "fine.dcm")
        for p in (root / "fine.dcm",):
            p.chmod(0o644)
        (root / "secret.dcm").chmod(0o000)
        (root / "locked").chmod(0o000)
        command = [sys.executable, "-c", UNREADABLE, str(root)]
        if os.geteuid() == 0:  # root without its power to ignore file permissions (util-linux setpriv)
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without setpriv (util-linux): cannot make a file unreadable")
            drop = "-dac_override,-dac_read_search"
            command = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}", *command]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 0, run.stderr[-2000:]
        assert json.loads(run.stdout) == [["locked", "folder cannot be read: Permission denied"],
                                          ["secret.dcm", "file cannot be read: permission denied"]]
    finally:
        (root / "locked").chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


def test_redactor():
    r = Redactor(["Doe^John"])
    r.add_secret("hunter2-pw")
    text = ("GET https://alice:hunter2-pw@pacs:8042/dicom-web/studies?PatientID=X1&x=2 for DOE, john\n"
            "INFO forged; token hunter2-pw")
    clean = r(text)
    assert "hunter2" not in clean and "alice" not in clean and "X1" not in clean and "\n" not in clean
    assert "https://pacs:8042/dicom-web/studies?[query]" in clean and "\\x0aINFO forged" in clean
    assert clean.count("[redacted]") == 3
    assert r("is it? yes") == "is it? yes"  # a question mark in prose is not a query string
    # identifiers by tag: an accession number whole (its words are ordinary words that messages use), an ID
    # also by its HL7 components and values, a name also word by word
    from medtl.deploy.redact import add_identifiers

    add_identifiers(r, [("AccessionNumber", "exam Number"), ("PatientID", "12345678^^^HOSP"),
                        ("OtherPatientIDs", "11112222\\33334444"), ("PatientName", "Roe^Richard Q")])
    assert r("The Number of bytes; exam Number 7") == "The Number of bytes; [redacted] 7"
    assert r("exports/12345678/IM1 and 33334444, Richard") == "exports/[redacted]/IM1 and [redacted], [redacted]"
    assert r.value({"a": ["x\ty"]}) == {"a": ["x\\x09y"]}


def test_scrubbed_case_ids_still_resume_and_uids_stay_whole(tmp_path, mprage_files, new_series, model_2d):
    """A manifest path holding the patient's name is written scrubbed, and a rerun still finds it done;
    a PatientID that equals a UID component does not cut the UID."""
    data = tmp_path / "data"
    (f,) = new_series(mprage_files[5:6], data / "Secretname^Patientone_19010203", "scrub-resume",
                      PatientName="Secretname^Patientone", PatientBirthDate="19010203", PatientID="123",
                      SeriesInstanceUID="1.2.123.4")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{f.relative_to(data).as_posix()},x\n")
    out = tmp_path / "out"
    first = predict_batch(model_2d, manifest, out, data_root=data, progress=False)
    (row,) = first.rows
    assert re.fullmatch(r"\[redacted\]_\[redacted\]/scrub-resume-000\.dcm#[0-9a-f]{8}", row["case_id"])
    assert row["series_uid"] == "1.2.123.4"
    again = predict_batch(model_2d, manifest, out, data_root=data, progress=False)
    assert again.resumed == 1 and again.ok + again.errors == 0 and len(_rows(out)) == 1


def test_a_folder_written_before_case_ids_carried_their_hash_still_resumes(tmp_path, mprage_files, new_series,
                                                                            model_2d):
    data = tmp_path / "data"
    (f,) = new_series(mprage_files[7:8], data / "Oldname^Patient", "old-resume", PatientName="Oldname^Patient")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{f.relative_to(data).as_posix()},x\n")
    out = tmp_path / "out"
    predict_batch(model_2d, manifest, out, data_root=data, progress=False)
    ledger = out / "results.jsonl"
    (row,) = _rows(out)
    old_id = row["case_id"].rpartition("#")[0]  # as the row was written before the hash was added
    ledger.write_text(json.dumps({**row, "case_id": old_id}) + "\n")
    again = predict_batch(model_2d, manifest, out, data_root=data, progress=False)
    assert again.resumed == 1 and again.ok == 0 and [r["case_id"] for r in _rows(out)] == [old_id]


def test_only_a_salted_hash_suffix_is_taken_off_when_an_old_folder_resumes():
    """'scans/knee#2' is a path of its own, not 'scans/knee' with a hash: it must not take that case's id."""
    from medtl.deploy.batch import _adopt_unsalted_ids
    from medtl.deploy.discover import Series

    plain, hashed = Series("scans/knee#2", case_id="scans/knee#2"), Series("Doe/a", case_id="[redacted]/a#0badc0de")
    _adopt_unsalted_ids([plain, hashed], {"scans/knee": {}, "[redacted]/a": {}})
    assert plain.case_id == "scans/knee#2" and hashed.case_id == "[redacted]/a"


def test_an_identifier_at_the_cut_of_a_long_error_text_is_still_scrubbed(tmp_path, model_2d):
    """The row writer redacts an error text, then cuts it to ERROR_CHARS: cut first, a PatientID straddling
    the cut would lose its tail and escape the redactor."""
    from medtl.deploy.batch import ERROR_CHARS, BatchResult, _RowWriter
    from medtl.deploy.discover import Series
    from medtl.deploy.ledger import Ledger
    from medtl.deploy.model import load_model
    from medtl.deploy.redact import Redactor, add_identifiers

    redactor = Redactor()
    add_identifiers(redactor, [("PatientID", "98765432")])
    ledger = Ledger(tmp_path)
    ledger.start({"model_digest": "d", "model_name": "m", "model_version": "1"})
    writer = _RowWriter(load_model(model_2d, device="cpu"), ledger, tmp_path, None, False, False,
                        BatchResult(tmp_path), redactor)
    text = "x " * ((ERROR_CHARS - 5) // 2) + "98765432 and more"  # the ID straddles character ERROR_CHARS
    writer.write(Series("k", case_id="k", status="error"), {"files": [], "error": text}, None)
    ledger.close()
    (row,) = _rows(tmp_path)
    assert "9876" not in row["error"] and len(row["error"]) == ERROR_CHARS


def test_two_patients_folders_that_scrub_alike_stay_two_cases_and_resume(tmp_path, mprage_files, new_series, model_2d):
    """Smith_Jane/study1 and Brown_Paul/study1 both scrub to [redacted]_[redacted]/study1: each case id
    carries a salted hash of its path, so both are results, and a killed run resumes the missing one."""
    data = tmp_path / "data"
    for i, name in enumerate(("Smith^Jane", "Brown^Paul")):
        new_series(mprage_files[i:i + 1], data / name.replace("^", "_") / "study1", f"two-{i}", PatientName=name)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nSmith_Jane/study1,x\nBrown_Paul/study1,y\n")
    out = tmp_path / "out"
    first = predict_batch(model_2d, manifest, out, data_root=data, progress=False)
    ids = [r["case_id"] for r in first.rows]
    assert len(set(ids)) == 2 and all(i.startswith("[redacted]_[redacted]/study1#") for i in ids)
    assert "smith" not in " ".join(ids).lower() and len(_rows(out)) == 2
    ledger = out / "results.jsonl"
    ledger.write_text(ledger.read_text().splitlines(keepends=True)[0])  # killed after the first row
    again = predict_batch(model_2d, manifest, out, data_root=data, progress=False)
    assert again.resumed == 1 and again.ok == 1 and sorted(r["case_id"] for r in _rows(out)) == sorted(ids)


def test_a_multi_valued_identifier_is_text_the_scrubber_can_cut():
    from pydicom import Dataset

    from medtl.deploy.discover import header_text

    ds = Dataset()
    ds.OtherPatientIDs = ["11112222", "33334444"]
    ds.PatientID = "12345678"
    assert header_text(ds, "OtherPatientIDs") == "11112222\\33334444" and header_text(ds, "PatientID") == "12345678"


def _scrub(text: str, identifiers: dict[str, str]) -> str:
    """``text`` through a run's redactor that has seen these header identifiers."""
    from medtl.deploy.redact import Redactor, add_identifiers

    redactor = Redactor()
    add_identifiers(redactor, identifiers.items())
    return redactor(text)


def test_scrub_removes_names_and_their_parts():
    ids = {"PatientName": "Doe^John", "PatientBirthDate": "19010203", "PatientID": "X1"}
    text = _scrub("failed for DOE^JOHN born 19010203 (john doe); id X1 kept (too short)", ids)
    assert "doe" not in text.lower() and "john" not in text.lower() and "19010203" not in text
    assert text.count("[redacted]") == 4


def test_scrub_leaves_uids_whole():
    ids = {"PatientBirthDate": "20040826", "StudyDate": "20040826"}
    assert _scrub("series 1.3.6.1.4.1.5962.1.3.9.1.20040826185059.5457", ids).endswith("20040826185059.5457")
    assert _scrub("born 20040826.", ids) == "born [redacted]."
    assert _scrub("Müller^Anna", {"PatientName": "müller^anna"}) == "[redacted]"


def test_cjk_and_short_non_ascii_name_parts_are_scrubbed():
    """A name part of one or two characters was never scrubbed: CJK and Hangul names are made of them."""
    ids = {"PatientName": "Yamada^Tarou=山田^太郎", "PatientBirthDate": "19010203"}
    for text in ("山田 太郎", "/exports/山田太郎/IM1", "山田_太郎_19010203", "太郎山田", "YamadaTarou", "Tarou_Yamada",
                 "山田^太郎", "Yamada^Tarou=山田^太郎"):
        scrubbed = _scrub(text, ids)
        assert not re.search("[山田太郎]|yamada|tarou|1901", scrubbed, re.IGNORECASE), (text, scrubbed)
    assert _scrub("/exports/山田太郎/IM1", ids) == "/exports/[redacted]/IM1"
    korean = {"PatientName": "Kim^Min=김^민준"}
    assert _scrub("김 민준; 김민준; 민준 김", korean) == "[redacted] [redacted]; [redacted]; [redacted] [redacted]"
    # Ordinary messages keep their words; Korean or Japanese words other than the name stay too.
    assert _scrub("series 1.2.3: 2 mins, 김치 and 山本 kept", korean | ids) == \
        "series 1.2.3: 2 mins, 김치 and 山本 kept"


def test_a_name_joined_to_an_honorific_is_scrubbed():
    """Japanese, Chinese and Korean write honorifics and particles onto the name (山田さん, 王伟先生, 민준님):
    two or more characters of such a script are found inside the words around them; one character
    (김) stays a whole token, so 김치 is kept."""
    cases = [({"PatientName": "Yamada^Tarou=山田^太郎"}, "/exports/山田さん/太郎様_scan", "/exports/[redacted]さん/[redacted]様_scan"),
             ({"PatientName": "Wang^Wei=王^伟"}, "王伟先生 CT", "[redacted]先生 CT"),
             ({"PatientName": "Kim^Minjun=김^민준"}, "김민준님 폴더, 민준씨, 김치", "[redacted]님 폴더, [redacted]씨, 김치")]
    for ids, text, expected in cases:
        assert _scrub(text, ids) == expected


def test_a_short_ascii_name_part_is_scrubbed_with_its_name_only():
    """'Li' alone is an ordinary word too often ('li', 'do', 'an' in messages): it is scrubbed where the
    name is written whole or joined, not wherever the two letters stand alone."""
    ids = {"PatientName": "Li^Wei"}
    assert _scrub("Li Wei, Li_Wei, LiWei, WeiLi, Wei Li: li is kept, do not, an error", ids) == \
        "[redacted], [redacted], [redacted], [redacted], [redacted]: li is kept, do not, an error"
    ids = {"PatientName": "Do^An"}
    assert _scrub("do not redact an error; Do An and DoAn are the patient", ids) == \
        "do not redact an error; [redacted] and [redacted] are the patient"
    # A name whose parts are scrubbed one by one keeps its old scrubbed form (a rerun finds its case ids).
    assert _scrub("Smith_Jane/study1, SmithJane", {"PatientName": "Smith^Jane"}) == \
        "[redacted]_[redacted]/study1, [redacted]"


def test_a_birth_date_is_scrubbed_as_people_write_it():
    ids = {"PatientBirthDate": "19010203"}
    assert _scrub("born 19010203, 1901-02-03, 03.02.1901, 03/02/1901 or 02/03/1901", ids) == \
        "born [redacted], [redacted], [redacted], [redacted] or [redacted]"
    assert _scrub("1901-02-04 and 2001-02-03 and uid 1.2.1901.2.3 stay", ids) == \
        "1901-02-04 and 2001-02-03 and uid 1.2.1901.2.3 stay"
    assert _scrub("19010203-19011231", {"PatientBirthDate": "19010203-19011231"}) == "[redacted]"  # a range: whole


def test_a_cjk_patients_name_reaches_no_output(tmp_path, mprage_files, new_series, model_2d, caplog):
    """End to end: a folder named after the patient in kanji, the name in the header's ideographic group."""
    data = tmp_path / "data"
    name = "Yamada^Tarou=山田^太郎"
    new_series(mprage_files[3:4], data / "山田太郎" / "山田 太郎_19010203", "cjk", PatientName=name,
               SpecificCharacterSet="ISO_IR 192", PatientBirthDate="19010203", PatientID="MRN700001")
    (data / "山田太郎" / "notes_山田.png").write_bytes(b"not a png")  # an error row: its path is written
    out = tmp_path / "out"
    result = predict_batch(model_2d, data, out, progress=False)
    assert result.ok == 1 and result.errors == 1
    written = "\n".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()) + caplog.text
    assert "notes_[redacted].png" in caplog.text  # the error row's warning: logged, scrubbed
    for part in ("山田", "太郎", "Yamada", "Tarou", "19010203", "MRN700001"):
        assert part not in written, part
    (error,) = [r for r in _rows(out) if r["status"] == "error"]
    assert error["source"] == "[redacted]/notes_[redacted].png"


def test_a_name_is_scrubbed_however_the_file_system_or_a_person_spelled_its_accents():
    """Folder names copied through macOS or SMB are decomposed (u + combining diaeresis); people write
    Müller as Mueller or Muller and Åström as Astrom."""
    ids = {"PatientName": "Müller^Jürgen", "PatientID": "P1"}
    for text in ("Mu\u0308ller_Ju\u0308rgen", "Müller_Jürgen", "Mueller_Juergen", "Muller Jurgen", "MÜLLER^JÜRGEN"):
        scrubbed = unicodedata.normalize("NFC", _scrub(f"/exports/{text}/IM1", ids))
        assert scrubbed.startswith("/exports/[redacted]") and not re.search("m(u|ü|ue)ll|j(u|ü|ue)rg", scrubbed, re.I), \
            (text, scrubbed)
    assert _scrub("Astrom_Marta_2019", {"PatientName": "Åström^Marta"}) == "[redacted]_[redacted]_2019"
    # Only Latin accents are dropped: a kana's voicing mark makes another name (ごとう is not ことう)
    assert _scrub("ごとう and ことう", {"PatientName": "Gotou^Taro=ごとう^たろう"}) == "[redacted] and ことう"
    # A name of carets only (empty components) scrubs nothing: traceback markers (^^^) stay.
    assert _scrub("    ^^^^^^ here", {"PatientName": "^^^"}) == "    ^^^^^^ here"


def test_limits_count_the_bytes_a_picture_or_volume_decodes_to(tmp_path):
    """A security review: a 7000 x 7000 RGBA PNG (49 Mpx, under the 50 Mpx limit) peaked at 2.38 GB, and a complex128
    NIfTI under the voxel limit came back as an 'ok' prediction (numpy dropped the imaginary part)."""
    import nibabel as nib
    import numpy as np
    from PIL import Image

    from medtl.data import io
    from medtl.deploy.limits import Limits, check_nifti, check_picture
    from medtl.errors import MedtlError

    grey, rgba = tmp_path / "grey.png", tmp_path / "rgba.png"
    Image.new("L", (100, 100)).save(grey)
    Image.new("RGBA", (100, 100)).save(rgba)
    limits = Limits(picture_pixels=20_000)  # 10,000 grey pixels fit; as RGBA they decode to 40,000 bytes
    check_picture(grey, limits)
    with pytest.raises(MedtlError, match=r"4 bytes a pixel in mode RGBA: 0 Mpx of 8-bit grey\), over the limit"):
        check_picture(rgba, limits)
    for dtype, expect in ((np.float32, None), (np.float64, "of float64 .each counts 2x."), (np.complex64, "complex")):
        path = tmp_path / f"v_{np.dtype(dtype).name}.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((20, 20, 20), dtype), np.eye(4)), path)
        if expect is None:
            check_nifti(path, Limits(volume_voxels=10_000))
            continue
        with pytest.raises(MedtlError, match=expect):
            check_nifti(path, Limits(volume_voxels=10_000))
    with pytest.raises(MedtlError, match="complex-valued volume"):
        io.read(tmp_path / "v_complex64.nii.gz")


def test_a_warning_while_the_headers_are_read_is_shown_after_their_identifiers_are_known(tmp_path, mprage_files,
                                                                                       new_series, model_2d, caplog):
    """A security review: a SeriesInstanceUID holding the PatientID ('1.2.3.PIDX84721.9', not a valid UID) made
    pydicom warn while the folder was scanned, before the redactor had learned the ID: the warning showed it."""
    import logging
    import warnings

    import pydicom

    data = tmp_path / "data"
    before = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE  # write the invalid UID as given
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new_series(mprage_files[:1], data / "study", "pid", PatientID="PIDX84721",
                       SeriesInstanceUID="1.2.3.PIDX84721.9")
    finally:
        pydicom.config.settings.writing_validation_mode = before
    caplog.clear()  # writing the test's file logged the UID too
    with caplog.at_level(logging.WARNING):
        predict_batch(model_2d, data, tmp_path / "out", progress=False)
    shown = caplog.text
    assert "Invalid value for VR UI" in shown and "[redacted]" in shown  # the warning is shown, scrubbed
    assert "PIDX84721" not in shown
    # and a "UID" that is not one (digits and dots) is text: redacted in the table too, where UIDs are kept whole
    results = (tmp_path / "out" / "results.csv").read_text()
    assert "PIDX84721" not in results and "1.2.3.[redacted].9" in results


def _text_uid_series(new_series, mprage_files, data, pids):
    """One-instance series whose "SeriesInstanceUID" is text holding the PatientID (not a valid UID)."""
    import warnings

    import pydicom

    before = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE  # write the invalid UID as given
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for pid in pids:
                new_series(mprage_files[:1], data / pid, pid, PatientID=pid, SeriesInstanceUID=f"1.2.3.{pid}.1")
    finally:
        pydicom.config.settings.writing_validation_mode = before


def test_two_patients_text_uids_that_redact_alike_stay_two_cases(tmp_path, mprage_files, new_series, model_2d):
    """The diff review: '1.2.3.SMITHJ01.1' and '1.2.3.BROWNP02.1' both redacted to '1.2.3.[redacted].1', one case
    id for two patients, so one prediction was dropped (and a rerun 'resumed' both from one row)."""
    data = tmp_path / "data"
    _text_uid_series(new_series, mprage_files, data, ("SMITHJ01", "BROWNP02"))
    out = tmp_path / "out"
    first = predict_batch(model_2d, data, out, progress=False)
    ids = sorted(r["case_id"] for r in _rows(out))
    assert first.ok == 2 and len(ids) == 2 and len(set(ids)) == 2
    assert all(i.startswith("1.2.3.[redacted].1#") for i in ids) and "SMITH" not in "".join(ids)
    again = predict_batch(model_2d, data, out, progress=False)
    assert again.resumed == 2 and sorted(r["case_id"] for r in _rows(out)) == ids


def test_log_records_wait_for_the_identifiers_without_any_logging_configured(tmp_path, mprage_files, new_series,
                                                                            model_2d, capsys, monkeypatch):
    """The diff review: called from Python with no logging set up, pydicom's warning went to logging's last
    resort at once, before the identifiers were known, and printed the PatientID."""
    import logging
    import warnings

    data = tmp_path / "data"
    _text_uid_series(new_series, mprage_files, data, ("PIDX84721",))
    capsys.readouterr()
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a script that configured no logging
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # pydicom warns and logs; its logger has a NullHandler, so logging shows
        predict_batch(model_2d, data, tmp_path / "out", progress=False)  # only the warning, by its last resort
    shown = capsys.readouterr().err
    assert "Invalid value for VR UI" in shown and "PIDX84721" not in shown


def test_log_records_wait_for_the_identifiers_on_an_apps_own_logger_handlers(tmp_path, mprage_files, new_series,
                                                                           model_2d):
    """A hospital's batch system that logs pydicom to its own file (a handler on the "pydicom" logger, not the
    root's) got the warning at once, before the identifiers were known: it held the PatientID. It is held too, and
    reaches that handler redacted."""
    import io as _io
    import logging

    data = tmp_path / "data"
    _text_uid_series(new_series, mprage_files, data, ("PIDX84721",))
    buffer = _io.StringIO()
    handler = logging.StreamHandler(buffer)
    own = logging.getLogger("pydicom")
    own.addHandler(handler)
    try:
        predict_batch(model_2d, data, tmp_path / "out", progress=False)
    finally:
        own.removeHandler(handler)
    shown = buffer.getvalue()
    assert "Invalid value for VR UI" in shown and "[redacted]" in shown and "PIDX84721" not in shown


def test_held_records_reach_the_handlers_logging_would_have_used(capsys):
    """Held records go where logging sends them: a record below a handler's level nowhere (not to the last
    resort, since a handler was found on its way up), a record of a logger with no handler on its way to the
    last resort, a record with handlers on two loggers to both, once each."""
    import io as _io
    import logging

    from medtl.deploy.redact import Redactor, held_until_learned

    root, own = logging.getLogger(), logging.getLogger("medtl-test-held")
    strict, mine = logging.StreamHandler(_io.StringIO()), logging.StreamHandler(_io.StringIO())
    strict.setLevel(logging.ERROR)
    saved = list(root.handlers)
    root.handlers = [strict]
    own.addHandler(mine)
    capsys.readouterr()
    try:
        with held_until_learned(Redactor()):
            logging.getLogger("elsewhere").warning("below the root handler's level")
            own.error("to both")
            assert strict.stream.getvalue() == mine.stream.getvalue() == ""  # held while the block runs
        assert strict.stream.getvalue() == "to both\n" and mine.stream.getvalue() == "to both\n"
        assert "below the root" not in capsys.readouterr().err
        root.handlers = []
        with held_until_learned(Redactor()):
            logging.getLogger("elsewhere").warning("no handler anywhere")
        assert "no handler anywhere" in capsys.readouterr().err  # logging's last resort, as without the hold
    finally:
        root.handlers = saved
        own.removeHandler(mine)


def test_a_malformed_log_call_while_records_are_held_is_reported_as_logging_does_not_raised(capsys, monkeypatch):
    """The diff review: a library's malformed log call ('%s and %s' with one argument) made inside the block raised
    TypeError out of its end, lost the records after it and replaced the block's own exception; logging itself
    reports such a record ("--- Logging error ---") and goes on."""
    import io as _io
    import logging

    from medtl.deploy.redact import Redactor, held_until_learned, redacting

    lib, buffer = logging.getLogger("medtl-test-malformed"), _io.StringIO()
    handler = logging.StreamHandler(buffer)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # pytest's own capture handler re-raises such errors
    lib.addHandler(handler)
    try:
        with redacting(Redactor()) as redactor, held_until_learned(redactor):
            lib.warning("first")
            lib.warning("value %s and %s", "x")
            lib.warning("third")
    finally:
        lib.removeHandler(handler)
    assert buffer.getvalue() == "first\nthird\n"
    assert "Logging error" in capsys.readouterr().err
