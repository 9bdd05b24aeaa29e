"""The Predictor interface and the checkpoint adapter."""

import pytest
import torch

from medtl.deploy.model import Predictor, load_model
from medtl.errors import MedtlError


def test_checkpoint_becomes_a_predictor(model_2d):
    p = load_model(model_2d, device="cpu")
    assert p.label_names == ["no_finding", "pneumonia"]
    assert p.preprocess == {"preset": "cxr", "image_size": 32, "clahe": False}
    assert p.preset == "cxr" and p.preset_options == {"image_size": 32, "clahe": False}
    assert p.spatial_dims == 2 and p.threshold == 0.5
    assert p.name == "medtl-resnet10-cxr" and p.version == p.digest[:12] and len(p.digest) == 64
    probs = p.predict(torch.randn(3, 1, 32, 32))
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(1), torch.ones(3))
    assert load_model(model_2d, device="cpu", threshold=0.9).threshold == 0.9


def test_a_binary_checkpoint_without_a_threshold_is_said(model_2d, caplog):
    # medtl train's best.pt has none (its model.pt has the validation-chosen one): 0.5 must not pass silently
    load_model(model_2d, device="cpu")
    assert "records no decision threshold, so decisions (and SRs) use 0.5" in caplog.text
    caplog.clear()
    load_model(model_2d, device="cpu", threshold=0.3)
    assert "records no decision threshold" not in caplog.text


def test_decide_uses_the_threshold_for_binary_and_argmax_otherwise():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    common = {"preprocess": {"preset": "mri2d", "image_size": 8}, "device": "cpu"}
    binary = Predictor.from_module(net, label_names=["no", "yes"], threshold=0.8, **common)
    assert binary.decide([0.25, 0.75]) == "no" and binary.decide([0.1, 0.9]) == "yes"
    multi = Predictor.from_module(net, label_names=["a", "b", "c"], **common)
    assert multi.threshold is None and multi.decide([0.2, 0.5, 0.3]) == "b"
    with pytest.raises(MedtlError, match="expected \\(B, 2\\)"):
        binary.predict(torch.randn(2, 1, 8, 8))  # the module gives 3 outputs for 2 labels


def test_refuses_what_it_cannot_run(tmp_path):
    from medtl.models import Head, Model, build_encoder, save_checkpoint

    from medtl.models.autoencoder import VAEHead

    enc = build_encoder("resnet10", spatial_dims=2)
    vae = save_checkpoint(tmp_path / "vae.pt", Model(enc, VAEHead(enc.out_features, 32, 2, 1, 8)),
                          intensity={"preset": "mri2d", "image_size": 32}, label_names=None)
    with pytest.raises(MedtlError, match="needs a classifier .* or a regression head"):
        load_model(vae)
    # a regression model predicts values named after its task, in the head's (original) units
    age = save_checkpoint(tmp_path / "age.pt", Model(enc, Head(enc.out_features, "regression", target_mean=50.0,
                                                              target_std=10.0)),
                          intensity={"preset": "mri2d", "image_size": 32}, label_names=None, task_name="age")
    predictor = load_model(age)
    assert predictor.is_regression and predictor.label_names == ["age"] and predictor.threshold is None
    assert predictor.predict(torch.zeros(2, 1, 32, 32)).shape == (2, 1)
    unlabelled = save_checkpoint(tmp_path / "nolabels.pt", Model(enc, Head(enc.out_features, "binary")),
                                 intensity={"preset": "mri2d", "image_size": 32})
    with pytest.raises(MedtlError, match="label_names"):
        load_model(unlabelled)
    with pytest.raises(MedtlError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_a_model_trained_in_python_goes_to_predict(tmp_path, one_torch_thread):
    """fit stores its train set's label names and preprocessing in best.pt, so medtl predict loads it; a
    checkpoint without them is refused with both names and how to add them."""
    import numpy as np
    from PIL import Image

    from medtl.data import Manifest, ManifestRow, build_dataset
    from medtl.data.datasets import make_loader
    from medtl.engine import fit
    from medtl.models import Head, Model, build_encoder, save_checkpoint
    from medtl.strategies.registry import get_strategy

    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(ManifestRow(f"{i}.png", ("no", "yes")[i % 2], str(i), "d", "train", "mri2d"))
    ds = build_dataset(Manifest(rows, ["no", "yes"]), tmp_path, image_size=32)
    enc = build_encoder("resnet10", spatial_dims=2)
    strategy = get_strategy("full")(enc, Head(enc.out_features, "binary"), {"lr": 1e-3})
    fit(strategy, make_loader(ds, 4, True, 0), run_dir=tmp_path / "run", epochs=1, progress=False)
    predictor = load_model(tmp_path / "run" / "best.pt")
    assert predictor.label_names == ["no", "yes"] and predictor.preprocess == ds.deployment["intensity"]
    bare = save_checkpoint(tmp_path / "bare.pt", Model(enc, Head(enc.out_features, "binary")))
    with pytest.raises(MedtlError, match=r"does not record label_names .* and intensity .*checkpoint_meta=target_ds"
                                         r"\.deployment.*update_checkpoint_meta\(path, \*\*dataset\.deployment\)"):
        load_model(bare)
