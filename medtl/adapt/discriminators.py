"""Domain discriminators: on pooled feature vectors (any dimension) or on 2D/3D feature maps.

The vector discriminator is dimension-free. The map discriminator is built with MONAI's layer
factory (``Conv[Conv.CONV, spatial_dims]``) so the same class serves 2D, 2.5D (2D maps) and 3D
encoders; it outputs one logit per location, or one per image with ``pooled=True``.
"""

from __future__ import annotations

from monai.networks.layers.factories import Conv, Pool
from torch import nn

from medtl.errors import MedtlError


class DomainDiscriminator(nn.Sequential):
    """MLP ``(B, in_features) -> (B, 1)`` domain logit (source = 1, target = 0)."""

    def __init__(self, in_features: int, hidden: int = 1024, num_layers: int = 2, dropout: float = 0.5):
        if in_features < 1 or hidden < 1 or num_layers < 1:
            raise MedtlError(
                f"discriminator needs positive sizes, got in_features={in_features}, hidden={hidden}, "
                f"num_layers={num_layers}",
                "discriminator",
            )
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)
        self.in_features = in_features


class ConvDomainDiscriminator(nn.Module):
    """Fully convolutional discriminator on ``(B, C, *spatial)`` feature maps, ``spatial_dims`` 2 or 3.

    Output: ``(B, 1, *spatial')`` per-location logits (each location judged on its receptive field),
    or ``(B, 1)`` with ``pooled=True`` (adaptive average pooling over space).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, hidden: int = 64, num_layers: int = 2, pooled: bool = False
    ):
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise MedtlError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}", "discriminator")
        if in_channels < 1 or hidden < 1 or num_layers < 1:
            raise MedtlError("discriminator needs positive channel counts and layers", "discriminator")
        conv = Conv[Conv.CONV, spatial_dims]
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(num_layers):
            layers += [conv(width, hidden, kernel_size=3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            width = hidden
        layers.append(conv(width, 1, kernel_size=1))
        self.body = nn.Sequential(*layers)
        self.spatial_dims = spatial_dims
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1) if pooled else None

    def forward(self, x):
        if x.dim() != self.spatial_dims + 2:
            raise MedtlError(
                f"expected a (B, C, {'*spatial' if self.spatial_dims > 1 else 'L'}) map with "
                f"{self.spatial_dims} spatial dims, got shape {tuple(x.shape)}",
                "discriminator",
            )
        out = self.body(x)
        return out if self.pool is None else self.pool(out).flatten(1)
