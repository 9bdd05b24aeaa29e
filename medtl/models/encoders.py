"""Encoders: MONAI ResNet / DenseNet trunks that map an image to one pooled feature vector.

Every encoder, 2D, 3D or lifted, offers the same small interface:

- ``forward(x) -> (B, out_features)``: pooled features, no head (heads live in heads.py);
- ``out_features``, ``spatial_dims``, ``in_channels``;
- ``config``: plain dict that :func:`build_encoder` turns back into the same architecture
  (stored in checkpoints, so a model file rebuilds without code of its own);
- ``layer_groups()``: the trunk cut into ordered stages, input side first, for gradual unfreezing
  and discriminative learning rates.

Parameter names are those of torchvision / timm / MedicalNet (``conv1``, ``layer1.0.bn1``...) for
ResNets and MONAI's for DenseNet (``denselayerN.layers.norm1``), see weights.py for the mapping.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.layers.factories import Conv, Pool
from monai.networks.nets.densenet import DenseNet
from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck
from torch import nn

from medtl.errors import MedtlError, unknown
from medtl.models.lift import lift

# name: (block, layers per stage)
_RESNETS = {
    "resnet10": (ResNetBlock, [1, 1, 1, 1]),
    "resnet18": (ResNetBlock, [2, 2, 2, 2]),
    "resnet34": (ResNetBlock, [3, 4, 6, 3]),
    "resnet50": (ResNetBottleneck, [3, 4, 6, 3]),
}
# name: (init_features, growth_rate, block_config)
_DENSENETS = {"densenet121": (64, 32, (6, 12, 24, 16))}
ARCHITECTURES = tuple(_RESNETS) + tuple(_DENSENETS)


def _check_input(enc: nn.Module, x: torch.Tensor) -> None:
    # A clear message instead of a convolution shape error deep inside the network.
    if x.ndim != enc.spatial_dims + 2 or x.shape[1] != enc.in_channels:
        shape = ", ".join(["B", str(enc.in_channels)] + ["*"] * enc.spatial_dims)
        raise MedtlError(
            f"{enc.config.get('arch')} encoder ({enc.spatial_dims}D, {enc.in_channels} channel(s)) expects "
            f"input ({shape}), got {tuple(x.shape)}",
            "encoder input",
        )


def _run(enc: nn.Module, fn, x: torch.Tensor) -> torch.Tensor:
    _check_input(enc, x)
    try:
        return fn(x)
    except RuntimeError as err:
        if "smaller than kernel" in str(err) or "too small" in str(err):
            # An input too small for the network's downsampling (e.g. a thin stack into an inflated net).
            raise MedtlError(
                f"input {tuple(x.shape[2:])} is too small for {enc.config.get('arch')}'s downsampling "
                f"({err}); use larger images, or for inflated encoders depth_stride=False",
                "encoder input",
            ) from None
        raise


class ResNetEncoder(ResNet):
    """MONAI ResNet without its classifier; the stem stride is a parameter (default 2).

    ``shortcut="B"`` (1x1 conv + norm, torchvision's choice) or ``"A"`` (pool + zero channels,
    MedicalNet's ResNet-18/34). Downsampling convs carry no bias, as in torchvision and MedicalNet.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        spatial_dims: int = 2,
        in_channels: int = 1,
        stem_stride: int = 2,
        shortcut: str = "B",
        no_max_pool: bool = False,
    ):
        block, layers = _RESNETS[arch]
        if shortcut not in ("A", "B"):
            raise MedtlError(f"shortcut must be 'A' or 'B', got {shortcut!r}", "encoder.shortcut")
        super().__init__(
            block,
            layers,
            [64, 128, 256, 512],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=stem_stride,
            no_max_pool=no_max_pool,
            shortcut_type=shortcut,
            feed_forward=False,
            bias_downsample=False,
        )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_features = 512 * block.expansion
        self.config: dict[str, Any] = {
            "arch": arch,
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "stem_stride": stem_stride,
            "shortcut": shortcut,
            "no_max_pool": no_max_pool,
        }

    stem_key = "conv1.weight"

    def layer_groups(self) -> list[nn.Module]:
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self, super().forward, x)


class DenseNetEncoder(DenseNet):
    """MONAI DenseNet without its classifier: features -> ReLU -> global average pool."""

    def __init__(self, arch: str = "densenet121", spatial_dims: int = 2, in_channels: int = 1, stem_stride: int = 2):
        init, growth, blocks = _DENSENETS[arch]
        super().__init__(spatial_dims, in_channels, 1, init_features=init, growth_rate=growth, block_config=blocks)
        del self.class_layers  # the head lives elsewhere
        if stem_stride != 2:
            conv0 = Conv[Conv.CONV, spatial_dims](in_channels, init, kernel_size=7, stride=stem_stride, padding=3, bias=False)
            nn.init.kaiming_normal_(conv0.weight)
            self.features.conv0 = conv0
        self.pool = nn.Sequential(nn.ReLU(), Pool[Pool.ADAPTIVEAVG, spatial_dims](1), nn.Flatten(1))
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_features = self.features.norm5.num_features
        self.config = {"arch": arch, "spatial_dims": spatial_dims, "in_channels": in_channels, "stem_stride": stem_stride}

    stem_key = "features.conv0.weight"

    def layer_groups(self) -> list[nn.Module]:
        f = self.features
        return [
            nn.ModuleList([f.conv0, f.norm0]),
            nn.ModuleList([f.denseblock1, f.transition1]),
            nn.ModuleList([f.denseblock2, f.transition2]),
            nn.ModuleList([f.denseblock3, f.transition3]),
            nn.ModuleList([f.denseblock4, f.norm5]),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self, lambda t: self.pool(self.features(t)), x)


def check_arch(arch: str) -> None:
    """Refuse an encoder name medtl does not build (with the name it most likely meant)."""
    if arch not in ARCHITECTURES:
        raise unknown("encoder", arch, ARCHITECTURES, "encoder.arch")


def build_encoder(
    arch: str | dict[str, Any] = "resnet18", spatial_dims: int = 2, in_channels: int = 1, stem_stride: int = 2, **options
) -> nn.Module:
    """An encoder by name, or rebuilt from a ``config`` dict (which may carry a ``lift``).

    >>> enc = build_encoder("resnet18", spatial_dims=3)   # (B, 1, D, H, W) -> (B, 512)
    """
    if isinstance(arch, dict):
        config = dict(arch)
        lift_cfg = config.pop("lift", None)
        enc = build_encoder(**config)
        if lift_cfg:
            enc = lift(enc, **lift_cfg)
        return enc
    check_arch(arch)
    if spatial_dims not in (2, 3):
        raise MedtlError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}", "encoder.spatial_dims")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise MedtlError(f"in_channels must be a positive integer, got {in_channels!r}", "encoder.in_channels")
    if not isinstance(stem_stride, int) or stem_stride < 1:
        raise MedtlError(f"stem_stride must be a positive integer, got {stem_stride!r}", "encoder.stem_stride")
    try:
        if arch in _RESNETS:
            return ResNetEncoder(arch, spatial_dims, in_channels, stem_stride, **options)
        return DenseNetEncoder(arch, spatial_dims, in_channels, stem_stride, **options)
    except TypeError as err:  # an option this architecture does not take
        raise MedtlError(f"bad option for {arch}: {err}", "encoder") from None

