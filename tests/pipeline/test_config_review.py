"""Findings of a review of ``medtl run``: the default task, refused configs naming their key, data outside the
root, the advice of a refused resume, the similarity stage's resamples and log, and stage wall times."""

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from medtl.errors import MedtlError
from medtl.pipeline import load_pipeline, run_pipeline
from medtl.pipeline import runner
from medtl.similarity.assess import assess, flat_scores, resampled_scores


def _write(tiny, text, name="review.yaml"):
    path = tiny / name
    path.write_text(text)
    return path


def _base(make_config):
    return make_config.config.replace("EPOCHS", "1")


def test_a_pipeline_without_tasks_runs_its_default_task(tiny, make_config, tmp_path):
    # two epochs: a one-epoch, one-run report has no curve to draw (refused in the report; not this test's subject)
    text = (make_config.config.replace("EPOCHS", "2").replace("tasks: [{name: tumor}]\n", "").replace("feature_extraction, full, dann", "full")
            .replace("label_fractions: [0.5, 1.0]", "label_fractions: [1.0]").replace("{max_images: 20}", "{enabled: false}"))
    config = _write(tiny, text)
    assert [t.name for t in load_pipeline(config).tasks] == ["label"]
    run_pipeline(config, tiny / "data", tmp_path / "run", progress=False)
    assert set(pd.read_csv(tmp_path / "run" / "predictions.csv")["task"]) == {"label"}
    # the documented default, written out, is the same config: the same stages
    spelled = _write(tiny, text.replace("strategies:", "tasks: [{name: label}]\nstrategies:"), "spelled.yaml")
    run_pipeline(spelled, tiny / "data", tmp_path / "run", progress=False)


def test_a_key_given_twice_is_refused_naming_it_and_its_lines(tiny, make_config):
    with pytest.raises(MedtlError, match=r"review\.yaml: key 'similarity' appears twice in one mapping \(lines 11 and 15\)"):
        load_pipeline(_write(tiny, _base(make_config) + "\n\nsimilarity: {max_images: 30}\n"))
    with pytest.raises(MedtlError, match=r"key 'epochs' appears twice .*lines 4 and 4"):  # one flow mapping
        load_pipeline(_write(tiny, _base(make_config).replace("{epochs: 1,", "{epochs: 1, epochs: 2,")))
    anchors = _base(make_config).replace("\ntrain: {", "\ntrain: &t {") + "profiles: {long: {train: {<<: *t, epochs: 3}}}\n"
    assert load_pipeline(_write(tiny, anchors), "long").train.epochs == 3  # a merge key's values may be overridden


@pytest.mark.parametrize(("fractions", "message"), [
    ("[0.5, 1.0, 0.5]", r"label_fractions: label fractions must differ from each other, got \[0.5, 1.0, 0.5\]"),
    ("[0.5, 1.5]", r"label_fractions: each label fraction must be in \(0, 1\], got 1.5"),
])
def test_label_fractions_are_refused_with_the_bad_value(tiny, make_config, fractions, message):
    with pytest.raises(MedtlError, match=message):
        load_pipeline(_write(tiny, _base(make_config).replace("[0.5, 1.0]", fractions)))


@pytest.mark.parametrize(("old", "new", "message"), [
    ("seeds: [0]", "seeds: [-1]", r"seeds: seeds must lie in \[0, 2\*\*32\), got \[-1\]"),
    ("seeds: [0]", "seeds: [8589934592]", r"seeds: seeds must lie in \[0, 2\*\*32\)"),
    ("encoder: {arch: resnet10}", "encoder: {arch: resnet10, stem_stride: 0}", r"encoder.stem_stride"),
    ("pretrain: {epochs: 1, batch_size: 8}", "pretrain: {epochs: 1, batch_size: 8, kl_weight: -1}",
     r"pretrain.kl_weight"),
])
def test_values_that_would_fail_mid_run_are_refused_at_load(tiny, make_config, old, new, message):
    """A review's seeds: [-1] trained a whole job and one epoch, then stopped in scikit-learn's seed check with a
    traceback; stem_stride 0 was refused only after the prepare stage had written into --out."""
    with pytest.raises(MedtlError, match=message):
        load_pipeline(_write(tiny, _base(make_config).replace(old, new)))


