"""Named initialisations (``sources``), per-fraction seeds, step budgets and scarce validation sets."""

import json
import math

import pandas as pd
import pytest
import torch

from medtl.errors import MedtlError
from medtl.pipeline import run_pipeline
from medtl.pipeline.config import load_pipeline
from medtl.pipeline.context import Context
from medtl.pipeline.jobs import _budget, _validation_rows

SOURCES = """\
sources:
  tgt_ssl:
    data: [{manifest: manifests/tgt.csv, splits: [train], max_rows: 6}]
    pretrain: {mode: moco, epochs: 1, batch_size: 4}
"""


def _write(tiny, name, text):
    path = tiny / name
    path.write_text(text)
    return path


def _study(make_config):
    return (make_config.config.replace("EPOCHS", "1")
            .replace("strategies: [feature_extraction, full, dann]",
                     "strategies: [scratch, {name: full, source: tgt_ssl, label: ft_tgt_ssl}]\n" + SOURCES
                     + "seeds_per_fraction: {1.0: 1}")
            .replace("seeds: [0]", "seeds: [0, 1]")
            .replace("patience: null", "patience: null, min_steps: 6, val_fraction: same"))


def test_named_source_is_pretrained_and_used_with_fewer_seeds_at_full_labels(tiny, make_config):
    path = _write(tiny, "sources.yaml", _study(make_config))
    out = tiny / "sources_run"
    run_pipeline(path, tiny / "data", out, progress=False)
    model = out / "pretrain" / "sources" / "tgt_ssl" / "model.pt"
    assert model.exists() and (out / "pretrain" / "model.pt").exists()
    meta = torch.load(model, weights_only=True)["meta"]
    assert meta["mode"] == "moco" and meta["ssl_data"][0]["items"] == 6  # max_rows of the train split
    preds = pd.read_csv(out / "predictions.csv")
    runs = preds.groupby(["strategy", "label_fraction"])["seed"].unique()
    assert sorted(runs[("ft_tgt_ssl", 0.5)]) == [0, 1] and sorted(runs[("ft_tgt_ssl", 1.0)]) == [0]
    sim = json.loads((out / "similarity" / "similarity.json").read_text())
    assert set(sim) == {"tgt_ssl"}  # the encoders the strategies start from: no random or unused one measured
    rec = json.loads((out / "similarity" / "recommendation.json").read_text())
    assert {r["key"].split("/")[1] for r in rec["ranking"]} == {"random_init", "tgt_ssl"}
    scratch = next(r for r in rec["ranking"] if r["key"].split("/")[1] == "random_init")
    assert scratch["scores"].keys() <= {"strategy_prior"}  # no random-feature distance speaks for training from scratch
    assert any("using nothing of the source" in reason for reason in scratch["reasons"])


def test_job_starts_from_its_source(tiny, make_config, monkeypatch):
    import medtl.pipeline.context as C

    seen = []
    real = C.encoder_for
    monkeypatch.setattr(C, "encoder_for", lambda ckpt, *a, **k: seen.append(ckpt) or real(ckpt, *a, **k))
    path = _write(tiny, "sources2.yaml", _study(make_config).replace("label_fractions: [0.5, 1.0]",
                                                                      "label_fractions: [1.0]"))
    cfg = load_pipeline(path)
    ctx = Context(cfg, path, tiny / "data", tiny / "sources_run", None)
    C.start_encoder(ctx, 2, cfg.strategies[1])
    C.start_encoder(ctx, 2, cfg.strategies[0])
    # the named source's encoder; scratch is given the default one and re-initialises it itself
    assert seen == [tiny / "sources_run" / "pretrain" / "sources" / "tgt_ssl" / "model.pt",
                    tiny / "sources_run" / "pretrain" / "model.pt"]


def test_budget_stretches_epochs_and_patience_to_the_step_minimum(tiny, make_config):
    cfg = load_pipeline(_write(tiny, "b.yaml", make_config.config.replace("EPOCHS", "4")
                               .replace("patience: null", "patience: 2, min_steps: 100"))).train
    assert _budget(cfg, 8) == (100, 50)  # one step an epoch: 100 epochs, patience scaled alike
    assert _budget(cfg, 800) == (4, 2)  # 100 steps an epoch: the epochs already give the minimum
    assert _budget(cfg, 80) == (10, 5)
    cfg.min_steps = None
    assert _budget(cfg, 8) == (4, 2)


