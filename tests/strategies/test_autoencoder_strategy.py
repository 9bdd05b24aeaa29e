import pytest
import torch

from medtl.errors import MedtlError
from medtl.models import Head, VAEHead, build_encoder
from medtl.strategies.autoencoder import AutoencoderStrategy


def test_autoencoder_strategy_loss_and_validation():
    enc = build_encoder("resnet10")
    s = AutoencoderStrategy(enc, VAEHead(512, 32, latent_dim=8), {"kl_weight": 0.1})
    batch = {"image": torch.randn(2, 1, 32, 32)}
    loss, parts = s.training_loss(batch, None, 0.0)
    assert loss.item() == pytest.approx(parts["recon"] + 0.1 * parts["kl"], rel=1e-5)
    s.eval()
    val, logits = s.validation_step(batch)
    assert logits is None and val.item() > 0
    with pytest.raises(MedtlError, match="VAEHead"):
        AutoencoderStrategy(enc, Head(512))
