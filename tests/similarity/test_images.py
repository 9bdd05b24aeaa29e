"""Similarity on images: the issue's flags (--source/--target/--encoder/--out), the untrained default
encoder, the 2.5D view of volumes for a 2D encoder, preset options from the checkpoint, and the
matrix mode (--matrix), all on small synthetic data."""

import json

import numpy as np
import pytest
import torch

from medtl.cli import main
from medtl.errors import MedtlError
from medtl.similarity import images as sim_images
from medtl.similarity.images import (
    SMALL_OPTIONS,
    compare_manifests,
    encoder_for,
    load_encoder,
    matrix_tables,
    preset_options,
    select_cases,
    similarity_matrix,
)

SMALL_3D = ["--volume-shape", "16", "16", "16", "--spacing", "2", "2", "2"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Four tiny data sets: two chest-X-ray-like samples of one distribution, brain-MRI-like slices
    with a shift, and brain-MRI-like volumes. Returns (root, {name: manifest path})."""
    from medtl.data.build import build_manifest
    from medtl.data.synthetic import write_synthetic_source

    root = tmp_path_factory.mktemp("sim")
    paths = {}
    for name, kind, seed, shift, size in (("cxr_a", "cxr", 1, 0.0, 32), ("cxr_b", "cxr", 2, 0.0, 32),
                                          ("mri_s", "mri2d", 3, 0.8, 32), ("vol", "mri3d", 4, 0.0, 16)):
        raw = write_synthetic_source(root / name, kind, 8, seed=seed, shift=shift, size=size)
        m = build_manifest(raw, root, group_near_copies=False, modality=kind, domain=name)
        paths[name] = m.save(root / f"{name}.csv")
    return root, paths


@pytest.fixture(scope="module")
def ckpt_32(synth):
    """A 2D resnet10 checkpoint whose metadata says it was trained on 32 px cxr images."""
    from medtl.models import Model, build_encoder, build_head, save_checkpoint

    root, _ = synth
    torch.manual_seed(3)
    enc = build_encoder("resnet10", spatial_dims=2)
    return save_checkpoint(root / "m32.pt", Model(enc, build_head(enc.out_features, "binary")),
                           intensity={"preset": "cxr", "image_size": 32, "clahe": False}, manifest="cxr.csv")


# --- pieces ---------------------------------------------------------------------------------------------


def test_default_encoder_is_untrained_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    enc1, head, info = load_encoder()
    after = torch.rand(1)
    enc2, _, _ = load_encoder()
    assert torch.equal(before, after)  # the default's seed does not disturb the caller's RNG
    assert head is None and info["trained"] is False and info["checkpoint"] is None
    assert info["arch"] == "resnet10" and info["init_seed"] == 0 and "UNTRAINED" in info["description"]
    for a, b in zip(enc1.state_dict().values(), enc2.state_dict().values()):
        assert torch.equal(a, b)  # same seed, same weights


def test_preset_options_precedence():
    assert preset_options("mri2d") == SMALL_OPTIONS["mri2d"] == {"image_size": 64}
    # every option the chain uses is recorded, the crop of volumes too (its default changed on 2026-12-01)
    assert preset_options("mri3d") == {"spacing": (4.0, 4.0, 4.0), "volume_shape": (40, 48, 40), "crop": "head"}
    assert preset_options("cxr") == {"image_size": 64, "clahe": False}
    trained = {"preset": "cxr", "image_size": 96, "clahe": True}
    assert preset_options("cxr", trained) == {"image_size": 96, "clahe": True}
    assert preset_options("mri2d", trained) == {"image_size": 96}  # the size the encoder was trained at
    assert preset_options("mri3d", trained) == preset_options("mri3d")  # 2D training says nothing about 3D
    assert preset_options("mri2d", trained, {"image_size": 48, "spacing": None}) == {"image_size": 48}
    vol = {"preset": "mri3d", "spacing": [2, 2, 2], "volume_shape": [80, 96, 80]}
    assert preset_options("mri3d", vol) == {"spacing": (2, 2, 2), "volume_shape": (80, 96, 80), "crop": "head"}
    assert preset_options("mri3d", None, {"crop": "center"})["crop"] == "center"
    with pytest.raises(MedtlError):
        preset_options("ct")


def test_encoder_for_volumes_is_the_2p5d_lift_over_axial_slices():
    enc, _, _ = load_encoder()
    lifted, view = encoder_for(enc, "mri3d")
    assert view == "2.5d" and lifted.slice_axis == 2 and lifted.encoder is enc
    vol = torch.randn(2, 1, 12, 14, 5)  # (B, C, X, Y, Z): 5 axial slices
    with torch.no_grad():
        expected = torch.stack([enc(vol[..., z]) for z in range(5)], 1).mean(1)
        assert torch.allclose(lifted(vol), expected, atol=1e-5)
    assert encoder_for(enc, "cxr") == (enc, "2d")
    from medtl.models import build_encoder

    enc3d = build_encoder("resnet10", spatial_dims=3)
    assert encoder_for(enc3d, "mri3d") == (enc3d, "3d")
    with pytest.raises(MedtlError, match="cannot read the 2D images"):
        encoder_for(enc3d, "mri2d")


def test_select_cases_is_seeded_by_content_not_position(synth):
    _, paths = synth
    a, n = select_cases(paths["cxr_a"], "all", max_cases=5, seed=0)
    b, _ = select_cases(paths["cxr_a"], "all", max_cases=5, seed=0)
    c, _ = select_cases(paths["cxr_a"], "all", max_cases=5, seed=1)
    assert n == 8 and len(a) == 5 and [r.path for r in a] == [r.path for r in b]
    assert [r.path for r in a] != [r.path for r in c]
    with pytest.raises(MedtlError, match=r"no rows in split 'nope' \(splits present: test, train.*\).*--split all"):
        select_cases(paths["cxr_a"], split="nope")


def test_similarity_reads_the_training_split_unless_told_otherwise(synth):
    """LogME, H-score and LEEP read the target's labels: by default never those of its test images."""
    _, paths = synth
    train, n_train = select_cases(paths["cxr_a"])
    assert n_train == len(train) < 8 and {r.split for r in train} == {"train"}
    assert len(select_cases(paths["cxr_a"], "all")[0]) == 8
    with pytest.raises(MedtlError, match="split: must be a split name, or 'all' for every row; got None"):
        select_cases(paths["cxr_a"], None)
    import inspect

    assert inspect.signature(compare_manifests).parameters["split"].default == "train"
    assert inspect.signature(similarity_matrix).parameters["split"].default == "train"


def test_the_command_caps_images_by_default_and_says_so(synth, caplog):
    import argparse
    import logging

    from medtl.cli.similarity import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["similarity", "--source", "a.csv", "--target", "b.csv"])
    assert args.max_cases == 500 and args.split == "train"  # 0 uses every image; --split all every row
    _, paths = synth
    with caplog.at_level(logging.DEBUG, logger="medtl.similarity.images"):
        select_cases(paths["cxr_a"], "all", max_cases=5, seed=0)
    # the draw is a debug line; the user reads "N of M cases" once the features are made (dataset_features)
    assert "5 of 8 images drawn" in caplog.text


