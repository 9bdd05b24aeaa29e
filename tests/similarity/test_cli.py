"""`medtl similarity` and `medtl recommend` (the CLI modules live in medtl/cli/)."""

import json

import numpy as np
import pytest

from medtl.cli import main


def test_similarity_from_arrays(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "s.npy", rng.normal(size=(30, 4)))
    np.savez(tmp_path / "t.npz", features=rng.normal(size=(20, 4)) + 1)
    (tmp_path / "y.txt").write_text("\n".join(["a", "b"] * 10))
    rc = main(["similarity", "--source-features", str(tmp_path / "s.npy"), "--target-features",
               str(tmp_path / "t.npz"), "--target-labels", str(tmp_path / "y.txt"), "--permutations", "10",
               "--json", str(tmp_path / "out.json")])
    assert rc == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["transferability"]["logme"] is not None and out["n_target_classes"] == 2
    assert "proxy_a_distance" in capsys.readouterr().out


def test_similarity_bad_input_is_a_clear_error(tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.zeros((5, 3)))
    np.save(tmp_path / "t.npy", np.zeros((5, 4)))
    assert main(["similarity", "--source-features", str(tmp_path / "s.npy"),
                 "--target-features", str(tmp_path / "t.npy")]) == 2
    assert "width" in capsys.readouterr().err
    assert main(["similarity"]) == 2


