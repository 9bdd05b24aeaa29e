"""Cheap checks come before heavy work: a refused `medtl run` writes nothing, and says why in one place."""

import pytest

from medtl.cli import main
from medtl.data.check import check_manifest


@pytest.fixture
def config(make_config) -> str:
    """The shared tiny pipeline's YAML (tests/conftest.py), one epoch; written into ``tiny`` by each test."""
    return make_config.config.replace("EPOCHS", "1")


def _run(tiny, config: str, out_name: str = "run", data: str = "data") -> list[str]:
    path = tiny / f"{out_name}.yaml"
    path.write_text(config)
    return ["run", str(path), "--data-root", str(tiny / data), "--out", str(tiny / out_name), "--no-progress"]


def test_unknown_strategy_is_refused_before_any_folder_is_made(tiny, config, capsys):
    assert main(_run(tiny, config.replace("full,", "fulll,"), "typo")) == 2
    err = capsys.readouterr().err
    assert "unknown strategy 'fulll'; did you mean 'full'?" in err and "strategies[fulll]" in err
    assert not (tiny / "typo").exists()


def test_unknown_hyper_parameter_and_config_key_get_did_you_mean(tiny, config, capsys):
    hparams = config.replace("strategies: [feature_extraction, full, dann]",
                             "strategies: [{name: full, hparams: {lrr: 0.1}}]")
    assert main(_run(tiny, hparams, "hp")) == 2
    assert "unknown hyper-parameter 'lrr' for full; did you mean 'lr'?" in capsys.readouterr().err
    assert main(_run(tiny, config.replace("patience: null", "patiense: null"), "key")) == 2
    assert "train.patiense: unknown key; did you mean 'train.patience'?" in capsys.readouterr().err
    assert not (tiny / "hp").exists() and not (tiny / "key").exists()


