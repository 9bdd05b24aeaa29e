import pytest
import torch

from medtl.errors import MedtlError
from medtl.models import Decoder, VAEHead, build_encoder, vae_loss


@pytest.mark.parametrize("dims, size", [(2, 32), (2, 48), (3, (16, 16, 8))])
def test_decoder_reconstructs_the_image_size(dims, size):
    dec = Decoder(8, size, dims)
    out = dec(torch.randn(2, 8))
    expected = (size,) * dims if isinstance(size, int) else size
    assert out.shape == (2, 1, *expected)


def test_vae_loss_terms():
    x = torch.randn(3, 1, 8, 8)
    mu, logvar = torch.zeros(3, 4), torch.zeros(3, 4)
    loss, parts = vae_loss(x, x.clone(), mu, logvar, kl_weight=1.0)
    assert loss.item() == 0 and parts == {"recon": 0.0, "kl": 0.0}  # perfect reconstruction, latent = prior
    mu = torch.ones(3, 4)
    recon = x + 1
    loss, parts = vae_loss(x, recon, mu, logvar, kl_weight=0.5)
    assert parts["recon"] == pytest.approx(1.0) and parts["kl"] == pytest.approx(2.0)  # 0.5 * sum(mu^2) over 4 dims
    assert loss.item() == pytest.approx(1.0 + 0.5 * 2.0)
    with pytest.raises(MedtlError, match="image_size"):
        vae_loss(x, torch.zeros(3, 1, 4, 4), mu, logvar, 1.0)


def test_vae_head_samples_in_training_and_uses_the_mean_in_eval():
    enc = build_encoder("resnet10")
    head = VAEHead(enc.out_features, 32, latent_dim=8)
    x = torch.randn(2, 1, 32, 32)
    recon, mu, logvar = head(enc(x))
    assert recon.shape == x.shape and mu.shape == logvar.shape == (2, 8)
    loss, _ = vae_loss(x, recon, mu, logvar, 1e-3)
    loss.backward()
    assert enc.conv1.weight.grad is not None  # the encoder learns from the reconstruction
    enc.eval(), head.eval()
    with torch.no_grad():
        torch.testing.assert_close(head(enc(x))[0], head(enc(x))[0])
