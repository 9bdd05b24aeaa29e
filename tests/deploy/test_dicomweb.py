"""PACS round trip against a real Orthanc (DICOMweb plugin): QIDO-RS, WADO-RS, STOW-RS of the SRs."""

from __future__ import annotations

import json
import re
import socket

import numpy as np
import pydicom
import pytest

from medtl.deploy import SeriesRules, predict_batch, sr_summary
from medtl.deploy.dicomweb import DicomwebSource, public_url
from medtl.errors import MedtlError

pytestmark = pytest.mark.real_data


def _chest_sc(data_root):
    """A Secondary Capture DICOM written by the test from a real chest X-ray PNG."""
    import highdicom as hd
    from PIL import Image
    from pydicom.uid import generate_uid

    png = min((data_root / "cxr_nih" / "images" / "no_finding").glob("*.png"))
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint8)
    ds = hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation="MONOCHROME2", bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=generate_uid(entropy_srcs=["sc", "study"]),
        series_instance_uid=generate_uid(entropy_srcs=["sc", "series"]), series_number=1,
        sop_instance_uid=generate_uid(entropy_srcs=["sc", "sop"]), instance_number=1, manufacturer="medtl tests",
        patient_id="SC-1", patient_name="Chest^Png", patient_orientation=("L", "F"),
    )
    ds.BodyPartExamined, ds.SeriesDescription = "CHEST", "chest PA from PNG"
    return ds


@pytest.fixture(scope="module")
def pacs(orthanc, dicom_root, data_root):
    """Orthanc loaded with the real DICOM files and one DICOM written from a real PNG."""
    source = DicomwebSource(orthanc)
    files = sorted(p for p in dicom_root.rglob("*.dcm"))
    source.store([pydicom.dcmread(f) for f in files] + [_chest_sc(data_root)])
    return orthanc


def _image_series(source: DicomwebSource) -> list:
    return [s for s in source.list_series() if s.modality != "SR"]