# --- source vs target: the issue's interface ---------------------------------------------------------------


def test_issue_flags_with_encoder_use_the_checkpoints_sizes_and_lift_volumes(synth, ckpt_32, capsys):
    root, paths = synth
    out = root / "pair.json"
    rc = main(["similarity", "--source", str(paths["cxr_a"]), "--target", str(paths["vol"]), "--data-root",
               str(root), "--encoder", str(ckpt_32), "--out", str(out), "--permutations", "10", "--split", "all", *SMALL_3D])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["encoder"]["trained"] is True and res["encoder"]["checkpoint"] == str(ckpt_32)
    assert res["datasets"]["source"]["preset_options"] == {"image_size": 32, "clahe": False}  # from meta
    tgt = res["datasets"]["target"]
    assert tgt["view"] == "2.5d" and tgt["preset_options"] == {"spacing": [2.0, 2.0, 2.0], "volume_shape": [16, 16, 16],
                                                                  "crop": "head"}
    assert any("2.5D lift" in n and "slice_axis=2" in n for n in res["notes"])
    assert res["n_source"] == res["n_target"] == 8 and res["n_features"] == 512
    assert res["transferability"]["leep"] is not None  # the classifier head on the (lifted) target features
    printed = capsys.readouterr().out
    assert "proxy_a_distance" in printed and f"checkpoint {ckpt_32}" in printed


