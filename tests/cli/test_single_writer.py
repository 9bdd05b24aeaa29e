"""One writer per output folder, one process where the steps are not distributed, and a clean Ctrl-C.

A data-layer review ran a second `medtl demo` into the folder of one it believed stopped; the two runs
wrote the same job and the second died on a missing `last.pt.tmp`. A distributed review ran `medtl train`
and `medtl run` under torchrun: every rank wrote model.pt and the reports, and one died the same way.
"""

import csv

import pytest

from medtl.cli import main
from medtl.lock import OutputLock


def test_a_second_pipeline_run_into_a_folder_in_use_is_refused_naming_the_first(tiny, make_config, capsys):
    out = tiny / "locked_run"
    with OutputLock(out, "medtl run"):  # the first run, still going
        status = main(["run", str(make_config(tiny)), "--data-root", str(tiny / "data"), "--out", str(out),
                       "--no-progress"])
    assert status == 75  # EX_TEMPFAIL: a scheduler retries later, as it would not a typo (2)
    err = capsys.readouterr().err
    assert "another medtl run is writing to this output folder" in err and "PID" in err
    assert not (out / "stages.json").exists()  # nothing of the second run was written


def test_a_second_medtl_train_into_a_folder_in_use_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "model"
    with OutputLock(out, "medtl train"):
        status = main(["train", "--train", str(tiny / "manifests" / "tgt.csv"), "--data-root", str(tiny / "data"),
                       "--out", str(out), "--epochs", "1", "--no-progress"])
    assert status == 75
    assert "another medtl train is writing to this output folder" in capsys.readouterr().err
    assert not (out / "model.pt").exists()


@pytest.mark.parametrize("command", ["train", "run", "demo"])
def test_single_process_commands_refuse_torchrun_before_writing(tiny, make_config, tmp_path, monkeypatch, capsys,
                                                                command):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    out = tmp_path / "out"
    args = {"train": ["train", "--train", str(tiny / "manifests" / "tgt.csv"), "--data-root", str(tiny / "data")],
            "run": ["run", str(make_config(tiny)), "--data-root", str(tiny / "data")], "demo": ["demo"]}[command]
    status = main(args + ["--out", str(out), "--no-progress"])
    assert status == 2
    err = capsys.readouterr().err
    assert f"error [rank 1]: torchrun: medtl {command} runs in one process" in err
    assert not out.exists()


def test_ctrl_c_ends_with_status_130_and_says_how_to_continue(monkeypatch, tmp_path, capsys):
    import medtl.pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(medtl.pipeline, "run_pipeline", interrupted)
    status = main(["run", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "out")])
    assert status == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command again to continue" in err
    assert "Traceback" not in err


def test_other_ranks_do_not_list_skipped_items(tmp_path, monkeypatch):
    from medtl.data.datasets import _record_skipped

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets them
    _record_skipped([("a.png", "corrupt")], tmp_path)
    assert not (tmp_path / "skipped.csv").exists()
    monkeypatch.setenv("RANK", "0")
    _record_skipped([("a.png", "corrupt")], tmp_path)
    with open(tmp_path / "skipped.csv", newline="") as f:
        assert list(csv.reader(f)) == [["case_id", "reason"], ["a.png", "corrupt"]]


def test_a_folder_holding_only_a_stale_lock_is_a_fresh_run_folder(tiny, make_config):
    """A run killed before its first stage leaves only .medtl.lock: that is not 'a folder with other files'."""
    from medtl.errors import MedtlError
    from medtl.pipeline.checks import check_before_run
    from medtl.pipeline.config import load_pipeline
    from medtl.pipeline.context import Context

    out = tiny / "stale_lock_run"
    out.mkdir()
    (out / ".medtl.lock").write_text('{"command": "medtl run", "pid": 999999}\n')  # its holder is gone
    config = make_config(tiny)
    check_before_run(Context(load_pipeline(config, None), config, tiny / "data", out, None))
    (out / "notes.txt").write_text("not a run")
    with pytest.raises(MedtlError, match="not a medtl run folder"):
        check_before_run(Context(load_pipeline(config, None), config, tiny / "data", out, None))


def test_a_run_refused_before_it_writes_leaves_no_folder_it_made(tiny, tmp_path, capsys):
    """A review: a refused medtl train (a bad input, a misspelt class) left an empty --out folder behind."""
    out = tmp_path / "runs" / "model"
    args = ["--train", str(tiny / "manifests" / "tgt.csv"), "--data-root", str(tiny / "data"), "--out", str(out),
            "--positive-class", "no_such_class", "--no-progress"]
    assert main(["train", *args]) == 2
    assert "no_such_class" in capsys.readouterr().err
    assert not out.exists()  # nor its lock file
    assert main(["pretrain", "--manifest", str(tmp_path / "missing.csv"), "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()
    out.mkdir(parents=True)  # a folder the user made is theirs: kept, as it was
    assert main(["train", *args]) == 2
    assert out.is_dir() and [p.name for p in out.iterdir()] == [".medtl.lock"]
