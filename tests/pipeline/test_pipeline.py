import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from medtl.cli import main
from medtl.errors import MedtlError
from medtl.pipeline import load_pipeline, run_pipeline

REPO = Path(__file__).resolve().parents[2]

def test_runs_end_to_end_then_skips_and_refuses_a_changed_config(tiny, make_config, capsys):
    out = tiny / "run"
    html = run_pipeline(make_config(tiny), tiny / "data", out)
    assert html.exists() and (out / "report.json").exists() and (out / "config.yaml").exists()
    preds = pd.read_csv(out / "predictions.csv")
    assert set(preds["strategy"]) == {"feature_extraction", "full", "dann"}
    assert set(preds["label_fraction"]) == {0.5, 1.0} and set(preds["split"]) == {"val", "test"}
    assert (out / "similarity" / "recommendation.json").exists()
    for job in (out / "transfer").glob("*/*/*/seed0"):
        assert (job / "best.pt").exists() and (job / "metrics.jsonl").exists()
    mtimes = {p: p.stat().st_mtime for p in (out / "transfer").rglob("predictions.csv")}
    capsys.readouterr()
    run_pipeline(make_config(tiny), tiny / "data", out)
    assert capsys.readouterr().out.count("already complete") == 5
    assert mtimes == {p: p.stat().st_mtime for p in (out / "transfer").rglob("predictions.csv")}
    with pytest.raises(MedtlError, match=r"stage 'transfer'.*differs in: train\.epochs\)"):
        run_pipeline(make_config(tiny, epochs=2), tiny / "data", out)


def test_a_finished_study_grows_by_new_strategies_without_redoing_its_jobs(tiny_run, tiny, make_config, tmp_path, capsys):
    """Adding a strategy to a finished run's config runs only its jobs; the ranking and report are redone,
    the transfer stage's wall time counts both sessions; dropping a strategy is still refused."""
    import shutil

    out = tiny_run
    grown = tmp_path / "grown"
    shutil.copytree(out, grown)
    before = json.loads((grown / "stages.json").read_text())
    mtimes = {p: p.stat().st_mtime for p in (grown / "transfer").rglob("predictions.csv")}
    bigger = tiny / "bigger.yaml"
    bigger.write_text(make_config(tiny).read_text().replace("dann]", "dann, scratch]"))
    capsys.readouterr()
    started = time.time()
    run_pipeline(bigger, tiny / "data", grown)
    elapsed = time.time() - started
    printed = capsys.readouterr().out
    assert printed.count("already complete") == 2  # prepare and pretrain; similarity, transfer, report ran
    assert "[transfer] 8 jobs (4 strategies x 1 task(s) x their budgets and seeds): 6 already done, 2 to run" \
        in printed  # the plan, before the first job
    assert all(p.stat().st_mtime == t for p, t in mtimes.items())  # the finished jobs were kept as they were
    jobs = {p.relative_to(grown / "transfer").parts[2] for p in (grown / "transfer").rglob("predictions.csv")}
    assert jobs == {"feature_extraction", "full", "dann", "scratch"}
    assert set(pd.read_csv(grown / "predictions.csv")["strategy"]) == jobs
    ranked = json.loads((grown / "similarity" / "recommendation.json").read_text())["ranking"]
    assert any(r["strategy"] == "scratch" for r in ranked)
    after = json.loads((grown / "stages.json").read_text())
    assert after["transfer"]["status"] == "done" and after["transfer"]["jobs"] == 8 and after["transfer"]["already_done"] == 6
    # both sessions count, each once
    assert before["transfer"]["seconds"] < after["transfer"]["seconds"] <= before["transfer"]["seconds"] + elapsed
    assert "scratch" in (grown / "report.md").read_text()
    assert "scratch" in (grown / "config.yaml").read_text()  # the folder's config is the grown one
    env = json.loads((grown / "environment.json").read_text())  # the command the results page prints
    assert env["config_path"] == str(bigger.resolve()) and env["out"] == str(grown)
    # refused: a dropped strategy, or growth together with another change; either leaves the folder as it was
    kept = {p: p.read_bytes() for p in (grown / "stages.json", grown / "config.yaml",
                                        grown / "similarity" / "recommendation.json")}
    smaller = tiny / "smaller.yaml"
    smaller.write_text(make_config(tiny).read_text().replace(", dann]", "]"))
    with pytest.raises(MedtlError, match="stage 'similarity'.*strategies.*items added to strategies"):
        run_pipeline(smaller, tiny / "data", grown)
    mixed = tiny / "mixed.yaml"
    mixed.write_text(make_config(tiny, epochs=2).read_text().replace("dann]", "dann, scratch, lp_ft]"))
    with pytest.raises(MedtlError, match="stage 'transfer'.*train"):
        run_pipeline(mixed, tiny / "data", grown)
    assert all(p.read_bytes() == data for p, data in kept.items())


