import pytest
import torch

from medtl.engine import pretrain_on
from medtl.errors import MedtlError
from medtl.models import build_encoder, load_checkpoint, load_weights


def _items(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(1, size, size, generator=g) + (i % 2), "label": torch.tensor(i % 2),
             "case_id": f"c{i}"} for i in range(n)]


def test_supervised_pretraining_writes_a_loadable_model(tmp_path):
    result = pretrain_on(_items(6), _items(4, seed=1), tmp_path, label_names=["no_finding", "pneumonia"],
                         arch="resnet10", image_size=32, epochs=1, batch_size=4, seed=5, progress=False, device="cpu",
                         meta={"intensity": {"preset": "cxr", "image_size": 32}, "manifest_hash": "feed"})
    assert result.path == tmp_path / "model.pt"
    raw = torch.load(result.path, weights_only=True)
    meta = raw["meta"]
    assert meta["label_names"] == ["no_finding", "pneumonia"] and meta["seed"] == 5 and meta["mode"] == "supervised"
    assert meta["manifest_hash"] == "feed" and meta["image_size"] == [32, 32]
    # the record holds every option of its preset, the defaults where none was given (as the chain ran)
    assert meta["intensity"] == {"preset": "cxr", "image_size": 32, "clahe": False}
    assert "val_loss" in meta["metrics"] and meta["task"] == "binary"
    model, _ = load_checkpoint(result.path)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)
    enc = build_encoder("resnet10")  # the transfer step: the encoder part into a fresh encoder
    assert load_weights(enc, result.path).ok
    # deployable as it is: the validation-chosen threshold and the precision policy travel with it
    assert meta["precision"] == "auto" and meta["threshold_rule"]["rule"] in ("youden", "default")
    from medtl.deploy.model import load_model

    predictor = load_model(result.path)
    assert predictor.threshold == pytest.approx(meta.get("threshold", 0.5))
    probs = predictor.predict(torch.randn(3, 1, 32, 32))
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(1), torch.ones(3))


def test_a_resumed_pretraining_with_other_settings_is_refused(tmp_path):
    """Resuming continues the weights: with another image size or learning rate the model.pt would claim settings
    its weights never saw, so the run is refused, naming what differs; more epochs resume."""
    common = dict(label_names=["a", "b"], arch="resnet10", batch_size=4, seed=0, progress=False, device="cpu",
                  meta={"intensity": {"preset": "cxr"}, "manifest_hash": "feed"})
    pretrain_on(_items(6), None, tmp_path, image_size=32, epochs=1, lr=1e-3, **common)
    with pytest.raises(MedtlError, match=r"a run with other hparams, image_size \(32 there, 48 now\); use a new folder "
                                         r"\(--out"):
        pretrain_on(_items(6), None, tmp_path, image_size=48, epochs=1, lr=0.5, **common)
    with pytest.raises(MedtlError, match=r"a run with other manifest_hash"):
        pretrain_on(_items(6), None, tmp_path, image_size=32, epochs=1, lr=1e-3,
                    **{**common, "meta": {**common["meta"], "manifest_hash": "beef"}})
    more = pretrain_on(_items(6), None, tmp_path, image_size=32, epochs=2, lr=1e-3, **common)
    assert torch.load(more.path, weights_only=True)["meta"]["epochs"] == 2


def test_autoencoder_pretraining(tmp_path):
    unlabelled = [{"image": d["image"], "label": torch.tensor(0)} for d in _items(5)]
    result = pretrain_on(unlabelled, None, tmp_path, mode="autoencoder", arch="resnet10", image_size=32, epochs=1,
                         batch_size=2, latent_dim=8, kl_weight=0.01, progress=False, device="cpu")
    meta = torch.load(result.path, weights_only=True)["meta"]
    assert meta["mode"] == "autoencoder" and meta["model"]["head"]["kind"] == "vae"
    assert "train_recon" in meta["metrics"] and "train_kl" in meta["metrics"]
    assert meta["hparams"]["kl_weight"] == 0.01


def test_bad_pretraining_requests(tmp_path):
    with pytest.raises(MedtlError, match="unknown pretraining mode"):
        pretrain_on(_items(2), None, tmp_path, mode="contrastive")
    with pytest.raises(MedtlError, match="two labels"):
        pretrain_on(_items(2), None, tmp_path, label_names=["only"], epochs=1)
    with pytest.raises(MedtlError, match="no training images"):
        pretrain_on([], None, tmp_path, label_names=["a", "b"])


@pytest.mark.real_data
def test_cli_pretrain_on_real_chest_xrays(tmp_path, data_root, manifests_dir):
    from medtl.cli import main
    from medtl.data.manifest import Manifest

    full = Manifest.load(manifests_dir / "cxr_nih.csv")
    rows = []
    for split, n in (("train", 3), ("val", 2)):
        for label in full.label_names:
            rows += [r for r in full.rows if r.split == split and r.label == label][:n]
    small = Manifest(rows, full.label_names, dict(full.meta))
    small.save(tmp_path / "small.csv")
    out = tmp_path / "run"
    status = main(["pretrain", "--manifest", str(tmp_path / "small.csv"), "--data-root", str(data_root), "--out",
                   str(out), "--arch", "resnet10", "--image-size", "32", "--epochs", "1", "--batch-size", "4",
                   "--device", "cpu", "--no-progress"])
    assert status == 0
    meta = torch.load(out / "model.pt", weights_only=True)["meta"]
    assert meta["label_names"] == ["no_finding", "pneumonia"]
    assert meta["intensity"]["preset"] == "cxr" and meta["manifest_hash"] == small.content_hash()
    assert (out / "metrics.jsonl").exists()


def test_cli_pretrain_reports_bad_input(tmp_path, capsys):
    from medtl.cli import main

    assert main(["pretrain", "--manifest", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "manifest not found" in capsys.readouterr().err
