"""The concepts the pipeline runner asks for rather than re-derives: strategy attributes, the preset's
dimensionality, the one loader recipe, the transfer encoder, and one ranking for medtl run and recommend."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from medtl.cli import main
from medtl.data.datasets import make_loader
from medtl.data.manifest import Manifest, ManifestRow
from medtl.data.transforms import Preset
from medtl.errors import MedtlError
from medtl.models import encoder_for, load_checkpoint, task_for
from medtl.models.lift import SliceEncoder
from medtl.pipeline import load_pipeline, run_pipeline
from medtl.similarity.assess import flat_scores as _flat_scores
from medtl.similarity.images import compare_manifests
from medtl.strategies.registry import STRATEGIES, get_strategy

# Each strategy class's PRIOR, the recommender's rule of thumb (few labels, many labels; small gap, large gap).
# Scratch is neutral and a linear probe across a large gap is capped at 0.3: on this project's chest X-ray to
# brain MRI studies nothing beat scratch by its interval, and the chest X-ray linear probe was the weakest at 1%.
PRIORS = {
    "feature_extraction": (0.8, 0.4, None), "lp_ft": (0.9, 0.7, None), "l2sp": (0.8, 0.6, None),
    "gradual_unfreeze": (0.7, 0.7, None), "discriminative_lr": (0.7, 0.7, None), "full": (0.5, 0.8, None),
    "scratch": (0.5, 0.5, None), "joint": (None, None, (0.5, 0.6)),
    **{name: (None, None, (0.5, 0.8)) for name in ("dann", "cdan", "cdan_e", "dan", "coral", "mcc")},
}
FAR = {"feature_extraction": 0.3}  # the cap across a large gap (proxy A-distance above 1.5)


def test_every_strategy_class_carries_its_prior():
    get_strategy("full")  # fills the registry
    assert set(STRATEGIES) == set(PRIORS)
    for name, (few, many, gap) in PRIORS.items():
        cls = get_strategy(name)
        if gap is None:
            assert (cls.prior(10, 1.0), cls.prior(500, 1.0)) == (few, many), name
            far = FAR.get(name, 1.0)
            assert (cls.prior(10, 1.9), cls.prior(500, 1.9)) == (min(few, far), min(many, far)), name
            assert cls.prior(199, None) == few and cls.prior(200, None) == many, name  # FEW_LABELS = 200
        else:
            assert (cls.prior(10, 1.0), cls.prior(10, 1.9), cls.prior(500, None)) == (gap[0], gap[1], gap[0]), name


def test_strategy_classes_say_what_data_they_need_and_how_a_probe_primes_them():
    for name in ("dann", "cdan", "joint", "coral"):
        assert get_strategy(name).needs_source_labels and get_strategy(name).needs_target
    for name in ("full", "scratch", "feature_extraction", "lp_ft", "l2sp"):
        assert not get_strategy(name).needs_source_labels and not get_strategy(name).needs_target
    assert get_strategy("cdan").requires_shared_labels and not get_strategy("dann").requires_shared_labels
    assert get_strategy("feature_extraction").probe_first({"lr": 0.1}) == ("whole", {"lr": 0.1})
    # LP-FT: a converged probe replaces its linear-probe phase only when lp_epochs is left open
    assert get_strategy("lp_ft").probe_first({}) == ("then_train", {"lp_epochs": 0})
    assert get_strategy("lp_ft").probe_first({"lp_epochs": 2}) is None
    assert get_strategy("full").probe_first({}) is None and get_strategy("dann").probe_first({}) is None


def test_preset_owns_spatial_dims_and_its_options():
    assert [Preset(m).spatial_dims for m in ("cxr", "mri2d", "mri3d")] == [2, 2, 3]
    given = {"image_size": 64, "spacing": (1.0, 1.0, 1.0), "volume_shape": (8, 8, 8)}
    assert Preset("mri2d").options(given) == {"image_size": 64}
    assert Preset("mri3d").options(given) == {"spacing": (1.0, 1.0, 1.0), "volume_shape": (8, 8, 8)}
    assert Preset("cxr").defaults == {"image_size": 128, "clahe": False}
    # Every option, given over the defaults; None is the default (what the chain and a checkpoint record agree on)
    assert Preset("mri3d").resolved({"spacing": None, "volume_shape": (8, 8, 8)}) == {
        "spacing": (2.0, 2.0, 2.0), "volume_shape": (8, 8, 8), "crop": "head"}
    with pytest.raises(MedtlError, match=r"unknown option\(s\) \['image_size'\] for preset 'mri3d'"):
        Preset("mri3d").resolved({"image_size": 64})
    with pytest.raises(MedtlError, match="unknown modality preset 'ct'"):
        Preset("ct")


def test_manifest_modality_and_task_kind():
    def row(i, modality):
        return ManifestRow(f"a/{i}.png", "x", str(i), "d", "train", modality)

    assert Manifest([row(0, "mri2d"), row(1, "mri2d")], ["x"]).modality == "mri2d"
    with pytest.raises(MedtlError, match=r"mixes modalities \['cxr', 'mri2d'\]"):
        Manifest([row(0, "mri2d"), row(1, "cxr")], ["x"]).modality
    assert task_for(["a", "b"]) == "binary" and task_for(["a", "b", "c"]) == "multiclass"
    assert task_for([], regression=True) == "regression"


@pytest.mark.parametrize(("n", "batch", "train", "world", "batches"), [
    (17, 8, True, 1, [8, 8]),  # a last batch of one sample would break batch norm: dropped
    (17, 8, False, 1, [8, 8, 1]),  # evaluation sees every sample
    (18, 8, True, 1, [8, 8, 2]),  # two samples are fine
    (8, 8, True, 1, [8]),
    (5, 8, True, 1, [5]),  # never drop the only batch
    (19, 8, True, 2, [8, 8]),  # split over 2 ranks, a last batch of 3 leaves one rank a single sample
    (20, 8, True, 2, [8, 8, 4]),
])
def test_make_loader_drops_only_a_last_batch_that_leaves_a_single_sample_in_training(n, batch, train, world, batches):
    loader = make_loader(TensorDataset(torch.arange(n)), batch, train, seed=0, world_size=world)
    assert [len(b[0]) for b in loader] == batches


def test_make_loader_shuffles_by_its_own_seed_and_leaves_the_global_generator_alone():
    ds = TensorDataset(torch.arange(40))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = torch.cat([b[0] for b in make_loader(ds, 8, True, seed=5)])
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, torch.cat([b[0] for b in make_loader(ds, 8, True, seed=5)]))
    assert not torch.equal(first, torch.arange(40))
    assert torch.equal(torch.cat([b[0] for b in make_loader(ds, 8, False, seed=5)]), torch.arange(40))


@pytest.fixture(scope="module")
def similarity_run(tiny, make_config):
    """The tiny pipeline up to its similarity stage (no transfer jobs)."""
    out = tiny / "similarity_run"
    run_pipeline(make_config(tiny, name="sim.yaml"), tiny / "data", out, stages=("prepare", "pretrain", "similarity"),
                 progress=False)
    return out


def test_encoder_for_loads_the_checkpoint_and_lifts_it(similarity_run):
    ckpt = similarity_run / "pretrain" / "model.pt"
    reference = load_checkpoint(ckpt)[0].encoder.state_dict()
    enc = encoder_for(ckpt, 2, "none", arch="resnet18")  # the checkpoint's own config wins over arch
    assert enc.config["arch"] == "resnet10" and enc.spatial_dims == 2
    assert all(torch.equal(v, reference[k]) for k, v in enc.state_dict().items())
    sliced = encoder_for(ckpt, 3, "2.5d")
    assert isinstance(sliced, SliceEncoder) and sliced.slice_axis == 2 and sliced.spatial_dims == 3
    assert all(torch.equal(v, reference[k]) for k, v in sliced.encoder.state_dict().items())
    assert encoder_for(ckpt, 3, "i3d").spatial_dims == 3
    with pytest.raises(MedtlError, match="needs a lift"):
        encoder_for(ckpt, 3, "none")
    scratch = encoder_for(None, 3, None, arch="resnet10", stem_stride=1)
    assert scratch.spatial_dims == 3 and scratch.config["arch"] == "resnet10"


def test_run_measures_what_medtl_similarity_measures(similarity_run, tiny):
    ran = json.loads((similarity_run / "similarity" / "similarity.json").read_text())["pretrained"]
    direct = compare_manifests(tiny / "manifests" / "src.csv", tiny / "manifests" / "tgt.csv", tiny / "data",
                               similarity_run / "pretrain" / "model.pt", split="train", max_cases=20, progress=False)
    assert ran["datasets"]["target"]["n_cases"] == direct["datasets"]["target"]["n_cases"] == 20
    assert _flat_scores(ran) == pytest.approx(_flat_scores(direct))


def test_run_and_recommend_rank_the_same_candidates_the_same_way(similarity_run, tmp_path, capsys):
    """medtl recommend, given the run's similarity results and target, reproduces the run's ranking: one
    weight table and the strategy classes' priors, wherever the ranking is made."""
    record = json.loads((similarity_run / "similarity" / "recommendation.json").read_text())
    results = json.loads((similarity_run / "similarity" / "similarity.json").read_text())
    for name, result in results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    candidates = [{"source": r["source"], "encoder": r["encoder"], "strategy": r["strategy"],
                   "assessment": f"{r['encoder']}.json"} for r in record["ranking"]]
    (tmp_path / "candidates.json").write_text(json.dumps({"target": record["target"], "candidates": candidates}))
    assert main(["recommend", str(tmp_path / "candidates.json"), "--out", str(tmp_path / "rec")]) == 0
    capsys.readouterr()
    again = json.loads((tmp_path / "rec" / "recommendation.json").read_text())
    assert [r["key"] for r in again["ranking"]] == [r["key"] for r in record["ranking"]]
    assert [r["composite"] for r in again["ranking"]] == pytest.approx([r["composite"] for r in record["ranking"]])
    assert again["weights"] == record["weights"] and "strategy_prior" in record["weights"]
    assert record["target"]["n_labelled"] > 0 and all("strategy_prior" in r["scores"] for r in record["ranking"])


