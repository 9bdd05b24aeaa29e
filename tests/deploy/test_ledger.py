"""The append-only results ledger."""

import csv
import json

import pytest

from medtl.deploy.ledger import Ledger
from medtl.errors import MedtlError

RUN = {"model_name": "m", "model_version": "1", "model_digest": "abc"}


def test_rows_survive_and_a_torn_line_is_cut(tmp_path):
    ledger = Ledger(tmp_path)
    assert ledger.start(RUN) == {}
    ledger.append({"case_id": "a", "status": "ok"})
    ledger.append({"case_id": "b", "status": "error"})
    ledger.close()
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"case_id": "c", "sta')  # a run killed while writing
    again = Ledger(tmp_path)
    assert sorted(again.start(RUN)) == ["a", "b"]
    again.append({"case_id": "c", "status": "ok"})
    again.close()
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["case_id"] for line in lines] == ["a", "b", "c"]


def test_an_output_folder_belongs_to_one_model(tmp_path):
    Ledger(tmp_path).start(RUN)
    with pytest.raises(MedtlError, match="another model") as err:
        Ledger(tmp_path).start({**RUN, "model_digest": "other"})
    assert "(same name and version, another weights file" in str(err.value) and str(err.value).endswith(
        "the results to resume); choose a new --out".replace("the results", "these results"))
    with pytest.raises(MedtlError, match="another model") as err:  # a review: it said "same name" of other names
        Ledger(tmp_path).start({**RUN, "model_name": "n"})
    assert "same name" not in str(err.value) and "(model_name 'm', now 'n'); choose a new --out" in str(err.value)


def test_another_input_into_one_output_folder_is_said(tmp_path, caplog):
    Ledger(tmp_path).start({**RUN, "input": "export/monday"})
    Ledger(tmp_path).start({**RUN, "input": "export/monday"})
    assert "were made from" not in caplog.text  # resuming the same input: nothing to say
    Ledger(tmp_path).start({**RUN, "input": "export/tuesday"})
    assert "were made from export/monday; this run reads export/tuesday" in caplog.text


def test_csv_from_the_ledger_defuses_formulas(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.start(RUN)
    ledger.append({"case_id": "=HYPERLINK(\"x\")", "status": "ok", "probabilities": {"a": 0.5}, "sr_stored": False})
    ledger.close()
    with open(ledger.write_csv(["case_id", "status", "probabilities", "sr_stored"]), newline="") as f:
        (row,) = csv.DictReader(f)
    assert row == {"case_id": "'=HYPERLINK(\"x\")", "status": "ok", "probabilities": '{"a": 0.5}', "sr_stored": "false"}


def test_a_damaged_line_is_skipped_and_named_not_a_traceback(tmp_path, caplog):
    ledger = Ledger(tmp_path)
    ledger.start(RUN)
    for case in "abc":
        ledger.append({"case_id": case, "status": "ok"})
    ledger.close()
    lines = (tmp_path / "results.jsonl").read_bytes().split(b"\n")
    lines[1] = b"\x00" * len(lines[1])  # a block lost mid-file (power loss, writeback out of order)
    (tmp_path / "results.jsonl").write_bytes(b"\n".join(lines))
    again = Ledger(tmp_path)
    assert sorted(again.start(RUN)) == ["a", "c"]  # b is predicted again
    assert "line(s) 2 are damaged" in caplog.text
    again.close()


def test_one_folder_written_two_ways_is_one_input(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "export").mkdir()
    Ledger(tmp_path / "out").start({**RUN, "input": "export"})  # as an older folder recorded it
    Ledger(tmp_path / "out").start({**RUN, "input": str(tmp_path / "export")})
    assert "were made from" not in caplog.text