def test_strategy_labels_given_twice_are_refused_under_their_key(tiny, make_config):
    with pytest.raises(MedtlError) as err:
        load_pipeline(_write(tiny, _base(make_config).replace("dann]", "dann, {name: full, hparams: {lr: 0.1}}]")))
    assert "\n  strategies: strategy labels must differ; ['full'] appear twice" in str(err.value)


def test_a_regression_task_on_class_names_is_refused_before_the_run(tiny, make_config, tmp_path):
    config = _write(tiny, _base(make_config).replace("{name: tumor}", "{name: tumor, kind: regression}"))
    with pytest.raises(MedtlError, match=r"tasks\[0\]\.kind: task 'tumor' is a regression, but the target manifest's "
                                         r"label column holds '\w+' \(tgt\.csv line 2\), not a number"):
        run_pipeline(config, tiny / "data", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_rows_outside_the_data_root_are_named_apart_from_missing_files(tiny, make_config, tmp_path):
    manifests = tmp_path / "manifests"
    shutil.copytree(tiny / "manifests", manifests)
    lines = (manifests / "tgt.csv").read_text().splitlines()
    first = lines[1].split(",")[0]
    lines[3] = lines[3].replace(lines[3].split(",")[0], "../../etc/passwd", 1)
    (manifests / "tgt.csv").write_text("\n".join(lines) + "\n")
    config = tmp_path / "p.yaml"
    config.write_text(_base(make_config))
    with pytest.raises(MedtlError, match=r"tgt\.csv \(target manifest\): 1 of 30 row\(s\) name a file outside the data "
                                         r"root .*\n  line 4: path '\.\./\.\./etc/passwd' contains '\.\.'"):
        run_pipeline(config, tiny / "data", tmp_path / "run")
    links = tmp_path / "links"  # a root of links to files elsewhere: outside, not "missing"
    for name in ("src", "tgt"):
        for f in (tiny / "data" / name).rglob("*"):
            if f.is_file():
                (links / f.relative_to(tiny / "data")).parent.mkdir(parents=True, exist_ok=True)
                (links / f.relative_to(tiny / "data")).symlink_to(f)
    assert (links / first).is_symlink()
    with pytest.raises(MedtlError, match=r"src\.csv \(source manifest\): 30 of 30 row\(s\) name a file outside the data "
                                         r"root .*links must point inside it too.*\n  line 2: path .* resolves outside"):
        run_pipeline(make_config(tiny), links, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_refused_resume_says_what_to_do(tiny_run, tiny, make_config, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    base = make_config(tiny).read_text()
    # only the report's settings: --redo report is all it takes
    with pytest.raises(MedtlError, match=r"stage 'report'.*evaluation\.bootstrap\); run with --redo report") as err:
        run_pipeline(_write(tiny, base.replace("bootstrap: 50", "bootstrap: 20")), tiny / "data", out)
    assert "new --out" not in str(err.value)
    # a strategy's hyper-parameter: the strategy and the key
    hparam = base.replace("dann]", "{name: dann, hparams: {trade_off: 0.5}}]")
    with pytest.raises(MedtlError, match=r"differs in: strategies\[dann\]\.hparams\.trade_off\); results would mix"):
        run_pipeline(_write(tiny, hparam), tiny / "data", out)
    # another profile: which one the folder was made with
    profiled = _write(tiny, base + "profiles: {longer: {train: {epochs: 2}}}\n")
    with pytest.raises(MedtlError, match=r"differs in: train\.epochs; this folder was made with --profile default, "
                                         r"this run uses longer\)"):
        run_pipeline(profiled, tiny / "data", out, profile="longer")


def _two_encoder_features(n=16, width=6):
    rng = np.random.default_rng(0)
    src, tgt = rng.normal(size=(n, width)), rng.normal(size=(n, width)) + 0.3
    labels = np.array([0, 1] * (n // 2))
    return {"pretrained": {"source": src, "target": tgt, "target_labels": labels, "target_probs": None},
            "other": {"source": src * 3, "target": tgt[::-1] * 2, "target_labels": labels, "target_probs": None}}


def test_resamples_skip_frechet_only_and_the_ranking_stability_stays(capsys):
    from medtl.similarity.recommend import recommend

    feats = _two_encoder_features()
    full = resampled_scores(feats, n=6)
    lean = resampled_scores(feats, n=6, skip=("frechet",), progress=True)
    assert "similarity resamples" in capsys.readouterr().err  # a bar while the halves are measured
    assert all("frechet" in d["other"] for d in full) and not any("frechet" in d["other"] for d in lean)
    assert [{e: {k: v for k, v in s.items() if k != "frechet"} for e, s in d.items()} for d in full] == lean

    def candidates(scores):
        return [{"source": "s", "encoder": "pretrained", "strategy": "full", "scores": scores["pretrained"]},
                {"source": "s", "encoder": "other", "strategy": "feature_extraction", "scores": scores["other"]}]

    measured = {e: flat_scores(assess(
        f["source"], f["target"], f["target_labels"], n_permutations=1)) for e, f in feats.items()}
    target = {"n_labelled": 8, "shared_labels": True}
    with_full = recommend(target, candidates(measured), resampled=[candidates(d) for d in full])
    with_lean = recommend(target, candidates(measured), resampled=[candidates(d) for d in lean])
    assert "frechet" not in with_full["weights"]  # two encoders: not ranked, so not worth measuring again
    assert with_full["stability"] == with_lean["stability"]
    assert with_full["explanation"] == with_lean["explanation"]


def test_a_single_encoder_ranks_frechet_and_measures_no_halves(tiny_run):
    """One measured encoder gives its candidates the same measurements on every half of the images: the halves
    cannot reorder them, so they are not measured (they were most of the notebook's similarity time)."""
    record = json.loads((tiny_run / "similarity" / "recommendation.json").read_text())
    resamples = json.loads((tiny_run / "similarity" / runner.RESAMPLES).read_text())
    assert "frechet" in record["weights"]
    assert resamples == [] and record["stability"] is None


def test_interrupted_sessions_keep_their_time_in_stages_json(tiny, make_config, tmp_path, monkeypatch):
    import time

    config, out = make_config(tiny), tmp_path / "run"
    monkeypatch.setattr(runner, "TICK_SECONDS", 0.05)

    def interrupted(*args, **kwargs):
        time.sleep(0.6)
        raise KeyboardInterrupt

    book = out / "stages.json"
    with monkeypatch.context() as m:
        m.setattr(runner, "pretrain", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(config, tiny / "data", out, progress=False)
    first = json.loads(book.read_text())["pretrain"]
    # not left saying running (a review read a stopped run's stages.json as one still going)
    assert first["status"] == "interrupted" and "KeyboardInterrupt" in first["stopped"] and first["seconds"] >= 0.5
    with monkeypatch.context() as m:
        m.setattr(runner, "_measure", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(config, tiny / "data", out, stages=("prepare", "pretrain", "similarity"), progress=False)
    stages = json.loads(book.read_text())
    assert stages["pretrain"]["status"] == "done" and stages["pretrain"]["seconds"] > first["seconds"]
    assert stages["similarity"]["status"] == "interrupted" and stages["similarity"]["seconds"] >= 0.5
    before = stages["similarity"]["seconds"]

    def failed(*args, **kwargs):
        time.sleep(0.3)
        raise RuntimeError("a disk error")

    with monkeypatch.context() as m:  # resumed, it runs (and its clock counts) again, then fails
        m.setattr(runner, "_measure", failed)
        with pytest.raises(RuntimeError):
            run_pipeline(config, tiny / "data", out, stages=("prepare", "pretrain", "similarity"), progress=False)
    stages = json.loads(book.read_text())
    assert stages["similarity"]["status"] == "failed" and "RuntimeError" in stages["similarity"]["stopped"]
    assert stages["similarity"]["seconds"] >= before + 0.25 and "disk" not in book.read_text()
    before = stages["similarity"]["seconds"]
    run_pipeline(config, tiny / "data", out, stages=("prepare", "pretrain", "similarity"), progress=False)
    done = json.loads(book.read_text())["similarity"]
    assert done["status"] == "done" and "stopped" not in done and done["seconds"] > before


def test_the_similarity_stage_names_max_images_once(tiny_run, tiny, make_config, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    with caplog.at_level(logging.INFO):
        fewer = _write(tiny, make_config(tiny).read_text().replace("max_images: 20", "max_images: 10"))
        run_pipeline(fewer, tiny / "data", out, stages=("similarity",), redo=("similarity",), progress=False)
    lines = [r.getMessage() for r in caplog.records]
    assert not [line for line in lines if "max_cases" in line]
    named = [line for line in lines if "similarity.max_images" in line]
    assert named == ["similarity: 10 of 20 source and 10 of 20 target training images measured "
                     "(similarity.max_images: 10)"], named


def _with_splits(tiny, tmp_path, new_split):
    """A copy of the tiny manifests whose target rows of one split are moved to another; the config reads it."""
    manifests = tmp_path / "manifests"
    shutil.copytree(tiny / "manifests", manifests)
    m = pd.read_csv(manifests / "tgt.csv")
    m["split"] = m["split"].replace(new_split)
    m.to_csv(manifests / "tgt.csv", index=False)
    return manifests


def test_a_target_without_test_rows_is_refused_before_pretraining(tiny, make_config, tmp_path):
    """All jobs trained and the report then failed, naming no file (researcher review)."""
    _with_splits(tiny, tmp_path, {"test": "val"})
    config = tmp_path / "p.yaml"
    config.write_text(_base(make_config))
    with pytest.raises(MedtlError, match=r"tgt\.csv \(target manifest\): the target manifest has no labelled test rows "
                                         r"for task 'tumor': nothing to score"):
        run_pipeline(config, tiny / "data", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_target_without_val_rows_trains_without_early_stopping(tiny, make_config, tmp_path):
    """An empty val split failed after pretraining with 'manifest mixes modalities []' unless the config named a
    preset; it now trains every job to its epochs and scores the test split at the default threshold."""
    _with_splits(tiny, tmp_path, {"val": "train"})
    text = (_base(make_config).replace("feature_extraction, full, dann", "full")
            .replace("label_fractions: [0.5, 1.0]", "label_fractions: [1.0]").replace("{max_images: 20}", "{enabled: false}"))
    config = tmp_path / "p.yaml"
    config.write_text(text)
    run_pipeline(config, tiny / "data", tmp_path / "run", progress=False)
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert set(predictions["split"]) == {"test"} and len(predictions) == (pd.read_csv(tmp_path / "manifests" / "tgt.csv")
                                                                          ["split"] == "test").sum()


def test_a_typo_in_a_profile_not_chosen_is_refused_too(tiny, make_config):
    """profiles: {quick: {train: {epoch: 1}}} was accepted until someone ran --profile quick (researcher review)."""
    text = _base(make_config) + "profiles: {quick: {train: {epoch: 1}}}\n"
    with pytest.raises(MedtlError, match=r"\(profile quick\): 1 problem\(s\) in the config:\n  train\.epoch: unknown "
                                         r"key; did you mean 'train\.epochs'\?"):
        load_pipeline(_write(tiny, text))
    ok = _base(make_config) + "profiles: {quick: {train: {epochs: 1}}}\n"
    assert load_pipeline(_write(tiny, ok)).train.epochs == 1 and load_pipeline(_write(tiny, ok), "quick")


def test_a_broken_target_image_is_found_before_pretraining_and_the_folder_goes_on_once_its_row_is_gone(
        tiny, make_config, tmp_path):
    """A truncated target image stopped the run only at the transfer stage, after pretraining, and removing its
    row was then refused as an edited manifest (researcher review). The prepare stage reads every target image."""
    shutil.copytree(tiny / "data", tmp_path / "data")
    manifests = _with_splits(tiny, tmp_path, {})
    m = pd.read_csv(manifests / "tgt.csv")
    broken = m["path"].iloc[-1]
    data = (tmp_path / "data" / broken).read_bytes()
    (tmp_path / "data" / broken).write_bytes(data[: len(data) // 3])
    text = (_base(make_config).replace("feature_extraction, full, dann", "full")
            .replace("label_fractions: [0.5, 1.0]", "label_fractions: [1.0]").replace("{max_images: 20}", "{enabled: false}"))
    config = tmp_path / "p.yaml"
    config.write_text(text)
    with pytest.raises(MedtlError, match=rf"tgt\.csv \(target manifest\): 1 of 30 target image\(s\) cannot be read; "
                                         rf"repair them or remove their rows .*\n  {broken}: "):
        run_pipeline(config, tmp_path / "data", tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "pretrain").exists() and not (tmp_path / "run" / "environment.json").exists()
    m.iloc[:-1].to_csv(manifests / "tgt.csv", index=False)
    run_pipeline(config, tmp_path / "data", tmp_path / "run", progress=False)  # the same folder, not refused
    assert json.loads((tmp_path / "run" / "stages.json").read_text())["prepare"]["target_images_read"] == 29


def test_a_misspelt_strategy_in_the_default_is_refused_while_a_profile_replaces_the_list(tmp_path):
    """A review checked its config with --profile quick (which replaces the strategies) and ran it: a misspelt
    strategy in the default list was refused only when the long run started."""
    from pathlib import Path

    text = Path("pipelines/cxr_to_mri2d.yaml").read_text().replace("  - scratch\n", "  - scrach\n", 1)
    bad = tmp_path / "typo.yaml"
    bad.write_text(text.replace("../data_manifests/", str(Path("data_manifests").resolve()) + "/"))
    assert "scrach" in bad.read_text()
    for profile in ("quick", None):
        with pytest.raises(MedtlError, match=r"unknown strategy 'scrach'; did you mean 'scratch'"):
            load_pipeline(bad, profile)


@pytest.mark.parametrize("uda", [True, False])
def test_unlabelled_target_images_are_drawn_without_their_labels(tiny, make_config, uda):
    """A review: with target.max_per_split, unsupervised adaptation's unlabelled target images were drawn
    label-stratified, so the labels it may not use chose them (with the labels permuted, 12 of 41 stayed)."""
    import csv

    from medtl.pipeline.config import load_pipeline
    from medtl.pipeline.context import Context

    with open(tiny / "manifests" / "tgt.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["split"] == "train"]
    flipped = {"tumor": "no_tumor", "no_tumor": "tumor"}
    for r in train[: len(train) // 2]:  # half the train labels changed: a stratified draw changes with them
        r["label"] = flipped.get(r["label"], r["label"])
    with open(tiny / "manifests" / "tgt_relabelled.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    chosen = []
    for name in ("tgt", "tgt_relabelled"):
        text = make_config.config.replace("EPOCHS", "1").replace(
            "target: {manifest: manifests/tgt.csv, image_size: 32}",
            f"target: {{manifest: manifests/{name}.csv, image_size: 32, max_per_split: 8}}").replace(
            "strategies: [feature_extraction, full, dann]", "strategies: [dann]")
        if uda:
            text = text.replace("tasks: [{name: tumor}]", "tasks: [{name: tumor}]\nunlabelled_target: true").replace(
                "label_fractions: [0.5, 1.0]", "label_fractions: [1.0]")
        path = tiny / f"sample_{name}_{uda}.yaml"
        path.write_text(text)
        ctx = Context(load_pipeline(path, None), path, tiny / "data", tiny / "unused", None)
        picked = ctx.load(ctx.config.target, "target").select(split="train")
        assert len(picked) >= 8
        chosen.append({r.path for r in picked})
    assert (chosen[0] == chosen[1]) is uda  # labelled fine-tuning may stratify by label; UDA may not
