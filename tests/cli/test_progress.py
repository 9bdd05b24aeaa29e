"""Progress: one bar per long stage, log lines above it (the weights line once), total time at the end."""

import contextlib
import logging
import sys
from pathlib import Path

from medtl import progress
from medtl.cli import main


@contextlib.contextmanager
def console_log():
    """A console log handler on stderr, as `medtl` sets one up (under pytest, basicConfig adds none). Made
    inside the test, so its stream is the one capsys reads (and logging_redirect_tqdm recognises)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


def test_a_whole_run_shows_stage_bars_times_and_one_weights_line(tiny, make_config, capsys):
    path = make_config(tiny, name="progress.yaml")
    path.write_text(path.read_text().replace("[feature_extraction, full, dann]", "[feature_extraction, full]")
                    .replace("label_fractions: [0.5, 1.0]", "label_fractions: [1.0]"))  # two jobs are enough here
    args = ["run", str(path), "--data-root", str(tiny / "data"), "--out", str(tiny / "progress")]
    with console_log():
        assert main(args) == 0
    out, err = capsys.readouterr()
    for stage in ("prepare", "pretrain", "similarity", "transfer", "report"):
        assert f"[{stage}] done in " in out, stage
    assert "medtl run finished in " in out
    # then what to do with it: the results page, and a model to give predict (a file that exists)
    assert f"medtl results {tiny / 'progress'} --out DIR" in out
    model = out.split("e.g. medtl predict --model ")[1].split()[0]
    assert model.endswith("best.pt") and Path(model).is_file()
    for bar in ("pretrain:", "similarity:", "transfer:"):
        assert bar in err, bar
    # two transfer jobs and the similarity stage load the pretrained weights: the INFO line shows once
    assert err.count("INFO medtl.models.weights: loaded") == 1
    assert main([*args, "--redo-report", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "[report] done in " in out and "pretrain:" not in err and "transfer:" not in err


def test_bars_print_plain_text_to_stdout_in_a_notebook(monkeypatch, capsys):
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    for _ in progress.bar(range(3), desc="stage"):
        pass
    out, err = capsys.readouterr()
    assert "stage: 100%" in out and "stage" not in err  # stderr shows pink in Jupyter


def test_log_lines_go_through_tqdm_write_and_repeats_are_dropped(capsys):
    root = logging.getLogger()
    with console_log() as handler, progress.logs_above_bars():
        assert handler not in root.handlers  # replaced by the tqdm-aware handler for the block
        weights = logging.getLogger("medtl.models.weights")
        for path in ("a.pt", "b.pt", "c.pt"):
            weights.info("loaded %s", path)
        weights.warning("weights do not fit: %s", "x")
        logging.getLogger("medtl.other").info("kept %d", 1)
        logging.getLogger("medtl.other").info("kept %d", 2)
    err = capsys.readouterr().err
    assert err.count("loaded") == 1 and "a.pt" in err and "weights do not fit: x" in err
    assert "kept 1" in err and "kept 2" in err  # other loggers are not deduplicated


def test_format_seconds():
    assert [progress.format_seconds(s) for s in (4.4, 187, 3725)] == ["4 s", "3 min 07 s", "1 h 02 min"]