def test_redo_similarity_measures_again_and_trains_nothing(tiny_run, tiny, make_config, tmp_path):
    """--redo similarity measures the domains again (with the image resamples that say how stable the pick
    is) and renders the report again; no job is trained again, and a training stage cannot be redone."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    (out / "similarity" / "resamples.json").unlink(missing_ok=True)  # a folder from before they were measured
    mtimes = {p: p.stat().st_mtime for p in (out / "transfer").rglob("predictions.csv")}
    with pytest.raises(MedtlError, match="cannot redo transfer: only similarity, report"):
        run_pipeline(make_config(tiny), tiny / "data", out, redo=("transfer",))
    run_pipeline(make_config(tiny), tiny / "data", out, redo=("similarity",))
    resamples = json.loads((out / "similarity" / "resamples.json").read_text())
    record = json.loads((out / "similarity" / "recommendation.json").read_text())
    assert "stability" in record and (record["stability"] is None) == (resamples == [])
    assert mtimes == {p: p.stat().st_mtime for p in (out / "transfer").rglob("predictions.csv")}


def test_resampled_scores_draw_the_same_halves_for_every_encoder():
    import numpy as np

    from medtl.similarity.assess import resampled_scores as _resampled_scores

    rng = np.random.default_rng(0)
    src, tgt = rng.normal(size=(20, 6)), rng.normal(size=(16, 6)) + 0.5
    feats = {"a": {"source": src, "target": tgt, "target_labels": np.array([0, 1] * 8), "target_probs": None},
             "b": {"source": src, "target": tgt, "target_labels": np.array([0, 1] * 8), "target_probs": None}}
    draws = _resampled_scores(feats, n=5)
    assert len(draws) == 5 and all(d["a"] == d["b"] for d in draws)  # same features, same halves: same scores
    assert len({round(d["a"]["mmd2"], 9) for d in draws}) == 5  # different halves each time
    assert {"logme", "h_score", "proxy_a_distance", "mmd2", "frechet"} <= set(draws[0]["a"])
    assert _resampled_scores({"a": {**feats["a"], "source": src[:6]}}) == []  # halves of 3 images: not measured


def test_redo_report_renders_under_changed_evaluation_settings(tiny_run, tiny, make_config, tmp_path):
    """A report-only setting (the bootstrap count) is no reason to refuse --redo-report, which re-renders the
    report anyway; without --redo-report the change is refused as before. Training stages are untouched."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    cheaper = tiny / "cheaper.yaml"
    cheaper.write_text(make_config(tiny).read_text().replace("bootstrap: 50", "bootstrap: 20"))
    with pytest.raises(MedtlError, match=r"stage 'report'.*evaluation\.bootstrap"):
        run_pipeline(cheaper, tiny / "data", out)
    mtimes = {p: p.stat().st_mtime for p in (out / "transfer").rglob("predictions.csv")}
    run_pipeline(cheaper, tiny / "data", out, redo=("report",))
    assert json.loads((out / "report.json").read_text())["settings"]["n_boot"] == 20
    assert mtimes == {p: p.stat().st_mtime for p in (out / "transfer").rglob("predictions.csv")}
    run_pipeline(cheaper, tiny / "data", out)  # recorded: the changed settings are now the folder's


