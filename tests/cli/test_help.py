"""Every command's --help is plain text, and every option says what it does and its default."""

import argparse

import pytest

from medtl.cli import build_parser, main, subparsers_of

PARSER = build_parser()
COMMANDS = {p.prog: p for p in subparsers_of(PARSER)}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.help != argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def test_every_command_is_walked():
    assert {"medtl run", "medtl demo", "medtl similarity", "medtl recommend", "medtl manifest check"} <= set(COMMANDS)


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_help_is_plain_text_with_help_for_every_option(prog):
    parser = COMMANDS[prog]
    text = parser.format_help()
    assert "`" not in text, f"{prog} --help shows reStructuredText backticks"
    missing = [a.option_strings or [a.dest] for a in _options(parser) if not (a.help or "").strip()]
    assert not missing, f"{prog}: options without help text: {missing}"
    # an option with a value and a default shows that default
    for a in _options(parser):
        if a.option_strings and a.nargs != 0 and a.default is not None:
            assert "default" in (parser._get_formatter()._get_help_string(a)), f"{prog} {a.option_strings}"


def test_defaults_are_shown_and_flags_get_none(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "passes over the training split (default: 10)" in text
    assert "show no progress bar" in text and "show no progress bar (default" not in text


@pytest.mark.parametrize("prog", ["medtl run", "medtl demo", "medtl pretrain", "medtl similarity", "medtl manifest check"])
def test_long_commands_take_no_progress(prog):
    assert "--no-progress" in COMMANDS[prog].format_help()


def test_out_is_a_folder_for_similarity_and_recommend(tmp_path, capsys):
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    np.save(tmp_path / "s.npy", rng.normal(size=(30, 4)))
    np.save(tmp_path / "t.npy", rng.normal(1, 1, size=(30, 4)))
    common = ["similarity", "--source-features", str(tmp_path / "s.npy"), "--target-features", str(tmp_path / "t.npy"),
              "--permutations", "20"]
    assert main([*common, "--out", str(tmp_path / "sim")]) == 0
    assert json.loads((tmp_path / "sim" / "similarity.json").read_text())["distances"]
    capsys.readouterr()
    # the old spelling, a JSON file, still writes it and says it is deprecated
    assert main([*common, "--out", str(tmp_path / "old.json")]) == 0
    assert (tmp_path / "old.json").exists() and "deprecated" in capsys.readouterr().err
    assert main([*common, "--json", str(tmp_path / "older.json")]) == 0
    assert (tmp_path / "older.json").exists() and "--out names a folder" in capsys.readouterr().err

    candidates = {"target": {"n_labelled": 50}, "candidates": [
        {"source": "a", "encoder": "e", "strategy": "full", "assessment": "sim/similarity.json"},
        {"source": "b", "encoder": "e", "strategy": "feature_extraction", "scores": {"proxy_a_distance": 1.0}}]}
    (tmp_path / "c.json").write_text(json.dumps(candidates))
    assert main(["recommend", str(tmp_path / "c.json"), "--out", str(tmp_path / "rec")]) == 0
    assert json.loads((tmp_path / "rec" / "recommendation.json").read_text())["recommended"]
    (tmp_path / "file").write_text("")
    assert main(["recommend", str(tmp_path / "c.json"), "--out", str(tmp_path / "file")]) == 2
    assert "--out must be a folder" in capsys.readouterr().err
    # refused before the work: no table printed, nothing written
    assert main([*common, "--out", str(tmp_path / "file")]) == 2
    out, err = capsys.readouterr()
    assert "--out must be a folder" in err and "proxy_a_distance" not in out


def test_verbose_is_accepted_after_the_command_too():
    from medtl.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["predict", "--model", "m", "--input", "i", "--out", "o", "-v"]).verbose is True
    assert parser.parse_args(["-v", "predict", "--model", "m", "--input", "i", "--out", "o"]).verbose is True
    assert parser.parse_args(["predict", "--model", "m", "--input", "i", "--out", "o"]).verbose is False