def test_weighted_make_loader_draws_the_labelled_rows_at_their_share_reproducibly():
    """Semi-supervised adaptation with 4 labelled rows among 100: at share 0.5 about half of the target draws
    are labelled (binomial: 2000 draws, 0.5 +- 0.035 at four standard errors), where shuffling gives 4%."""
    from medtl.pipeline.jobs import labelled_share_weights

    rows = [ManifestRow(f"{i}.png", "tumor" if i < 4 else "unlabelled", f"p{i}", "d", "train", "mri2d")
            for i in range(100)]
    weights = labelled_share_weights(rows, 0.5)
    assert weights[:4] == [0.125] * 4 and weights[4:] == [pytest.approx(0.5 / 96)] * 96
    assert labelled_share_weights(rows, None) is None
    assert labelled_share_weights(rows[4:], 0.5) is None and labelled_share_weights(rows[:4], 0.5) is None
    ds = TensorDataset(torch.arange(100))
    state = torch.get_rng_state()
    loader = make_loader(ds, 10, True, seed=3, weights=weights)
    draws = torch.cat([b[0] for _ in range(20) for b in loader])
    assert torch.equal(torch.get_rng_state(), state)
    assert len(draws) == 2000 and abs(float((draws < 4).float().mean()) - 0.5) < 0.035
    plain = torch.cat([b[0] for _ in range(20) for b in make_loader(ds, 10, True, seed=3)])
    assert float((plain < 4).float().mean()) == pytest.approx(0.04)
    again = make_loader(ds, 10, True, seed=3, weights=weights)
    assert torch.equal(torch.cat([b[0] for b in again]), draws[:100])  # its own seeded generator
    loader.generator.manual_seed(3)  # what the trainer does at each epoch (and on resume)
    assert torch.equal(torch.cat([b[0] for b in loader]), draws[:100])
    with pytest.raises(ValueError, match="one per item"):
        make_loader(ds, 10, True, seed=3, weights=weights[:50])