def test_only_added_list_items_count_as_growth(tiny, make_config):
    """Growth keeps every recorded item, in either recorded form, and adds one; a list left at its default
    stands for the default's items; a reordering or a removal is not growth."""
    from medtl.pipeline.runner import _grown, _payloads

    root = (tiny / "data").resolve()

    def payload(text, with_defaults=False):
        path = tiny / "variant.yaml"
        path.write_text(text)
        return _payloads(load_pipeline(path), root, with_defaults)["transfer"]

    base = make_config(tiny).read_text()
    grown = base.replace("dann]", "dann, scratch]")
    new = payload(grown), payload(grown, True)
    assert _grown(payload(base), *new)
    assert _grown(payload(base, True), *new)  # a run folder that recorded every value (before 2026-11-30)
    assert not _grown(payload(base), payload(base.replace("feature_extraction, full", "full, feature_extraction")),
                      payload(base.replace("feature_extraction, full", "full, feature_extraction"), True))
    assert not _grown(payload(base), payload(base.replace("[feature_extraction, ", "[scratch, ")),
                      payload(base.replace("[feature_extraction, ", "[scratch, "), True))
    default_fractions = base.replace("label_fractions: [0.5, 1.0]\n", "")  # left at the default [1.0]
    for fractions, ok in (("[1.0, 0.5]", True), ("[0.1, 0.5]", False)):
        text = base.replace("label_fractions: [0.5, 1.0]", f"label_fractions: {fractions}")
        assert _grown(payload(default_fractions), payload(text), payload(text, True)) is ok


def test_bad_configs_fail_before_training_naming_the_key(tiny, make_config):
    bad = tiny / "bad.yaml"
    bad.write_text(make_config.config.replace("EPOCHS", "1") + "learning_rate: 3\n")
    with pytest.raises(MedtlError, match="learning_rate"):
        load_pipeline(bad)
    bad.write_text(make_config.config.replace("EPOCHS", "one"))
    with pytest.raises(MedtlError, match="train.epochs"):
        load_pipeline(bad)
    with pytest.raises(MedtlError, match="unknown profile"):
        load_pipeline(make_config(tiny), "turbo")
    bad.write_text(make_config.config.replace("EPOCHS", "1").replace("manifests/tgt.csv", "manifests/nope.csv"))
    with pytest.raises(MedtlError, match="target.manifest"):
        run_pipeline(bad, tiny / "data", tiny / "bad_run")
    bad.write_text(make_config.config.replace("EPOCHS", "1").replace("dann]", "dann, magic]"))
    with pytest.raises(MedtlError, match="strategies\\[magic\\].*unknown strategy"):
        run_pipeline(bad, tiny / "data", tiny / "bad_run2")
    assert not (tiny / "bad_run2" / "pretrain").exists()
    # values that cannot run are refused before anything is written, naming the key
    base = make_config.config.replace("EPOCHS", "1")
    for changed, key in ((base.replace("batch_size: 8", "batch_size: 0"), "train.batch_size"),
                         (base.replace("seeds: [0]", "seeds: []"), "seeds"),
                         (base.replace("{max_images: 20}", "{max_images: 0}"), "similarity.max_images"),
                         (base.replace("{arch: resnet10}", "{arch: resnet11}"), "encoder.arch"),
                         (base.replace("{arch: resnet10}", "{arch: resnet10, lift: i3d}"), "lift 'i3d' makes a 3D"),
                         (base.replace("device: cpu", "device: cuda"), "train.device")):
        bad.write_text(changed)
        if key == "train.device" and __import__("torch").cuda.is_available():
            continue  # a GPU is there: cuda is a valid device
        with pytest.raises(MedtlError, match=key.replace(".", "\\.")):
            run_pipeline(bad, tiny / "data", tiny / "bad_run3")
        assert not (tiny / "bad_run3").exists(), key