def test_issue_flags_without_encoder_say_untrained(synth, capsys):
    root, paths = synth
    out = root / "pair_default.json"
    rc = main(["similarity", "--source", str(paths["cxr_a"]), "--target", str(paths["mri_s"]), "--data-root",
               str(root), "--out", str(out), "--permutations", "10", "--max-cases", "6"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["encoder"]["trained"] is False and res["encoder"]["arch"] == "resnet10"
    assert res["datasets"]["target"]["preset_options"] == {"image_size": 64}  # the small default
    assert res["n_source"] == 6 and res["transferability"]["leep"] is None
    assert "UNTRAINED" in res["notes"][0]
    assert "UNTRAINED" in capsys.readouterr().out
    api = compare_manifests(paths["cxr_a"], paths["mri_s"], root, n_permutations=10, max_cases=6)  # the same, in Python
    assert api["distances"] == pytest.approx(res["distances"])
    assert api["datasets"]["source"]["n_cases"] == 6


def test_command_refuses_unclear_modes(synth, capsys):
    root, paths = synth
    assert main(["similarity", "--source", str(paths["cxr_a"]), "--data-root", str(root)]) == 2
    assert "both --source and --target" in capsys.readouterr().err
    assert main(["similarity", "--matrix", str(paths["cxr_a"]), "--source", str(paths["cxr_b"]),
                 "--target", str(paths["mri_s"])]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert main(["similarity", "--matrix", str(paths["cxr_a"]), "--data-root", str(root)]) == 2
    assert "at least two" in capsys.readouterr().err


# --- the matrix ---------------------------------------------------------------------------------------------


def test_matrix_command(synth, monkeypatch, capsys):
    root, paths = synth
    calls = []
    real = sim_images.dataset_features
    monkeypatch.setattr(sim_images, "dataset_features", lambda *a, **k: calls.append(k["name"]) or real(*a, **k))
    names = ["cxr_a", "cxr_b", "mri_s", "vol"]
    out, md = root / "matrix.json", root / "matrix.md"
    rc = main(["similarity", "--matrix", *[str(paths[n]) for n in names], "--data-root", str(root),
               "--out", str(out), "--markdown", str(md), "--max-cases", "8", "--permutations", "20", *SMALL_3D])
    assert rc == 0
    assert calls == names  # features extracted once per data set
    res = json.loads(out.read_text())
    assert res["names"] == names and res["encoder"]["trained"] is False
    assert [d["view"] for d in res["datasets"]] == ["2d", "2d", "2d", "2.5d"]
    assert len(res["pairs"]) == 6
    for pair in res["pairs"]:  # Frechet = mean part + a covariance part >= 0
        assert 0 <= pair["frechet_mean_term"] <= pair["frechet"] + 1e-9
    assert all(d["feature_total_variance"] > 0 for d in res["datasets"])
    for metric in ("mmd2", "mmd_p_value", "proxy_a_distance", "frechet", "domain_error"):
        m = np.array(res["metrics"][metric], dtype=float)
        assert m.shape == (4, 4) and np.allclose(m, m.T) and np.all(np.isfinite(m))
    p = np.array(res["metrics"]["mmd_p_value"])
    assert np.all((p >= 1 / 21 - 1e-12) & (p <= 1))
    pad = np.array(res["metrics"]["proxy_a_distance"])
    assert np.all((pad >= 0) & (pad <= 2))
    # two samples of one distribution are closer than either is to the shifted MRI-like slices
    i = {n: k for k, n in enumerate(names)}
    for metric in ("mmd2", "frechet"):
        m = res["metrics"][metric]
        assert m[i["cxr_a"]][i["cxr_b"]] < m[i["cxr_a"]][i["mri_s"]]
        assert m[i["cxr_a"]][i["cxr_b"]] < m[i["cxr_a"]][i["vol"]]
    assert res["metrics"]["proxy_a_distance"][i["cxr_a"]][i["mri_s"]] >= 1.5  # (nearly) separable
    assert res["metrics"]["mmd_p_value"][i["cxr_a"]][i["vol"]] == pytest.approx(1 / 21)
    printed = capsys.readouterr().out
    for title in ("MMD^2", "permutation-test p-value", "proxy A-distance", "Frechet distance"):
        assert title in printed
    assert "UNTRAINED" in printed and "2.5D lift" in printed
    table_md = md.read_text()
    assert table_md.count("| | cxr_a | cxr_b | mri_s | vol |") == 4
    assert matrix_tables(res) in printed  # the JSON renders to exactly the printed tables


def test_matrix_api_with_checkpoint_and_names(synth, ckpt_32):
    root, paths = synth
    res = similarity_matrix({"A": paths["cxr_a"], "B": paths["mri_s"]}, root, ckpt_32, n_permutations=10,
                            self_reference=False, max_cases=6)
    assert res["names"] == ["A", "B"] and res["encoder"]["trained"] is True
    assert res["metrics"]["mmd2"][0][0] is None  # no split-half reference asked
    assert res["datasets"][1]["preset_options"] == {"image_size": 32}
    assert "[" not in matrix_tables(res).split("MMD^2")[1].split("\n\n")[0]
    dup = similarity_matrix([paths["cxr_a"], paths["cxr_a"]], root, n_permutations=5, max_cases=4)
    assert dup["names"] == ["cxr_a", "cxr_a_2"]
    assert dup["metrics"]["mmd2"][0][1] <= 1e-9  # the same subset twice: no distance
    assert dup["metrics"]["frechet"][0][1] == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(MedtlError, match="at least two"):
        similarity_matrix([paths["cxr_a"]], root)


def test_matrix_real_data_mixed_dimensions(data_root, manifests_dir):
    """A few real chest X-rays against a few real IXI volumes (2.5D view), untrained default encoder."""
    res = similarity_matrix([manifests_dir / "cxr_nih.csv", manifests_dir / "mri3d_ixi.csv"], data_root,
                            split="train", max_cases=4, n_permutations=10)
    assert res["names"] == ["cxr_nih", "mri3d_ixi"]
    assert [d["view"] for d in res["datasets"]] == ["2d", "2.5d"]
    assert res["datasets"][1]["preset_options"] == {"spacing": [4.0, 4.0, 4.0], "volume_shape": [40, 48, 40],
                                                    "crop": "head"}  # every option recorded, the crop too
    assert res["datasets"][0]["n_available"] == 515 and res["datasets"][1]["n_cases"] == 4
    assert res["metrics"]["proxy_a_distance"][0][1] is not None
    # the crop of the tables made before 2026-12-01 (docs/similarity.md), measured again on request
    centre = similarity_matrix([manifests_dir / "cxr_nih.csv", manifests_dir / "mri3d_ixi.csv"], data_root,
                               split="train", max_cases=4, n_permutations=10, crop="center")
    assert centre["datasets"][1]["preset_options"]["crop"] == "center"
    assert centre["metrics"]["mmd2"][0][1] != res["metrics"]["mmd2"][0][1]