def test_wrong_encoder_device_label_column_label_map_hparam_values_and_seeds_are_refused(tiny, config, capsys):
    cases = [("encoder: {arch: resnet10}", "encoder: {arch: resnet81}",
              "train.yaml: encoder.arch: unknown encoder 'resnet81'; did you mean 'resnet18'?"),
             ("device: cpu", "device: gpu", "train.device: unknown device 'gpu' (auto, cpu, cuda or cuda:N)"),
             ("device: cpu", "device: mps", "train.device: device 'mps': medtl runs on cpu or cuda"),
             ("tasks: [{name: tumor}]", "tasks: [{name: tumor, label_column: lable}]",
              "tasks[0].label_column: unknown label column 'lable' in the target manifest; did you mean 'label'?"),
             ("tasks: [{name: tumor}]", "tasks: [{name: tumor, label_map: {tumour: tumor}}]",
              "tasks[0].label_map: label_map names 'tumour', which neither manifest's label column holds"),
             ("strategies: [feature_extraction, full, dann]", "strategies: [{name: full, hparams: {lr: fast}}]",
              "strategies[0].hparams: lr of full is a number, got 'fast'"),
             ("strategies: [feature_extraction, full, dann]", "strategies: [{name: full, hparams: {lr: -1.0}}]",
              "strategies[0].hparams: lr of full must be at least 0, got -1.0"),
             ("seeds: [0]", "seeds: [0, 0]", "seeds: seeds must differ from each other, got [0, 0]"),
             ("strategies: [feature_extraction, full, dann]", "strategies: [{name: full, hparams: {lr: 1e-3}}]",
              "lr of full is a number, got '1e-3' (YAML reads 1e-3 as text: write 1.0e-3)"),
             ("strategies: [feature_extraction, full, dann]", "strategies: [{name: lp_ft, hparams: {lp_fraction: 2.0}}]",
              "lp_fraction of lp_ft is a fraction of 0 to 1, got 2.0"),
             ("strategies: [feature_extraction, full, dann]", "strategies: [{name: dann, hparams: {disc_hidden: 512.5}}]",
              "disc_hidden of dann is a whole number, got 512.5"),
             # a review: these passed the checks and failed in the transfer stage, after pretraining, with a
             # traceback (ZeroDivisionError, TypeError), a NaN loss or the discriminator's internal arguments
             ("strategies: [feature_extraction, full, dann]", "strategies: [{name: dan, hparams: {kernel_multipliers: []}}]",
              "kernel_multipliers of dan is a non-empty list of positive numbers, got []"),
             ("strategies: [feature_extraction, full, dann]", "strategies: [{name: dan, hparams: {kernel_multipliers: 2.0}}]",
              "kernel_multipliers of dan is a non-empty list of positive numbers, got 2.0"),
             ("strategies: [feature_extraction, full, dann]",
              "strategies: [{name: dan, hparams: {kernel_multipliers: [0.0, 1.0]}}]",
              "kernel_multipliers of dan is a non-empty list of positive numbers, got [0.0, 1.0]"),
             ("strategies: [feature_extraction, full, dann]", "strategies: [{name: dan, hparams: {base_bandwidth: auto}}]",
              "base_bandwidth of dan is a positive number, or null for its automatic value, got 'auto'"),
             ("strategies: [feature_extraction, full, dann]", "strategies: [{name: dan, hparams: {base_bandwidth: 0.0}}]",
              "base_bandwidth of dan is a positive number, or null for its automatic value, got 0.0"),
             ("strategies: [feature_extraction, full, dann]", "strategies: [{name: dann, hparams: {disc_layers: 0}}]",
              "disc_layers of dann must be at least 1, got 0"),
             ("strategies: [feature_extraction, full, dann]", "strategies: [{name: cdan, hparams: {randomized_dim: 0}}]",
              "randomized_dim of cdan must be at least 1, got 0"),
             ("pretrain: {epochs: 1, batch_size: 8}", "pretrain: {mode: moco, epochs: 1, batch_size: 8, "
              "hparams: {temprature: 0.1}}", "pretrain.hparams: unknown hyper-parameter 'temprature' for moco; "
              "did you mean 'temperature'?")]
    for old, new, message in cases:
        assert old in config
        assert main(_run(tiny, config.replace(old, new), "train")) == 2
        assert message.split("train.yaml: ")[-1] in capsys.readouterr().err
        assert not (tiny / "train").exists()


def test_threshold_rule_is_checked_with_the_config(tiny, config, capsys):
    rule = config.replace("evaluation: {bootstrap: 50}", "evaluation: {threshold_rule: sensitivity}")
    assert main(_run(tiny, rule, "rule")) == 2
    err = capsys.readouterr().err
    assert "evaluation.threshold_rule" in err and "only 'youden'" in err
    assert main(_run(tiny, rule.replace("sensitivity", "youdn"), "rule")) == 2
    assert "unknown threshold rule 'youdn'; the rules are youden, sensitivity, specificity" in capsys.readouterr().err
    assert not (tiny / "rule").exists()


def test_wrong_data_root_is_one_line_suggesting_data_root(tiny, config, capsys):
    (tiny / "elsewhere").mkdir(exist_ok=True)
    assert main(_run(tiny, config, "root", data="elsewhere")) == 2
    err = capsys.readouterr().err
    assert "60 of 60 files are missing under the data root" in err and "--data-root" in err
    assert len(err.strip().splitlines()) == 1 and not (tiny / "root").exists()


def test_out_that_is_not_a_run_folder_is_refused(tiny, config, capsys):
    (tiny / "busy").mkdir()
    (tiny / "busy" / "notes.txt").write_text("mine")
    assert main(_run(tiny, config, "busy")) == 2
    assert "not a medtl run folder" in capsys.readouterr().err
    assert [p.name for p in (tiny / "busy").iterdir()] == ["notes.txt"]  # nothing added to someone's folder