def test_a_run_folder_refuses_to_go_on_after_its_manifest_was_edited(tiny_run, tiny, make_config, tmp_path):
    """Finished jobs trained and scored on the old splits: a manifest edited since is refused, naming it."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny / "manifests", root / "manifests")
    config = root / "p.yaml"
    config.write_text(make_config(tiny).read_text())
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    env = json.loads((out / "environment.json").read_text())
    assert set(env["manifest_sha256"]) == {"source", "target"}
    run_pipeline(config, tiny / "data", out)  # the same manifests (copied): goes on
    lines = (root / "manifests" / "tgt.csv").read_text().splitlines()
    first_test = next(i for i, line in enumerate(lines) if ",test," in line)
    moved = [line.replace(",test,", ",train,") if i == first_test else line for i, line in enumerate(lines)]  # one row
    (root / "manifests" / "tgt.csv").write_text("\n".join(moved) + "\n")
    with pytest.raises(MedtlError, match="the target manifest changed since this run folder was made") as err:
        run_pipeline(config, tiny / "data", out)
    # the pretraining read only the unchanged source: the refusal says how to reuse it in a new folder
    assert f"set pretrain.checkpoint: {(out / 'pretrain' / 'model.pt').resolve()}" in str(err.value)


def test_a_checkpoint_of_another_architecture_than_the_config_is_refused(tiny_run, tiny, make_config, tmp_path):
    """pretrain.checkpoint built its own arch (resnet10) for the pretrained jobs while scratch built encoder.arch
    (resnet18), and the report said resnet18 for both: pretrained against scratch compared two networks."""
    checkpoint = (tiny_run / "pretrain" / "model.pt").resolve()
    text = make_config(tiny).read_text().replace("pretrain: {epochs: 1, batch_size: 8}",
                                                 f"pretrain: {{checkpoint: {checkpoint}}}")
    other = tiny / "other_arch.yaml"
    other.write_text(text.replace("encoder: {arch: resnet10}", "encoder: {arch: resnet18}"))
    with pytest.raises(MedtlError, match=r"encoder.arch: arch resnet18 differs from the checkpoint's resnet10 .*set "
                                         r"encoder.arch: resnet10"):
        run_pipeline(other, tiny / "data", tmp_path / "run")
    assert not (tmp_path / "run").exists()
    other.write_text(text.replace("encoder: {arch: resnet10}", "encoder: {arch: resnet10, stem_stride: 1}"))
    with pytest.raises(MedtlError, match=r"encoder.stem_stride: stem_stride 1 differs from the checkpoint's 2"):
        run_pipeline(other, tiny / "data", tmp_path / "run")


def test_missing_data_files_are_listed(tiny, make_config, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(tiny / "data", root)
    (root / "src/images/normal/case0000.png").unlink()
    with pytest.raises(MedtlError, match="1 file\\(s\\) named by the manifests are missing under the data root") as err:
        run_pipeline(make_config(tiny), root, tmp_path / "run")
    assert "src/images/normal/case0000.png" in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
    empty = tmp_path / "empty"  # the wrong root altogether: one line, not a list of every file
    empty.mkdir()
    with pytest.raises(MedtlError, match="60 of 60 files are missing under the data root.*--data-root") as err:
        run_pipeline(make_config(tiny), empty, tmp_path / "run")
    assert "case0000" not in str(err.value)


def test_cli_exit_status_on_badmake_config(tiny, make_config, capsys):
    bad = tiny / "bad_cli.yaml"
    bad.write_text(make_config.config.replace("EPOCHS", "1") + "colour: blue\n")
    assert main(["run", str(bad), "--data-root", str(tiny / "data"), "--out", str(tiny / "x")]) == 2
    assert "colour" in capsys.readouterr().err


def test_killed_run_resumes_without_redoing_finished_jobs(tiny, make_config):
    config = make_config(tiny, epochs=3, name="kill.yaml")
    out = tiny / "killed"
    cmd = [sys.executable, "-m", "medtl", "run", str(config), "--data-root", str(tiny / "data"), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    # kill once the first job is complete and the second has started training
    while time.time() < deadline and proc.poll() is None:
        done = list((out / "transfer").rglob("predictions.csv")) if (out / "transfer").exists() else []
        # a finished job drops its last.pt: one without a table has started
        started = [p for p in (out / "transfer").rglob("last.pt") if not (p.parent / "predictions.csv").exists()] \
            if (out / "transfer").exists() else []
        if len(done) >= 1 and started:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    assert proc.returncode != 0, "the run finished before it could be killed"
    first = {p: p.stat().st_mtime for p in (out / "transfer").rglob("predictions.csv")}
    killed = json.loads((out / "stages.json").read_text())["transfer"]
    assert killed["status"] == "running" and killed["seconds"] > 0  # time spent so far is on record
    run_pipeline(config, tiny / "data", out)
    resumed = json.loads((out / "stages.json").read_text())["transfer"]
    assert resumed["status"] == "done" and resumed["seconds"] > killed["seconds"]  # both sessions counted
    jobs = list((out / "transfer").rglob("predictions.csv"))
    assert len(jobs) == 6  # 3 strategies x 2 fractions, each exactly once
    assert all(p.stat().st_mtime == t for p, t in first.items())  # finished jobs were not redone
    assert not list(out.rglob("*.tmp.csv"))


@pytest.mark.real_data
def test_quick_profile_on_real_data(data_root, tmp_path):
    html = run_pipeline(REPO / "pipelines" / "mri2d_site_shift.yaml", data_root, tmp_path / "run", profile="quick")
    assert html.exists()
    preds = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert set(preds["strategy"]) == {"source_only", "dann", "coral"}
    assert set(preds["domain"]) == {"mri2d_yesno"} and len(preds[preds["split"] == "test"]) == 3 * 38


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "pipelines").glob("*.yaml")))
@pytest.mark.parametrize("profile", [None, "quick", "cpu"])
def test_shipped_pipelines_validate(name, profile):
    cfg = load_pipeline(REPO / "pipelines" / name, profile)
    assert cfg.strategies and cfg.seeds


def test_jobs_share_decoded_datasets_and_reuse_does_not_change_augmentation(tiny, make_config):
    from medtl.pipeline.config import load_pipeline
    from medtl.data.datasets import make_loader
    from medtl.pipeline.context import Context, dataset

    path = make_config(tiny)
    cfg = load_pipeline(path)
    ctx = Context(cfg, path, tiny / "data", tiny / "memo", None)
    target = ctx.load(cfg.target, "target", cfg.tasks[0]).select(split="train")
    a = dataset(ctx, target, cfg.target, True, cfg.tasks[0])
    assert dataset(ctx, target, cfg.target, True, cfg.tasks[0]) is a  # decoded once
    assert dataset(ctx, target, cfg.target, False, cfg.tasks[0]) is not a  # the eval chain is another dataset
    hidden = type(target)([replace(r, label="unlabelled") for r in target], target.label_names)
    assert dataset(ctx, hidden, cfg.target, True, cfg.tasks[0]) is not a  # other labels, other dataset

    def first_batch(ds, seed):  # unshuffled: any difference comes from the random transforms
        return next(iter(make_loader(ds, 8, False, seed=seed)))["image"]

    fresh = first_batch(a, 3)
    assert not torch.equal(first_batch(a, 7), fresh)  # the train chain is random, and seeded per loader
    for _ in range(2):  # an earlier job drew from the shared dataset's random transforms
        first_batch(a, 7)
    assert torch.equal(first_batch(a, 3), fresh)


def test_lp_ft_fits_the_probe_to_convergence_then_fine_tunes_everything(tiny, make_config):
    # LP-FT as its authors run it: a converged probe on cached features, then all epochs fine-tune
    path = tiny / "lpft.yaml"
    path.write_text(make_config.config.replace("EPOCHS", "2").replace("[feature_extraction, full, dann]", "[lp_ft]")
                    .replace("label_fractions: [0.5, 1.0]", "label_fractions: [1.0]"))
    out = tiny / "lpft"
    run_pipeline(path, tiny / "data", out)
    job = next((out / "transfer").glob("*/frac1/lp_ft/seed0"))
    assert (job / "features" / "train.pt").exists() and (job / "features" / "val.pt").exists()
    config = json.loads((job / "config.json").read_text())
    assert config["hparams"]["lp_epochs"] == 0
    records = [json.loads(x) for x in (job / "metrics.jsonl").read_text().splitlines()]
    lr, lp_lr = config["hparams"]["lr"], config["hparams"]["lp_lr"]
    # every epoch is a fine-tuning epoch: encoder and head at lr (scaled by the schedule), never at lp_lr
    for r in records:
        encoder_lr, head_lr = r["lr"]
        assert encoder_lr == pytest.approx(head_lr) and 0 < head_lr <= lr < lp_lr


def test_stage_digests_ignore_values_left_at_their_defaults(tiny, make_config):
    """A field added to the config with a default (as train.amp and train.selector were) must not make a
    finished run folder refuse to resume: stage payloads hold only values that differ from the defaults."""
    from medtl.pipeline.runner import StageBook, _payloads

    base = load_pipeline(make_config(tiny))
    explicit = base.model_copy(update={"train": base.train.model_copy(update={"amp": "auto", "selector": "source_loss"})})
    changed = base.model_copy(update={"train": base.train.model_copy(update={"amp": "off"})})
    digest = {name: {k: StageBook.digest(v) for k, v in _payloads(cfg, tiny).items()}
              for name, cfg in (("base", base), ("explicit", explicit), ("changed", changed))}
    assert digest["base"] == digest["explicit"]
    assert digest["changed"]["transfer"] != digest["base"]["transfer"]
    assert digest["changed"]["pretrain"] == digest["base"]["pretrain"]


def test_a_run_folder_from_before_a_field_was_added_still_resumes(tiny_run, tiny, make_config, tmp_path):
    """stages.json written before train.selector existed (every value recorded, no selector): accepted while
    the new field is at its default; a recorded value that differs is still refused."""
    import shutil

    out = tiny_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    book = json.loads((old / "stages.json").read_text())
    cfg = load_pipeline(make_config(tiny))
    from medtl.pipeline.runner import _payloads

    full = _payloads(cfg, (tiny / "data").resolve(), with_defaults=True)["transfer"]
    full["train"].pop("selector")
    book["transfer"].update(payload=full, digest="0123456789abcdef")  # as an older medtl wrote it
    (old / "stages.json").write_text(json.dumps(book))
    assert run_pipeline(make_config(tiny), tiny / "data", old, redo=("report",)).exists()
    book = json.loads((old / "stages.json").read_text())
    book["transfer"]["payload"]["train"]["epochs"] = 99
    book["transfer"]["digest"] = "0123456789abcdef"
    (old / "stages.json").write_text(json.dumps(book))
    with pytest.raises(MedtlError, match="stage 'transfer'.*train"):
        run_pipeline(make_config(tiny), tiny / "data", old, redo=("report",))


def test_a_pipeline_can_pretrain_its_source_self_supervised(tiny, make_config, tmp_path):
    """pretrain.mode: moco trains the source encoder without its labels (MoCo v2) and the jobs start from it."""
    from medtl.models.checkpoint import read_checkpoint

    cfg = make_config(tiny, name="moco.yaml").read_text()
    cfg = (cfg.replace("pretrain: {epochs: 1, batch_size: 8}", "pretrain: {mode: moco, epochs: 1, batch_size: 8}")
           .replace("strategies: [feature_extraction, full, dann]", "strategies: [feature_extraction]")
           .replace("label_fractions: [0.5, 1.0]", "label_fractions: [1.0]"))
    (tiny / "moco.yaml").write_text(cfg)
    out = tmp_path / "run"
    assert run_pipeline(tiny / "moco.yaml", tiny / "data", out).exists()
    meta = read_checkpoint(out / "pretrain" / "model.pt")["meta"]
    assert meta["mode"] == "moco" and meta["model"]["head"]["kind"] == "projection"
    assert len(list((out / "transfer").rglob("predictions.csv"))) == 1


def test_a_run_folder_that_recorded_the_removed_similarity_compare_still_resumes(tiny, make_config):
    """similarity.compare (never read) was removed: a stages.json that recorded it empty still matches."""
    from medtl.pipeline.runner import _payloads, _same_but_new_defaults

    cfg = load_pipeline(make_config(tiny))
    root = (tiny / "data").resolve()
    full, minimal = _payloads(cfg, root, with_defaults=True)["similarity"], _payloads(cfg, root)["similarity"]
    old = json.loads(json.dumps(full))
    old["similarity"]["compare"] = []  # as medtl recorded every value before 2026-11-30
    assert _same_but_new_defaults(old, full, minimal)
    old["similarity"]["compare"] = ["manifests/other.csv"]
    assert not _same_but_new_defaults(old, full, minimal)


def test_manifests_built_under_their_own_roots_get_an_error_that_says_a_pipeline_reads_one_root(tiny, make_config,
                                                                                               tmp_path):
    """A review built each manifest the documented way, under its own folder (`manifest build --data-root FOLDER`):
    no --data-root could run them together, and the error only asked whether that was the folder the manifest's
    paths are relative to."""
    import shutil

    import pandas as pd

    from medtl.data.manifest import Manifest

    data = tmp_path / "data"
    for name in ("src", "tgt"):  # each image set in its own folder, its manifest's paths relative to that folder
        shutil.copytree(tiny / "data" / name, data / name)
        m = Manifest.load(tiny / "manifests" / f"{name}.csv")
        table = pd.read_csv(tiny / "manifests" / f"{name}.csv")
        table["path"] = [p.split("/", 1)[1] for p in table["path"]]
        (tmp_path / "manifests").mkdir(exist_ok=True)
        table.to_csv(tmp_path / "manifests" / f"{name}.csv", index=False)
        Manifest.load(tmp_path / "manifests" / f"{name}.csv").save(tmp_path / "manifests" / f"{name}.csv",
                                                                   data_root=data / name)
        assert len(m) == len(table)
    config = tmp_path / "p.yaml"
    config.write_text(make_config.config.replace("EPOCHS", "1"))
    for root in (data, data / "tgt"):
        with pytest.raises(MedtlError, match=r"the manifests were built under their own data roots \(src.csv \(source\)"
                                             r": .*data/src; tgt.csv \(target\): .*data/tgt\), and a pipeline reads "
                                             r"every manifest under one data root: build the manifests under one "
                                             r"folder"):
            run_pipeline(config, root, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_class_of_one_image_is_warned_about_before_the_run_trains(tiny, make_config, tmp_path, caplog):
    """A review: `manifest check` warned of a class with a single image, `medtl run` trained a 3-class model on it
    without a word (the report only said later that no test case had it)."""
    import pandas as pd

    table = pd.read_csv(tiny / "manifests" / "tgt.csv")
    table.loc[table.index[table["split"] == "train"][0], "label"] = "rare"
    (tmp_path / "manifests").mkdir()
    table.to_csv(tmp_path / "manifests" / "tgt.csv", index=False)
    table = pd.read_csv(tiny / "manifests" / "src.csv")
    table.to_csv(tmp_path / "manifests" / "src.csv", index=False)
    config = tmp_path / "p.yaml"
    config.write_text(make_config.config.replace("EPOCHS", "1"))
    with caplog.at_level("WARNING", logger="medtl.pipeline.checks"):
        run_pipeline(config, tiny / "data", tmp_path / "run", stages=("prepare",), progress=False)
    assert "task 'tumor': class(es) with a single image: 'rare'" in caplog.text
