"""DICOMweb as hospitals deploy it, against a real Orthanc with registered users behind nginx (TLS,
client certificates, a bearer token): credentials from the environment or files, checked once;
nothing secret written anywhere; outages retried, then stopped by the circuit breaker, then resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from medtl.deploy import predict_batch
from medtl.deploy.dicomweb import DicomwebSource, PacsAuth, PacsRefused, PacsUnreachable
from medtl.errors import MedtlError

pytestmark = pytest.mark.real_data

CR_PATIENT = "9RG1"  # PatientID of the real CR file stored in the PACS
CLI = "import sys; from medtl.cli import main; sys.exit(main(sys.argv[1:]))"


def _cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})})


def _everything_written(out: Path) -> str:
    """Every file under ``out`` but the SRs (DICOM for the patient's record: they carry the patient module)."""
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in out.rglob("*")
                     if p.is_file() and p.parent.parent.name != "sr")


def test_tls_basic_auth_round_trip_writes_no_secret(secure_pacs, model_2d, tmp_path, dciodvfy):
    pw_file = tmp_path / "pacs-password"
    pw_file.write_text(secure_pacs["password"] + "\n")
    pw_file.chmod(0o600)
    out = tmp_path / "out"
    # A planted PatientID in the query, debug logging on: neither may reach any output.
    url = f"{secure_pacs['https']}?PatientID={CR_PATIENT}"
    run = _cli("-v", "predict", "--model", str(model_2d), "--input", url, "--out", str(out), "--sr", "--no-progress",
               "--pacs-user", secure_pacs["user"], "--pacs-password-file", str(pw_file),
               "--ca-bundle", str(secure_pacs["ca"]))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["modality"], r["status"], r["sr_stored"]) for r in rows] == [("CR", "ok", True)], rows
    assert dciodvfy(out / rows[0]["sr_path"]) == []
    # The SR went back through TLS and the login: read it from Orthanc directly.
    direct = DicomwebSource(secure_pacs["http"], auth=PacsAuth(secure_pacs["user"], secure_pacs["password"]))
    assert direct.client.search_for_series(rows[0]["study_uid"], search_filters={"Modality": "SR"})
    seen = _everything_written(out) + run.stdout + run.stderr
    assert "DEBUG" in run.stderr  # the debug lines were there to leak, and did not
    for secret in (secure_pacs["password"], CR_PATIENT, "CompressedSamples"):
        assert secret not in seen, secret
    assert json.loads((out / "run.json").read_text())["input"] == secure_pacs["https"]
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.parent.parent.name != "sr"]
    print(f"\nSHOW tls+basic round trip: rows={[(r['modality'], r['status'], r['sr_stored']) for r in rows]}; "
          f"grep password/PatientID/name over {files} + stdout + stderr ({len(run.stderr.splitlines())} log lines, "
          f"{run.stderr.count('DEBUG')} debug): {[seen.count(x) for x in (secure_pacs['password'], CR_PATIENT)]} hits")


def test_bearer_token_over_mutual_tls(secure_pacs, model_2d, tmp_path):
    env = {"MEDTL_PACS_TOKEN": secure_pacs["token"]}
    args = ["predict", "--model", str(model_2d), "--input", secure_pacs["mtls"], "--no-progress",
            "--ca-bundle", str(secure_pacs["ca"])]
    # Without the client certificate the gateway refuses the TLS session: one clear error, no rows.
    started = time.monotonic()
    refused = _cli(*args, "--out", str(tmp_path / "nocert"), env=env)
    assert refused.returncode == 2 and "wants a client certificate: --client-cert" in refused.stderr
    assert time.monotonic() - started < 60 and not (tmp_path / "nocert" / "results.jsonl").exists()
    ok = _cli(*args, "--out", str(tmp_path / "out"), "--client-cert", str(secure_pacs["client"]),
              "--client-key", str(secure_pacs["client_key"]), env=env)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "2 ok, 0 error(s)" in ok.stdout
    print(f"\nSHOW mTLS+bearer without client cert: {refused.stderr.strip().splitlines()[-1][:200]}")
    print(f"SHOW mTLS+bearer with client cert: {ok.stdout.strip()}")
    seen = _everything_written(tmp_path / "out") + ok.stdout + ok.stderr
    assert secure_pacs["token"] not in seen
    # A wrong token: the gateway answers 401, reported once as refused credentials.
    bad = _cli(*args, "--out", str(tmp_path / "bad"), "--client-cert", str(secure_pacs["client"]),
               "--client-key", str(secure_pacs["client_key"]), env={"MEDTL_PACS_TOKEN": "tok-wrong"})
    assert bad.returncode == 2 and "refused the credentials (HTTP 401)" in bad.stderr