def test_query_retrieve_predict_and_store_sr(pacs, model_2d, tmp_path, dciodvfy):
    source = DicomwebSource(pacs)
    listed = {s.modality + str(s.n_frames): s for s in _image_series(source)}
    assert sorted(listed) == ["CR2", "MR1", "MR32", "OT1"]  # QIDO counts instances (the 10-frame MR is one)
    assert listed["OT1"].body_part == "CHEST" and listed["OT1"].identifiers["PatientName"] == "Chest^Png"

    out = tmp_path / "out"
    # every series, named: a chest X-ray model writes SRs into MR studies only when told to (--modality)
    result = predict_batch(model_2d, pacs, out, write_sr=True, rules=SeriesRules(modalities=("CR", "MR", "OT")),
                           progress=False)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert result.errors == 0 and len(rows) == 4, [r["error"] for r in rows]
    assert all(r["status"] == "ok" and r["sr_stored"] is True for r in rows)
    assert {r["series_uid"]: r["n_instances"] for r in rows} == {s.series_uid: s.n_frames for s in listed.values()}
    assert "Chest" not in (out / "results.csv").read_text()

    # Each SR is in the PACS now, in its source's study; read it back over WADO-RS and check it.
    for row in rows:
        found = source.client.search_for_series(row["study_uid"], search_filters={"Modality": "SR"})
        srs = [pydicom.Dataset.from_json(f) for f in found]
        assert len(srs) == 1
        (instance,) = source.client.retrieve_series(row["study_uid"], str(srs[0].SeriesInstanceUID))
        back = sr_summary(instance)
        assert back["prediction"] == row["predicted_label"]
        assert back["probabilities"] == pytest.approx(row["probabilities"])
        assert back["observer"] == row["model_name"]
        referenced = {ref.ReferencedSOPInstanceUID for study in instance.CurrentRequestedProcedureEvidenceSequence
                      for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
        assert len(referenced) == row["n_instances"]
        path = tmp_path / f"{row['series_uid']}.dcm"
        pydicom.dcmwrite(path, instance, enforce_file_format=True)
        assert dciodvfy(path) == []

    # A second run elsewhere (one study, to keep it short): our SR is an output, not an input, and
    # storing the same result again keeps one copy.
    mprage = next(r for r in rows if r["n_instances"] == 32)
    again = predict_batch(model_2d, f"{pacs}?StudyInstanceUID={mprage['study_uid']}", tmp_path / "again",
                          write_sr=True, progress=False)
    assert again.ok == 1 and again.excluded == 1
    for row in rows:
        assert len(source.client.search_for_series(row["study_uid"], search_filters={"Modality": "SR"})) == 1
        assert len(source.client.search_for_instances(row["study_uid"], search_filters={"Modality": "SR"})) == 1


def test_url_filters_and_rules(pacs, model_3d, tmp_path):
    mprage = next(s for s in _image_series(DicomwebSource(pacs)) if s.n_frames == 32)
    url = f"{pacs}?StudyInstanceUID={mprage.study_uid}"
    result = predict_batch(model_3d, url, tmp_path / "out", rules=SeriesRules(modalities=("MR",), min_slices=16),
                           progress=False)
    rows = result.rows
    assert [(r["series_uid"], r["status"], r["n_images"]) for r in rows] == [(mprage.series_uid, "ok", 1)]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["input"] == public_url(pacs)  # no query kept


def test_a_filter_the_server_pages_badly_still_ends(pacs, model_2d, tmp_path):
    """Orthanc ignores ``offset`` with ``ModalitiesInStudy`` (the filter docs/batch.md shows) and answers the same
    page again: the search stops when a page brings nothing new, instead of asking forever. (In a child process
    with a time limit: the old search never returned.)"""
    import subprocess
    import sys

    url = f"{pacs}?ModalitiesInStudy=CR"
    code = ("import json, sys; from medtl.deploy.dicomweb import DicomwebSource; "
            "print(json.dumps([[s.study_uid, s.series_uid, s.modality] for s in DicomwebSource(sys.argv[1]).list_series()]))")
    done = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = json.loads(done.stdout)
    cr = [s for s in _image_series(DicomwebSource(pacs)) if s.modality == "CR"]
    assert cr and {study for study, _, _ in listed} == {s.study_uid for s in cr}  # the CR study, once
    assert len({series for _, series, _ in listed}) == len(listed)
    result = predict_batch(model_2d, url, tmp_path / "out", progress=False)
    assert result.ok == sum(m == "CR" for _, _, m in listed) and result.errors == 0


def test_a_filtered_search_past_one_page_loses_no_study(orthanc_server, mprage_files, new_series, tmp_path):
    """130 studies, more than one QIDO page (100): Orthanc pages ModalitiesInStudy searches wrongly (a first
    page, then nothing), so the answers are completed by one search without paging."""
    from medtl.deploy.dicomweb import QIDO_PAGE

    server = orthanc_server(tmp_path / "pacs")
    (tmp_path / "pacs").mkdir()
    server.start()
    try:
        files = [f for i in range(130) for f in new_series(mprage_files[:1], tmp_path / "s" / str(i), f"page-{i}")]
        source = DicomwebSource(server.url)
        for k in range(0, len(files), 26):
            source.store([pydicom.dcmread(f) for f in files[k:k + 26]])
        assert QIDO_PAGE < 130
        for url in (server.url, f"{server.url}?ModalitiesInStudy=MR"):
            listed = DicomwebSource(url).list_series()
            assert len(listed) == 130 and len({s.study_uid for s in listed}) == 130, url
    finally:
        server.stop()


def test_unreachable_pacs_is_a_clear_error(model_2d, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    with pytest.raises(MedtlError, match="DICOMweb connection check failed: cannot reach the PACS"):
        source = DicomwebSource(f"http://127.0.0.1:{port}/dicom-web", retries=1)  # no back-off in a test
        predict_batch(model_2d, source, tmp_path / "out", progress=False)


def test_a_mistyped_url_scheme_is_named_as_typed(model_2d, tmp_path):
    with pytest.raises(MedtlError, match="unknown URL scheme 'htp'") as err:
        predict_batch(model_2d, "htp://127.0.0.1:8042/dicom-web", tmp_path / "out", progress=False)
    assert err.value.where == "htp://127.0.0.1:8042/dicom-web"  # not folded into a path (htp:/127...)


def test_a_url_that_is_not_the_dicomweb_root_says_so(pacs, model_2d, tmp_path):
    wrong = pacs.replace("/dicom-web", "/dicomweb")  # the server answers, the path is not its DICOMweb root
    with pytest.raises(MedtlError, match=r"DICOMweb connection check failed: HTTP 404 Not Found \(the server "
                                         "answers, but .* is not its DICOMweb root") as err:
        predict_batch(model_2d, DicomwebSource(wrong, retries=1), tmp_path / "out", progress=False)
    assert "404 404" not in str(err.value)  # the status once
    # The server's root (no /dicom-web): Orthanc's own REST API refuses the search with 400. Same hint.
    root = pacs.removesuffix("/dicom-web")
    with pytest.raises(MedtlError, match=r"DICOMweb connection check failed: HTTP 400 Bad Request \(the server "
                                         r"answers, but refused a DICOMweb search: is .* its DICOMweb root\? "
                                         "Orthanc's is http://HOST:8042/dicom-web") as err:
        predict_batch(model_2d, DicomwebSource(root, retries=1), tmp_path / "out2", progress=False)
    assert "400 400" not in str(err.value) and "client certificate" not in str(err.value)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: any request there would fail to connect
    return f"http://127.0.0.1:{port}/dicom-web"


@pytest.mark.parametrize("query, meant", [("PatientId=MRN700001", "PatientID"),
                                          ("StudyInstanceUid=1.2.3", "StudyInstanceUID"),
                                          ("modalitiesinstudy=MR", "ModalitiesInStudy"),
                                          ("ModalitiesInStudy=MR&Limit=5", "limit")])
def test_a_mistyped_filter_is_refused_before_the_pacs_and_the_model(query, meant, tmp_path):
    """Orthanc ignores a key it does not know and lists every study: the key is refused, with the keyword
    meant, before any request (nothing listens on the port) and before the model loads (there is none)."""
    url = f"{_closed_port_url()}?{query}"
    refused = rf"unknown DICOMweb filter '\w+' in the URL; did you mean '{meant}'\?"
    with pytest.raises(MedtlError, match=refused) as err:
        predict_batch(tmp_path / "no-model.pt", url, tmp_path / "out", progress=False)
    assert "MRN700001" not in str(err.value) and "?" + query not in str(err.value)
    assert err.value.where == public_url(url) and not (tmp_path / "out").exists()


def test_the_cli_refuses_a_mistyped_filter_in_one_line(tmp_path):
    import subprocess
    import sys

    cli = "import sys; from medtl.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", cli, "predict", "--model", str(tmp_path / "no-model.pt"), "--input",
                          f"{_closed_port_url()}?PatientId=MRN700001", "--out", str(tmp_path / "out"),
                          "--no-progress"], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "unknown DICOMweb filter 'PatientId' in the URL; did you mean 'PatientID'?" in run.stderr
    assert "MRN700001" not in run.stderr + run.stdout and "Traceback" not in run.stderr


def test_filter_keys_values_and_qido_parameters():
    from medtl.deploy.dicomweb import check_filters, shown_filters

    ok = check_filters("PatientID=MRN1&00080061=CT%5CMR&ReferencedStudySequence.ReferencedSOPInstanceUID=1.2"
                       "&limit=5&offset=0&fuzzymatching=true&includefield=all&PatientName=Doe%5EJohn", "u")
    assert ok["00080061"] == "CT\\MR" and ok["PatientName"] == "Doe^John" and ok["limit"] == "5"
    assert shown_filters(ok) == ("PatientID=[value withheld]&00080061=CT\\MR&ReferencedStudySequence."
                                 "ReferencedSOPInstanceUID=[value withheld]&limit=5&offset=0&fuzzymatching=true"
                                 "&includefield=all&PatientName=[value withheld]")
    refused = {"MRN700001": "an item without '=' (not shown", "PatientID=": "'PatientID' has no value",
               "PatientID=1&PatientID=2": "'PatientID' is given twice", "limit=0": "'limit' must be a whole number",
               "offset=-1": "'offset' must be a whole number", "fuzzymatching=yes": "must be true or false",
               "0010002=X": "unknown DICOMweb filter '0010002'", "Patient%20ID=X": "did you mean 'PatientID'?",
               "ReferencedStudySequence.ReferencedSopInstanceUid=1": "unknown DICOMweb filter"}
    for query, reason in refused.items():
        with pytest.raises(MedtlError, match=re.escape(reason)) as err:
            check_filters(query, "u")
        assert "MRN700001" not in str(err.value), query
    assert check_filters("", "u") == {}


def test_limit_and_offset_bound_the_studies_listed(pacs):
    """The URL's limit is how many studies, not the size of each page: the old search paged by it and
    listed every study."""
    every = {s.study_uid for s in DicomwebSource(pacs).list_series()}
    assert len(every) >= 3
    two = {s.study_uid for s in DicomwebSource(f"{pacs}?limit=2").list_series()}
    rest = {s.study_uid for s in DicomwebSource(f"{pacs}?offset=2").list_series()}
    assert len(two) == 2 and len(rest) == len(every) - 2 and two | rest == every
    (one,) = {s.study_uid for s in DicomwebSource(f"{pacs}?offset=1&limit=1").list_series()}
    assert one in every


def test_a_query_that_matches_no_study_warns_without_identifiers(pacs, model_2d, tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    source = DicomwebSource(f"{pacs}?ModalitiesInStudy=CRX&PatientID=MRN700001")
    assert source.list_series() == []
    assert ("the query ModalitiesInStudy=CRX&PatientID=[value withheld] matched no study: nothing to predict"
            in caplog.text)
    assert "MRN700001" not in caplog.text
    caplog.clear()
    result = predict_batch(model_2d, f"{pacs}?Modality=MR", tmp_path / "out", progress=False)
    assert result.ok == result.errors == 0
    assert "the query Modality=MR matched no study" in caplog.text and "ModalitiesInStudy=..." in caplog.text
    caplog.clear()
    DicomwebSource(pacs).list_series()  # studies found: no warning
    assert "matched no study" not in caplog.text


def test_a_pacs_answer_over_the_limit_is_not_read(pacs, model_2d, tmp_path):
    from medtl.deploy.limits import Limits

    mprage = next(s for s in _image_series(DicomwebSource(pacs)) if s.n_frames == 32)  # 32 x 128 KiB
    url = f"{pacs}?StudyInstanceUID={mprage.study_uid}"
    # The answer fits its bound (the series limit + 16 MiB for the encoding); the fetched instances are
    # then checked like local files, and the series is over the limit: an error row, nothing decoded.
    result = predict_batch(model_2d, url, tmp_path / "out", progress=False, limits=Limits(series_bytes=1 << 20))
    assert result.errors == 1 and "over the limit of 1 MiB per series" in result.rows[0]["error"]
    # An answer over its bound is not read at all.
    source = DicomwebSource(pacs)
    source.bound_responses(1 << 20)
    with pytest.raises(MedtlError, match=r"the PACS answer (declares 4 MiB|is larger than the limit of 1 MiB)"):
        source.fetch(mprage, tmp_path / "fetched")
    assert not (tmp_path / "fetched").exists()


class _SilentServer:
    """A real TCP server that accepts every connection and reads the request, but never answers: a hung PACS;
    with ``start`` it sends that much of an answer (headers and two bytes of a body) first, then stalls, or with
    ``cut`` closes the connection (a PACS restarting mid-answer)."""

    def __init__(self, start: bytes = b"", cut: bool = False):
        import threading

        self.start, self.cut = start, cut
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/dicom-web"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)  # kept open, never answered (beyond its start)
            if self.start:
                conn.recv(65536)
                conn.sendall(self.start)
            if self.cut:
                conn.close()

    def close(self):
        for c in self.held:
            c.close()
        self.sock.close()


def test_a_pacs_that_hangs_is_one_timeout_and_exits_for_a_retry_later(model_2d, tmp_path, capsys):
    """A PACS that takes the request and sends nothing: one wait of --pacs-timeout, not three (each retry waited
    120 s again, and a stopped run waited on the read-ahead's request), and exit status 75 (retry later), not 2."""
    import time

    from medtl.cli import main
    from medtl.deploy.dicomweb import PacsUnreachable

    server = _SilentServer()
    try:
        start = time.monotonic()
        with pytest.raises(PacsUnreachable, match=r"the PACS sent no answer within 1 s \(--pacs-timeout\)"):
            predict_batch(model_2d, DicomwebSource(server.url, timeout=(2.0, 1.0), retries=3), tmp_path / "out",
                          progress=False)
        assert server.accepted == 1 and time.monotonic() - start < 10
        assert main(["predict", "--model", str(model_2d), "--input", server.url, "--out", str(tmp_path / "o2"),
                     "--pacs-timeout", "1", "--no-progress"]) == 75
        assert "sent no answer within 1 s" in capsys.readouterr().err
    finally:
        server.close()
    # headers and the start of a body, then nothing: requests says ConnectionError, and it was retried
    stalled = _SilentServer(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: 1000\r\n\r\n[{")
    try:
        with pytest.raises(PacsUnreachable, match="sent no answer within 1 s"):
            DicomwebSource(stalled.url, timeout=(2.0, 1.0), retries=3).check()
        assert stalled.accepted == 1
    finally:
        stalled.close()


def test_an_answer_cut_off_mid_body_is_an_outage_retried_not_a_bad_series(model_2d, tmp_path, capsys):
    """A PACS that closed the connection while its answer streamed (requests: ChunkedEncodingError, not a
    ConnectionError) was taken for a malformed answer: exit 2 at the connection check, and a series' download
    a permanent error row that a rerun never retried."""
    from medtl.cli import main
    from medtl.deploy.dicomweb import PacsUnreachable

    cut = _SilentServer(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nTransfer-Encoding: chunked\r\n"
                        b"\r\n200\r\n[{\"0020000D\":", cut=True)
    try:
        with pytest.raises(PacsUnreachable, match="cannot reach the PACS after 2 attempt.*closed mid-answer"):
            DicomwebSource(cut.url, timeout=(2.0, 2.0), retries=2, backoff=0.01).check()
        assert cut.accepted == 2  # retried
        assert main(["predict", "--model", str(model_2d), "--input", cut.url, "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 75
        assert "cannot reach the PACS" in capsys.readouterr().err
    finally:
        cut.close()
    # a chunk size that is not a number is a malformed answer, not an outage: retrying it would never end
    garbled = _SilentServer(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nTransfer-Encoding: chunked"
                            b"\r\n\r\nZZZZ\r\n[{}]\r\n0\r\n\r\n", cut=True)
    try:
        with pytest.raises(MedtlError, match="ChunkedEncodingError") as err:
            DicomwebSource(garbled.url, timeout=(2.0, 2.0), retries=2, backoff=0.01).check()
        assert not isinstance(err.value, PacsUnreachable) and garbled.accepted == 1
    finally:
        garbled.close()


def test_an_unknown_host_name_is_a_refused_command_not_an_outage():
    """A typo in the host name exited 75 (retry later) like an outage, so a scheduler retried it forever."""
    from medtl.deploy.dicomweb import PacsUnreachable

    host = "no-such-host.invalid"  # RFC 6761: never resolves
    try:
        socket.getaddrinfo(host, 8042)
        told = None
    except socket.gaierror as err:
        told = err.errno
    url = f"http://{host}:8042/dicom-web"
    if told == socket.EAI_NONAME:  # this resolver says the name does not exist: permanent
        with pytest.raises(MedtlError, match=r"the host name 'no-such-host.invalid' is not known \(DNS\)") as err:
            DicomwebSource(url, retries=2, backoff=0.01).check()
        assert not isinstance(err.value, PacsUnreachable)
    else:  # no answer from DNS (EAI_AGAIN, offline resolver): that may pass, so it stays an outage
        with pytest.raises(PacsUnreachable):
            DicomwebSource(url, retries=2, backoff=0.01).check()


def test_an_unknown_proxy_host_is_named_as_the_proxy(monkeypatch):
    """Behind a proxy whose name DNS does not know, the message named the PACS's host and said to check the URL."""
    host = "no-such-proxy.invalid"
    try:
        socket.getaddrinfo(host, 3128)
        told = None
    except socket.gaierror as err:
        told = err.errno
    monkeypatch.setenv("HTTP_PROXY", f"http://{host}:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    source = DicomwebSource("http://pacs.example.org:8042/dicom-web", retries=2, backoff=0.01)
    with pytest.raises(MedtlError) as err:
        source.check()
    if told == socket.EAI_NONAME:
        assert "the host name 'no-such-proxy.invalid' is not known (DNS): check the proxy setting" in str(err.value)
    else:
        assert "pacs.example.org' is not known" not in str(err.value)


def test_what_cannot_be_right_is_refused_before_the_model_and_the_output_folder(model_2d, tmp_path, capsys):
    from medtl.cli import main
    from medtl.deploy.model import load_model

    folder = tmp_path / "in"
    folder.mkdir()
    for bad in ("nan", "1.5", "-3", "30"):  # NaN: no probability reaches it, every case was called negative
        with pytest.raises(SystemExit) as stop:
            main(["predict", "--model", str(model_2d), "--input", str(folder), "--out", str(tmp_path / "o"),
                  "--threshold", bad])
        assert stop.value.code == 2
        assert f"--threshold: must be a probability in [0, 1], got {bad}" in capsys.readouterr().err
    with pytest.raises(MedtlError, match=r"decision threshold nan is not a probability in \[0, 1\]"):
        load_model(model_2d, threshold=float("nan"))
    assert main(["predict", "--model", str(model_2d), "--input", str(folder), "--out", str(tmp_path / "o"),
                 "--series-description", "("]) == 2
    assert "--series-description: not a regular expression: '('" in capsys.readouterr().err
    assert main(["predict", "--model", str(model_2d), "--input", str(folder), "--out", str(tmp_path / "o"),
                 "--device", "tpu"]) == 2
    assert "--device: unknown device 'tpu'" in capsys.readouterr().err  # was an "internal error" with a traceback
    assert not (tmp_path / "o").exists()


def test_a_series_the_pacs_lists_under_two_studies_is_one_error_row(orthanc_server, data_root, model_2d, tmp_path):
    """One SeriesInstanceUID in two studies (a broken PACS record): a folder gives one error row; the PACS path
    gave two rows with one key, each a bare 'HTTP 404', and counts that disagreed with results.csv."""
    import csv

    from pydicom.uid import generate_uid

    server = orthanc_server(tmp_path / "pacs")
    (tmp_path / "pacs").mkdir()
    server.start()
    try:
        first, second = _chest_sc(data_root), _chest_sc(data_root)
        second.StudyInstanceUID, second.SOPInstanceUID = generate_uid(), generate_uid()
        DicomwebSource(server.url).store([first, second])
        result = predict_batch(model_2d, server.url, tmp_path / "out", progress=False)
        assert (result.ok, result.errors) == (0, 1)
        with open(tmp_path / "out" / "results.csv", newline="") as f:
            (row,) = list(csv.DictReader(f))
        assert row["status"] == "error" and "the PACS lists this series under 2 studies" in row["error"]
        assert first.StudyInstanceUID in row["error"] and second.StudyInstanceUID in row["error"]
    finally:
        server.stop()
