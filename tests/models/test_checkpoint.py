import pytest
import torch

from medtl import __version__
from medtl.errors import MedtlError
from medtl.models import Head, Model, VAEHead, build_encoder, lift, load_checkpoint, read_checkpoint, save_checkpoint
from medtl.models.formats import CHECKPOINT_FORMAT


def _meta():
    return dict(image_size=32, intensity={"preset": "cxr", "image_size": 32, "clahe": False},
                label_names=["no_finding", "pneumonia"], manifest_hash="abc123", metrics={"val_auroc": 0.75},
                seed=7)


def test_checkpoint_is_plain_and_complete(tmp_path):
    model = Model(build_encoder("resnet10"), Head(512, "binary"))
    path = save_checkpoint(tmp_path / "model.pt", model, **_meta())
    raw = torch.load(path, weights_only=True)  # the whole file, no pickled code
    assert raw["format"] == CHECKPOINT_FORMAT and raw["format_version"] == 1
    meta = raw["meta"]
    for key in ("architecture", "in_channels", "image_size", "intensity", "label_names", "manifest_hash", "metrics",
                "medtl_version", "seed", "model", "task"):
        assert key in meta, key
    assert meta["architecture"] == "resnet10" and meta["in_channels"] == 1 and meta["image_size"] == [32, 32]
    assert meta["medtl_version"] == __version__ and meta["seed"] == 7 and meta["task"] == "binary"
    assert all(k.startswith(("encoder.", "head.")) for k in raw["state_dict"])


def test_metadata_becomes_plain_values(tmp_path):
    import numpy as np

    from medtl.plain import plain

    assert plain({"a": np.int64(3), "b": torch.tensor(0.5), "c": (1, 2), "d": float("nan")}) == {
        "a": 3, "b": 0.5, "c": [1, 2], "d": None}
    assert isinstance(plain(np.int64(3)), int)


@pytest.mark.parametrize("lift_method", [None, "acs", "2.5d"])
def test_load_checkpoint_rebuilds_the_same_model(tmp_path, lift_method):
    enc = build_encoder("resnet10")
    if lift_method:
        enc = lift(enc, lift_method, **({"aggregate": "attention"} if lift_method == "2.5d" else {}))
    model = Model(enc, Head(512, "multiclass", 3)).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, **_meta())
    again, meta = load_checkpoint(path)
    x = torch.randn(2, 1, 8, 16, 16) if lift_method else torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    assert meta["label_names"] == ["no_finding", "pneumonia"]


def test_vae_checkpoint_round_trip(tmp_path):
    enc = build_encoder("resnet10")
    model = Model(enc, VAEHead(512, 32, 2, 1, latent_dim=8)).eval()
    path = save_checkpoint(tmp_path / "ae.pt", model, image_size=32)
    again, meta = load_checkpoint(path)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], model(x)[0])
    assert meta["model"]["head"]["kind"] == "vae"


def test_bad_checkpoints(tmp_path):
    model = Model(build_encoder("resnet10"), Head(512))
    with pytest.raises(MedtlError, match="plain values"):
        save_checkpoint(tmp_path / "x.pt", model, intensity={"fn": object()})
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(MedtlError, match="not a medtl checkpoint"):
        read_checkpoint(tmp_path / "plain.pt")
    path = save_checkpoint(tmp_path / "new.pt", model)
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, path)
    with pytest.raises(MedtlError, match="newer"):
        load_checkpoint(path)


def test_a_model_config_far_larger_than_any_medtl_model_is_refused_before_building(tmp_path):
    """A security review: a 2 KB checkpoint declaring 3e9 classes (or 5e7 input channels) asked for terabytes while
    building the model, before any weight was checked ('internal error ... can't allocate memory')."""
    import copy

    from medtl.models.checkpoint import MAX_PARAMETERS, build_model, model_config

    encoder = build_encoder("resnet10")
    config = model_config(Model(encoder, Head(encoder.out_features, "multiclass", 3)))
    assert sum(p.numel() for p in build_model(config).parameters()) < MAX_PARAMETERS
    for part, key, value in (("head", "num_classes", 3_000_000_000), ("encoder", "in_channels", 50_000_000)):
        hostile = copy.deepcopy(config)
        hostile[part][key] = value
        with pytest.raises(MedtlError, match="declares .* parameters, more than 1,000,000,000"):
            build_model(hostile)
    # a VAE head is sized too (its decoder once read a tensor's value while built, which the meta device cannot)
    vae = {"encoder": config["encoder"], "head": {"kind": "vae", "in_features": 512, "image_size": [63, 63],
                                                  "spatial_dims": 2, "out_channels": 1, "latent_dim": 100_000}}
    with pytest.raises(MedtlError, match="declares .* parameters"):
        build_model(vae)