@pytest.mark.parametrize("share", ["1.0", "0", "-0.2"])
def test_labelled_target_share_outside_0_1_is_refused_naming_the_key(tiny, make_config, share):
    bad = tiny / f"share{share}.yaml"
    bad.write_text(make_config.config.replace("EPOCHS", "1").replace("device: cpu}", f"device: cpu, "
                                                                       f"labelled_target_share: {share}}}"))
    with pytest.raises(MedtlError, match="labelled_target_share"):
        load_pipeline(bad)


def test_labelled_target_share_changes_what_semi_supervised_dann_trains_on(tiny, make_config):
    """The key reaches the job: the same seed with and without it trains a different DANN model."""
    import pandas as pd

    outs = []
    for share in ("", ", labelled_target_share: 0.5"):
        cfg = tiny / f"semi{len(outs)}.yaml"
        cfg.write_text(make_config.config.replace("EPOCHS", "1").replace("device: cpu}", f"device: cpu{share}}}")
                       .replace("[feature_extraction, full, dann]", "[dann]").replace("[0.5, 1.0]", "[0.5]")
                       .replace("similarity: {max_images: 20}", "similarity: {enabled: false}"))
        out = tiny / f"semi_run{len(outs)}"
        run_pipeline(cfg, tiny / "data", out, progress=False)
        outs.append(pd.read_csv(out / "predictions.csv").sort_values(["split", "case_id"]))
    a, b = (o.filter(like="prob_").to_numpy() for o in outs)
    assert a.shape == b.shape and not np.allclose(a, b)
    # a semi-supervised job chooses its checkpoint on the target's labelled validation rows, as fine-tuning does
    # (it chose by training loss and logged no val_loss), and its val predictions are those rows (all of them
    # under the default train.val_fraction)
    log = tiny / "semi_run0" / "transfer" / "tumor" / "frac0.5" / "dann" / "seed0" / "metrics.jsonl"
    assert all("val_loss" in json.loads(line) for line in log.open())
    assert (outs[0]["split"] == "val").sum() == len(Manifest.load(tiny / "manifests" / "tgt.csv").select(split="val"))