def test_similarity_from_images(tmp_path):
    """Synthetic PNGs -> manifests -> a tiny checkpoint's encoder -> features -> assessment."""
    from medtl.data.build import build_manifest
    from medtl.data.synthetic import write_synthetic_source
    from medtl.models import Model, build_encoder, build_head, save_checkpoint

    paths = {}
    for name, kind, shift in (("src", "cxr", 0.0), ("tgt", "mri2d", 0.8)):
        raw = write_synthetic_source(tmp_path / name, kind, 6, seed=1, shift=shift, size=32)
        m = build_manifest(raw, tmp_path, group_near_copies=False, modality=kind, domain=name)
        paths[name] = m.save(tmp_path / f"{name}.csv")
    enc = build_encoder("resnet10", spatial_dims=2)
    ckpt = save_checkpoint(tmp_path / "m.pt", Model(enc, build_head(enc.out_features, "binary")))
    rc = main(["similarity", "--checkpoint", str(ckpt), "--source-manifest", str(paths["src"]),
               "--target-manifest", str(paths["tgt"]), "--data-root", str(tmp_path), "--image-size", "32",
               "--permutations", "5", "--json", str(tmp_path / "sim.json"),
               "--save-features", str(tmp_path / "f.npz"), "--split", "all"])
    assert rc == 0
    out = json.loads((tmp_path / "sim.json").read_text())
    assert out["n_source"] == 6 and out["n_features"] == enc.out_features
    assert out["transferability"]["leep"] is not None  # the checkpoint's head gives source probabilities
    assert np.load(tmp_path / "f.npz")["target"].shape == (6, enc.out_features)
    assert "resamples" not in out  # halves of 3 images measure nothing
    # the saved file feeds the array mode with everything the image mode measured, LEEP included
    f = tmp_path / "f.npz"
    assert main(["similarity", "--source-features", f"{f}::source", "--target-features", f"{f}::target",
                 "--target-labels", f"{f}::target_labels", "--source-probs", f"{f}::source_probs",
                 "--permutations", "5", "--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["transferability"] == out["transferability"]


def test_recommend_cli(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps({"distances": {"proxy_a_distance": 0.5}, "transferability": {"logme": -0.2}}))
    (tmp_path / "c.json").write_text(json.dumps({
        "target": {"n_labelled": 10},
        "candidates": [
            {"source": "cxr", "encoder": "resnet18", "strategy": "dann", "assessment": "a.json"},
            {"source": "imagenet", "encoder": "resnet18", "strategy": "full", "scores": {"logme": -0.9, "proxy_a_distance": 1.5}},
        ],
    }))
    rc = main(["recommend", str(tmp_path / "c.json"), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["recommended"] == "cxr/resnet18/dann"
    assert "Recommended: cxr/resnet18/dann" in capsys.readouterr().out
    assert main(["recommend", str(tmp_path / "c.json"), "--weight", "logme"]) == 2
    assert main(["recommend", str(tmp_path / "missing.json")]) == 2


def test_recommend_refuses_what_it_would_silently_ignore(tmp_path, capsys):
    """A matrix or pipeline similarity.json given as one pair's assessment, a text n_labelled, misspelt score
    names: each said, instead of a ranking that rests on nothing."""
    (tmp_path / "matrix.json").write_text(json.dumps({"pretrained": {"distances": {}}, "random_init": {}}))
    cand = {"source": "cxr", "encoder": "e", "strategy": "full"}
    (tmp_path / "c.json").write_text(json.dumps({"candidates": [{**cand, "assessment": "matrix.json"}]}))
    assert main(["recommend", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert "not the similarity.json of one source-target pair" in err and "pretrained, random_init" in err
    (tmp_path / "c.json").write_text(json.dumps({"target": {"n_labelled": "50"}, "candidates": [
        {**cand, "scores": {"logme": -0.5}}]}))
    assert main(["recommend", str(tmp_path / "c.json")]) == 2
    assert "n_labelled must be a whole number, got '50'" in capsys.readouterr().err
    (tmp_path / "c.json").write_text(json.dumps({"target": {"n_labelled": 50}, "candidates": [
        {**cand, "scores": {"logMe": -0.5, "mmd": 0.3}}, {**cand, "strategy": "dann", "scores": {"logme": -0.9}}]}))
    assert main(["recommend", str(tmp_path / "c.json")]) == 0
    assert ("Scores medtl does not know are not ranked: logMe (did you mean logme?), mmd (did you mean mmd2?)."
            in capsys.readouterr().out)


def test_saved_features_feed_the_array_mode_by_name(tmp_path, capsys):
    rng = np.random.default_rng(0)
    saved = tmp_path / "features.npz"  # as medtl similarity --save-features writes a pair
    np.savez(saved, source=rng.normal(size=(30, 4)), target=rng.normal(size=(20, 4)) + 1,
             target_labels=np.array([0, 1] * 10))
    assert main(["similarity", "--source-features", str(saved), "--target-features", f"{saved}::target"]) == 2
    assert f"name one: {saved}::source" in capsys.readouterr().err
    rc = main(["similarity", "--source-features", f"{saved}::source", "--target-features", f"{saved}::target",
               "--target-labels", f"{saved}::target_labels", "--permutations", "10", "--json", str(tmp_path / "o.json")])
    assert rc == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["n_source"] == 30 and out["n_target"] == 20 and out["n_target_classes"] == 2
    assert "mmd_p_value (small = the domains differ)" in capsys.readouterr().out
    np.savez(tmp_path / "one.npz", features=np.ones((5, 4)))
    assert main(["similarity", "--source-features", f"{tmp_path / 'one.npz'}::target", "--target-features",
                 f"{saved}::target"]) == 2  # asked for by name: the file's only array is not it
    assert "no 'target'" in capsys.readouterr().err


def test_recommend_says_how_stable_its_pick_is_from_the_similarity_halves(tmp_path, capsys):
    """medtl similarity measures each pair again on 20 random halves; medtl recommend reads them as the
    pipelines do (it had given a bare 'Recommended' with no stability statement)."""
    rng = np.random.default_rng(0)
    src = rng.normal(size=(40, 4))
    tgt = rng.normal(size=(40, 4)) + 0.3
    labels = np.array([0, 1] * 20)
    near = tgt + np.outer(labels, [2.0, 0, 0, 0])  # an encoder whose features separate the target's classes
    np.savez(tmp_path / "f.npz", source=src, target=tgt, near=near, target_labels=labels)
    f = tmp_path / "f.npz"
    for name, target, seed in (("a", "target", "0"), ("b", "near", "0"), ("c", "near", "1")):
        assert main(["similarity", "--source-features", f"{f}::source", "--target-features", f"{f}::{target}",
                     "--target-labels", f"{f}::target_labels", "--permutations", "5", "--seed", seed,
                     "--out", str(tmp_path / name), "--no-progress"]) == 0
    sim = json.loads((tmp_path / "b" / "similarity.json").read_text())
    assert len(sim["resamples"]) == 20 and sim["resampling"] == {"halves": 20, "seed": 0, "n_source": 40,
                                                                 "n_target": 40}
    printed = capsys.readouterr().out
    assert "measured again on 20 random halves" in printed
    import re

    first = json.loads((tmp_path / "a" / "similarity.json").read_text())  # the first run printed first
    mmd = [d["mmd2"] for d in first["resamples"]]
    shown = re.search(r"mmd2 (\S+) \((\S+) to (\S+)\)", printed)
    assert [float(v) for v in shown.groups()] == pytest.approx(list(np.percentile(mmd, [50, 2.5, 97.5])), rel=1e-3)

    def cands(second):
        return {"target": {"n_labelled": 40}, "candidates": [
            {"source": "s", "encoder": "plain", "strategy": "full", "assessment": "a/similarity.json"},
            {"source": "s", "encoder": "sep", "strategy": "full", "assessment": f"{second}/similarity.json"}]}

    (tmp_path / "same.json").write_text(json.dumps(cands("b")))
    assert main(["recommend", str(tmp_path / "same.json"), "--out", str(tmp_path / "r")]) == 0
    record = json.loads((tmp_path / "r" / "recommendation.json").read_text())
    assert record["stability"]["resamples"] == 20 and record["recommended"] == "s/sep/full"
    assert "random halves of the images" in capsys.readouterr().out
    (tmp_path / "mixed.json").write_text(json.dumps(cands("c")))  # halves drawn with another seed
    assert main(["recommend", str(tmp_path / "mixed.json")]) == 0
    assert "No stability check: the assessments drew their halves from different images" in capsys.readouterr().out


def test_halves_are_not_mixed_with_scores_of_all_the_images(tmp_path, capsys):
    """An assessment from before the halves kept its all-image scores in every half, beside others' half-image
    scores (a half's LogME runs lower): the support of the pick moved from 98% to 100% or 90%."""
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "f.npz", source=rng.normal(size=(40, 4)), target=rng.normal(size=(40, 4)),
             target_labels=np.array([0, 1] * 20))
    f = tmp_path / "f.npz"
    assert main(["similarity", "--source-features", f"{f}::source", "--target-features", f"{f}::target",
                 "--target-labels", f"{f}::target_labels", "--permutations", "5", "--out", str(tmp_path / "new"),
                 "--no-progress"]) == 0
    old = json.loads((tmp_path / "new" / "similarity.json").read_text())
    for k in ("resamples", "resampling"):
        old.pop(k)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "similarity.json").write_text(json.dumps(old))
    (tmp_path / "c.json").write_text(json.dumps({"target": {"n_labelled": 40}, "candidates": [
        {"source": "s", "encoder": "a", "strategy": "full", "assessment": "new/similarity.json"},
        {"source": "s", "encoder": "b", "strategy": "full", "assessment": "old/similarity.json"}]}))
    capsys.readouterr()
    assert main(["recommend", str(tmp_path / "c.json"), "--out", str(tmp_path / "r")]) == 0
    assert "No stability check: s/b/full has scores of all the images but none of random halves" in \
        capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "recommendation.json").read_text())["stability"] is None