def test_manifest_check_with_a_wrong_root_says_so_in_one_line(tiny, capsys):
    from medtl.data.manifest import Manifest

    m = Manifest.load(tiny / "manifests" / "tgt.csv")
    report = check_manifest(m, tiny)  # one level too high: every path misses its data/ prefix
    assert report.errors == [f"30 of 30 files are missing under the data root {tiny}: is that the folder the "
                             "manifest's paths are relative to? Pass --data-root DIR (or set MEDTL_DATA_ROOT)"]
    assert main(["manifest", "check", str(tiny / "manifests" / "tgt.csv"), "--data-root", str(tiny)]) == 1
    assert capsys.readouterr().out.count("missing under the data root") == 1
    assert check_manifest(m, tiny / "data").ok  # the right root passes


def test_predictions_missing_one_prob_column_name_it(tmp_path, capsys):
    from medtl.evaluation.synthetic import synthetic_predictions

    table = synthetic_predictions(20, classes=("glioma", "meningioma", "none"), task="tumor3")
    table.drop(columns=["prob_meningioma"]).to_csv(tmp_path / "p.csv", index=False)
    assert main(["evaluate", "--predictions", str(tmp_path / "p.csv"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) prob_meningioma" in err and "sum to 1" not in err


def test_mistyped_evaluate_inputs_make_no_output_folder(tmp_path, capsys):
    """A review: a mistyped --predictions or --labels still made the --out folder (with figures/) before failing."""
    assert main(["evaluate", "--predictions", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "ev")]) == 2
    assert f"{tmp_path / 'nope.csv'}: not found" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


def test_results_needs_an_output_folder(capsys):
    """A review: --out defaulted to docs, so a user at the repo root who left it out overwrote docs/results.md."""
    with pytest.raises(SystemExit):
        main(["results", "some_run"])
    assert "--out" in capsys.readouterr().err


def test_demo_refuses_another_seed_on_the_folder_of_one(tmp_path):
    """A review: `medtl demo --seed 1` on a seed-0 demo folder said every stage was complete and gave seed 0's
    results, exit 0."""
    import json

    from medtl.demo import run_demo
    from medtl.errors import MedtlError

    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "mri2d_synthetic.csv").write_text("path,label\n")
    (tmp_path / "demo_seed.json").write_text(json.dumps({"seed": 0}))
    with pytest.raises(MedtlError, match="this folder holds the demo of --seed 0"):
        run_demo(tmp_path, seed=1, progress=False)


def test_unsupervised_adaptation_config_mistakes_are_refused_before_anything_runs(tiny, config, capsys):
    """A review: in UDA, label fractions ran the same jobs twice and drew a label-fraction curve of identical
    points; train.selector without unlabelled_target was silently ignored; a source without val rows failed after
    pretraining with 'manifest has no rows'."""
    import csv

    uda = config.replace("tasks: [{name: tumor}]", "tasks: [{name: tumor}]\nunlabelled_target: true")
    cases = [(uda, "unlabelled_target hides every target label whatever the budget"),  # label_fractions [0.5, 1]
             (config.replace("\ntrain: {epochs: 1,", "\ntrain: {epochs: 1, selector: dev,"),
              "train.selector chooses the checkpoints of unsupervised adaptation")]
    for text, message in cases:
        assert main(_run(tiny, text, "uda")) == 2
        assert message in capsys.readouterr().err
        assert not (tiny / "uda").exists()
    with open(tiny / "manifests" / "src.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] != "val"]
    with open(tiny / "manifests" / "src_noval.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    noval = uda.replace("label_fractions: [0.5, 1.0]", "label_fractions: [1.0]").replace("manifests/src.csv",
                                                                                          "manifests/src_noval.csv")
    assert main(_run(tiny, noval, "uda")) == 2
    err = capsys.readouterr().err
    assert "source.manifest: unsupervised adaptation chooses each job's checkpoint on the source's validation " \
           "split" in err and not (tiny / "uda").exists()