def test_wrong_password_is_one_error_before_the_batch(secure_pacs, model_2d, tmp_path):
    source = DicomwebSource(secure_pacs["http"], auth=PacsAuth(secure_pacs["user"], "not-the-password"))
    started = time.monotonic()
    with pytest.raises(PacsRefused, match=r"refused the credentials \(HTTP 401\)"):
        predict_batch(model_2d, source, tmp_path / "out", progress=False)
    assert time.monotonic() - started < 10  # not retried: a retried wrong password locks accounts
    print(f"\nSHOW wrong password: one error after {time.monotonic() - started:.1f} s")
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_untrusted_certificate_is_not_retried(secure_pacs, model_2d, tmp_path):
    started = time.monotonic()
    with pytest.raises(PacsRefused, match="TLS error.*--ca-bundle"):
        predict_batch(model_2d, secure_pacs["https"], tmp_path / "out", progress=False,
                      pacs_auth=PacsAuth(secure_pacs["user"], secure_pacs["password"]))
    assert time.monotonic() - started < 10


def test_password_in_the_url_is_used_and_never_written(secure_pacs, model_2d, tmp_path, capsys, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    user, password = secure_pacs["user"], secure_pacs["password"]
    url = secure_pacs["http"].replace("http://", f"http://{user}:{password}@") + f"?PatientID={CR_PATIENT}"
    out = tmp_path / "out"
    result = predict_batch(model_2d, url, out, progress=False)
    assert result.ok == 1
    seen = _everything_written(out) + caplog.text + "".join(capsys.readouterr())
    assert password not in seen and CR_PATIENT not in seen
    assert "credentials in the PACS URL are visible" in caplog.text


def test_credentials_come_from_environment_or_files_only(tmp_path):
    assert PacsAuth.from_environment(environ={}) is None
    auth = PacsAuth.from_environment(environ={"MEDTL_PACS_USER": "u", "MEDTL_PACS_PASSWORD": "secret-pw"})
    assert (auth.user, auth.password) == ("u", "secret-pw") and "secret-pw" not in repr(auth)
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    assert PacsAuth.from_environment(token_file=token, environ={}).token == "tok-123"
    with pytest.raises(MedtlError, match="no user"):
        PacsAuth.from_environment(environ={"MEDTL_PACS_PASSWORD": "x"})
    with pytest.raises(MedtlError, match="cannot read the password file"):
        PacsAuth.from_environment("u", password_file=tmp_path / "missing", environ={})
    # No command-line option takes a secret's value.
    from medtl.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["predict"].format_help()
    assert "--pacs-password " not in help_text and "--pacs-token " not in help_text
    assert "--pacs-password-file" in help_text and "--ca-bundle" in help_text


def test_outage_trips_the_breaker_and_a_rerun_resumes(orthanc_server, mprage_files, dicom_root, model_2d, tmp_path,
                                                      new_series):
    """Orthanc goes down in the middle of a run: retried with back-off, stopped after 2 series in a row,
    and the rerun (PACS back) does exactly the rest."""
    server = orthanc_server(tmp_path / "pacs")
    (tmp_path / "pacs").mkdir()
    server.start()
    try:
        files = []
        for i in range(5):  # five small series (two slices each) made from the real MPRAGE
            files += new_series(mprage_files[2 * i:2 * i + 2], tmp_path / "series", f"outage-{i}")
        DicomwebSource(server.url).store([pydicom.dcmread(f) for f in files])
        from medtl.deploy import load_model
        import dataclasses

        predictor = load_model(model_2d, device="cpu")
        calls = []

        def predict_then_pull_the_plug(batch):
            calls.append(batch.shape[0])
            if len(calls) == 1:
                server.stop()  # the PACS goes away after the first series
            return predictor.predict(batch)

        source = DicomwebSource(server.url, retries=2, backoff=0.1)
        out = tmp_path / "out"
        started = time.monotonic()
        with pytest.raises(PacsUnreachable, match="could not serve 2 series in a row.*rerun the same command"):
            predict_batch(dataclasses.replace(predictor, predict=predict_then_pull_the_plug), source, out,
                          batch_size=1, max_pacs_failures=2, progress=False)
        assert time.monotonic() - started < 60
        print(f"\nSHOW outage: breaker stopped the run after {time.monotonic() - started:.1f} s")
        first = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        # The series read ahead while the PACS was still up are results; then exactly two failures in a row.
        n_ok = len(first) - 2
        assert 1 <= n_ok <= 3 and [r["status"] for r in first] == ["ok"] * n_ok + ["error", "error"]
        assert all(r.get("retryable") for r in first[n_ok:]) and "cannot reach the PACS after 2" in first[n_ok]["error"]
        assert not list(out.glob(".tmp-*"))  # fetched DICOMs removed even though the run stopped

        server.start()  # same port, same storage: the PACS is back
        result = predict_batch(model_2d, DicomwebSource(server.url), out, progress=False)
        assert result.resumed == n_ok and result.ok == 5 - n_ok and result.errors == 0
        latest = {r["case_id"]: r for r in result.rows}
        assert len(latest) == 5 and all(r["status"] == "ok" for r in latest.values())
    finally:
        server.stop()


def test_srs_the_pacs_could_not_take_are_sent_by_the_rerun(orthanc_server, mprage_files, model_mr2d, tmp_path,
                                                           new_series):
    """The PACS goes down after every series was fetched, so no SR can be stored: the predictions stay ok rows
    (evaluate reads them) marked retryable; after two SRs in a row the run stops (the circuit breaker). The
    rerun, PACS back, sends the SR files without predicting those series again, and does the rest."""
    import dataclasses

    from medtl.deploy import load_model

    server = orthanc_server(tmp_path / "pacs")
    (tmp_path / "pacs").mkdir()
    server.start()
    try:
        files = []
        for i in range(4):
            files += new_series(mprage_files[2 * i:2 * i + 2], tmp_path / "series", f"sr-outage-{i}")
        DicomwebSource(server.url).store([pydicom.dcmread(f) for f in files])
        predictor = load_model(model_mr2d, device="cpu")

        def predict_then_pull_the_plug(batch):
            server.stop()  # one batch holds every series (batch_size 100): all were fetched before this
            return predictor.predict(batch)

        out = tmp_path / "out"
        with pytest.raises(PacsUnreachable, match="could not take 2 SRs in a row"):
            predict_batch(dataclasses.replace(predictor, predict=predict_then_pull_the_plug),
                          DicomwebSource(server.url, retries=2, backoff=0.1), out, write_sr=True, batch_size=100,
                          max_pacs_failures=2, progress=False)
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert len(rows) == 1  # the second failure stopped the run before its row
        assert rows[0]["status"] == "ok" and rows[0]["retryable"] and not rows[0]["sr_stored"]
        assert "SR not stored" in rows[0]["error"] and rows[0]["prob_pneumonia"] is not None
        assert (out / rows[0]["sr_path"]).is_file()

        server.start()
        predicted = []

        def counting(batch):
            predicted.append(batch.shape[0])
            return predictor.predict(batch)

        again = predict_batch(dataclasses.replace(predictor, predict=counting), DicomwebSource(server.url), out,
                              write_sr=True, batch_size=1, progress=False)
        assert again.resumed == 1 and again.ok == 3 and again.sr_pending == 0
        assert sum(predicted) == 3 * 2  # the three other series (two slices each); the first was not redone
        latest = {r["case_id"]: r for r in again.rows}
        assert len(latest) == 4 and all(r["status"] == "ok" and r["sr_stored"] and not r.get("retryable")
                                        for r in latest.values())
        stored = [s for s in DicomwebSource(server.url).list_series() if s.modality == "SR"]
        assert len(stored) == 4
    finally:
        server.stop()