def test_scarce_validation_takes_the_label_fraction_per_class(tiny, make_config):
    cfg = load_pipeline(make_config(tiny))
    ctx = Context(cfg, tiny / "p.yaml", tiny / "data", tiny / "val_run", None)
    task = cfg.tasks[0]
    target = ctx.load(cfg.target, "target", task)
    val = target.select(split="val")
    assert len(_validation_rows(target, 0.5, 0, "all", task)) == len(val)
    assert len(_validation_rows(target, 1.0, 0, "same", task)) == len(val)
    part = _validation_rows(target, 0.5, 0, "same", task)
    for label in {r.label for r in val}:
        n = sum(r.label == label for r in val)
        assert sum(r.label == label for r in part) == max(1, math.ceil(0.5 * n))
    assert _validation_rows(target, 0.5, 0, "same", task).rows == part.rows  # the seed fixes it


@pytest.mark.parametrize("bad, why", [
    ("{name: full, source: nowhere}", "not among sources"),
    ("{name: full, source: tgt_ssl, pretrained: false}", "contradict"),
])
def test_source_references_are_checked_when_the_config_loads(tiny, make_config, bad, why):
    text = make_config.config.replace("EPOCHS", "1").replace(
        "strategies: [feature_extraction, full, dann]", f"strategies: [{bad}]\n" + SOURCES)
    with pytest.raises(MedtlError, match=why):
        load_pipeline(_write(tiny, "bad.yaml", text))


def test_pretraining_on_the_targets_held_out_images_is_refused_whatever_the_manifest_is_called(tiny, make_config,
                                                                                             tmp_path):
    """The check compared manifest file names: another manifest of the same images split apart differently (the
    repository's mri2d_tumor4_minus_yesno holds 334 of mri2d_tumor4's test images in its train split) passed, while
    two unrelated manifests both called manifest.csv (as `medtl manifest build --out FOLDER` names them) were
    refused. It compares image paths now, when the source's rows are read."""
    manifests = tiny / "manifests"
    target = pd.read_csv(manifests / "tgt.csv")
    resplit = target.assign(split="train")  # every target image, its test and val ones included, as "train"
    resplit.to_csv(manifests / "tgt_resplit.csv", index=False)
    meta = manifests / "tgt.meta.json"
    if meta.exists():
        (manifests / "tgt_resplit.meta.json").write_text(meta.read_text())
    study = make_config.config.replace("EPOCHS", "1").replace(
        "strategies: [feature_extraction, full, dann]", "strategies: [{name: full, source: tgt_ssl}]\n" + SOURCES)
    for name, source in (("direct", "manifests/tgt.csv, splits: [train, test]"),
                         ("resplit", "manifests/tgt_resplit.csv, splits: [train]")):
        text = study.replace("manifests/tgt.csv, splits: [train], max_rows: 6", f"{source}")
        path = _write(tiny, f"leak_{name}.yaml", text)
        load_pipeline(path)  # the names say nothing: the images do
        with pytest.raises(MedtlError, match=r"images of the target's validation or test split \(e.g. ") as err:
            run_pipeline(path, tiny / "data", tmp_path / name, stages=("prepare", "pretrain"), progress=False)
        assert "sources.tgt_ssl.data[0]" in str(err.value)
        assert not (tmp_path / name).exists()  # refused before anything ran, the default pretraining included
    # the target's train split alone is fine (the documented MRI self-supervision)
    load_pipeline(_write(tiny, "leak_none.yaml", study))


def test_named_sources_are_pretrained_beside_a_given_default_checkpoint(tiny_run, tiny, make_config, tmp_path):
    """With pretrain.checkpoint the stage returned before the named sources: none was pretrained, the stage was
    recorded done, and every transfer job of a source failed on a missing file, on every rerun."""
    given = (tiny_run / "pretrain" / "model.pt").resolve()
    text = _study(make_config).replace("pretrain: {epochs: 1, batch_size: 8}", f"pretrain: {{checkpoint: {given}}}")
    out = tmp_path / "run"
    run_pipeline(_write(tiny, "given.yaml", text), tiny / "data", out, stages=("prepare", "pretrain"), progress=False)
    trained = out / "pretrain" / "sources" / "tgt_ssl" / "model.pt"
    assert (out / "pretrain" / "model.pt").read_bytes() == given.read_bytes()
    assert torch.load(trained, weights_only=True)["meta"]["mode"] == "moco"
    # a named source's own checkpoint is copied, as the default's is
    text = text.replace("pretrain: {mode: moco, epochs: 1, batch_size: 4}",
                        f"pretrain: {{mode: moco, checkpoint: {trained}}}")
    out2 = tmp_path / "run2"
    run_pipeline(_write(tiny, "given2.yaml", text), tiny / "data", out2, stages=("prepare", "pretrain"), progress=False)
    assert (out2 / "pretrain" / "sources" / "tgt_ssl" / "model.pt").read_bytes() == trained.read_bytes()