def test_with_nothing_measured_each_budget_is_still_ranked_by_its_own_label_count(tiny, make_config, monkeypatch):
    """Scratch and a randomly initialised fine-tune: no encoder is measured, similarity.json is empty, and the
    report reused the stage's ranking (made at the full label count) for every budget, where the prior differs."""
    from medtl.strategies.base import Strategy

    monkeypatch.setattr(Strategy, "FEW_LABELS", 15)  # the tiny target's 20 training rows are 'many', 10 'few'
    cfg = tiny / "nothing_measured.yaml"
    cfg.write_text(make_config.config.replace("EPOCHS", "1").replace(
        "[feature_extraction, full, dann]", "[scratch, {name: full, pretrained: false, label: full_rand}]"))
    out = tiny / "nothing_measured_run"
    run_pipeline(cfg, tiny / "data", out, progress=False)
    assert json.loads((out / "similarity" / "similarity.json").read_text()) == {}
    assert not (out / "similarity" / "features.npz").exists()
    record = json.loads((out / "similarity" / "recommendation.json").read_text())
    assert "Nothing was measured for these options" in record["explanation"]
    by_budget = json.loads((out / "report.json").read_text())["recommendation"]["by_budget"]
    priors = [{r["key"].rsplit("/", 1)[-1]: r["composite"] for r in o["ranking"]} for o in by_budget]
    assert [o["n_labelled"] for o in by_budget] == [10, 20]
    assert priors[0]["full_rand"] == priors[0]["scratch"] and priors[1]["full_rand"] > priors[1]["scratch"]
    # an older run folder's measures (a random encoder's table, an embedding) do not outlive --redo similarity
    (out / "similarity" / "random_init.md").write_text("an earlier table\n")
    np.savez(out / "similarity" / "features.npz", features=np.zeros((4, 2)), domain=np.array(["source"] * 4))
    run_pipeline(cfg, tiny / "data", out, redo=("similarity",), progress=False)
    assert not (out / "similarity" / "random_init.md").exists() and not (out / "similarity" / "features.npz").exists()
    assert "Feature embedding" not in (out / "report.md").read_text()
