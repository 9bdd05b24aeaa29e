"""The transfer autoencoder of the spec: encoder f, decoder g, a variational latent.

    loss = ||x - g(f(x))||^2 + lambda * KL(q(z | f(x)) || N(0, I))

``f`` is any medtl encoder (so the pretrained trunk transfers like a supervised one), the latent is
Gaussian with mean and log-variance read from the pooled features, and ``g`` upsamples a latent
sample back to the image with transposed convolutions built by MONAI's factories (2D or 3D).

Scales, so that ``lambda`` means the same at every image size: the reconstruction term is the mean
squared error per pixel; the KL term is summed over latent dimensions and averaged over the batch.
"""

from __future__ import annotations

import math

from typing import Any

import torch
from monai.networks.layers.factories import Act, Conv, Norm
from torch import nn

from medtl.errors import MedtlError


def _sizes(image_size, spatial_dims: int) -> tuple[int, ...]:
    size = (image_size,) * spatial_dims if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != spatial_dims or min(size) < 1:
        raise MedtlError(f"image_size {image_size!r} does not fit {spatial_dims}D images", "autoencoder.image_size")
    return size


class Decoder(nn.Module):
    """Latent vector -> image: a linear map to a small grid, then x2 upsampling stages."""

    def __init__(self, latent_dim: int, image_size, spatial_dims: int = 2, out_channels: int = 1,
                 max_upsamplings: int = 5, width: int = 256):
        super().__init__()
        size = _sizes(image_size, spatial_dims)
        n = 0  # as many x2 stages as every side allows, up to max_upsamplings
        while n < max_upsamplings and all(s % 2 ** (n + 1) == 0 for s in size):
            n += 1
        self.start = tuple(s // 2**n for s in size)
        chans = [max(width // 2**i, 16) for i in range(n + 1)]
        self.fc = nn.Linear(latent_dim, chans[0] * math.prod(self.start))
        convt, conv = Conv[Conv.CONVTRANS, spatial_dims], Conv[Conv.CONV, spatial_dims]
        norm, act = Norm[Norm.BATCH, spatial_dims], Act[Act.RELU]
        stages = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            stages += [convt(cin, cout, kernel_size=2, stride=2), norm(cout), act(),
                       conv(cout, cout, kernel_size=3, padding=1), norm(cout), act()]
        self.up = nn.Sequential(*stages)
        self.out = conv(chans[-1], out_channels, kernel_size=1)  # no activation: images are z-scored
        self.width0 = chans[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).reshape(z.shape[0], self.width0, *self.start)
        return self.out(self.up(x))


class VAEHead(nn.Module):
    """Everything after the encoder: features -> (mu, log-variance) -> sample -> decoder."""

    def __init__(self, in_features: int, image_size, spatial_dims: int = 2, out_channels: int = 1, latent_dim: int = 128):
        super().__init__()
        self.task = "reconstruction"
        self.to_mu = nn.Linear(in_features, latent_dim)
        self.to_logvar = nn.Linear(in_features, latent_dim)
        self.decoder = Decoder(latent_dim, image_size, spatial_dims, out_channels)
        size = _sizes(image_size, spatial_dims)
        self.config: dict[str, Any] = {
            "kind": "vae",
            "in_features": int(in_features),
            "image_size": list(size),
            "spatial_dims": spatial_dims,
            "out_channels": out_channels,
            "latent_dim": latent_dim,
        }

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_mu(features), self.to_logvar(features).clamp(-20, 20)
        # Reparameterisation: a sample while training, the mean at evaluation (deterministic output).
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decoder(z), mu, logvar


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-pixel MSE + ``kl_weight`` * KL(N(mu, exp(logvar)) || N(0, I)) (summed over latent dims)."""
    if recon.shape != x.shape:
        raise MedtlError(
            f"autoencoder reconstructs {tuple(recon.shape[2:])} but images are {tuple(x.shape[2:])}: "
            "set image_size to the data's size",
            "autoencoder.image_size",
        )
    recon_loss = torch.mean((recon.float() - x.float()) ** 2)
    kl = torch.mean(-0.5 * torch.sum(1 + logvar.float() - mu.float() ** 2 - logvar.float().exp(), dim=1))
    loss = recon_loss + kl_weight * kl
    return loss, {"recon": float(recon_loss.detach()), "kl": float(kl.detach())}
