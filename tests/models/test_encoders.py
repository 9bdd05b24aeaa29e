import pytest
import torch

from medtl.errors import MedtlError
from medtl.models import ARCHITECTURES, build_encoder, layer_groups


@pytest.mark.parametrize("arch, width", [("resnet10", 512), ("resnet18", 512), ("resnet34", 512),
                                         ("resnet50", 2048), ("densenet121", 1024)])
def test_2d_encoders_give_pooled_features(arch, width):
    enc = build_encoder(arch, spatial_dims=2, in_channels=1).eval()
    with torch.no_grad():
        f = enc(torch.randn(2, 1, 32, 32))
    assert f.shape == (2, width) and enc.out_features == width
    assert enc.spatial_dims == 2 and enc.in_channels == 1
    assert not any(k.startswith(("fc.", "class_layers.")) for k in enc.state_dict())  # no head inside


@pytest.mark.parametrize("arch", ["resnet10", "densenet121"])
def test_3d_encoders(arch):
    enc = build_encoder(arch, spatial_dims=3).eval()
    with torch.no_grad():
        f = enc(torch.randn(1, 1, 32, 32, 32))
    assert f.shape == (1, enc.out_features)


def test_stem_stride_is_configurable_and_defaults_to_2():
    assert build_encoder("resnet18").conv1.stride == (2, 2)
    assert build_encoder("resnet18", stem_stride=1).conv1.stride == (1, 1)
    assert build_encoder("densenet121").features.conv0.stride == (2, 2)
    assert build_encoder("densenet121", stem_stride=1).features.conv0.stride == (1, 1)


def test_config_rebuilds_the_same_architecture():
    for arch in ARCHITECTURES:
        enc = build_encoder(arch, spatial_dims=2, in_channels=3, stem_stride=1)
        again = build_encoder(enc.config)
        assert {k: v.shape for k, v in enc.state_dict().items()} == {k: v.shape for k, v in again.state_dict().items()}
        assert again.config == enc.config


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_layer_groups_cover_every_parameter_once(arch):
    enc = build_encoder(arch)
    ids = [id(p) for g in layer_groups(enc) for p in g.parameters()]
    assert len(ids) == len(set(ids)) == len(list(enc.parameters()))
    assert len(layer_groups(enc)) == 5


def test_bad_encoder_requests_are_medtl_errors():
    with pytest.raises(MedtlError, match="unknown encoder"):
        build_encoder("vgg16")
    with pytest.raises(MedtlError, match="spatial_dims"):
        build_encoder("resnet18", spatial_dims=4)
    with pytest.raises(MedtlError, match="in_channels"):
        build_encoder("resnet18", in_channels=0)
    with pytest.raises(MedtlError, match="bad option"):
        build_encoder("densenet121", shortcut="A")
    enc = build_encoder("resnet10")
    with pytest.raises(MedtlError, match="expects input"):
        enc(torch.randn(1, 1, 8, 16, 16))  # a volume into a 2D encoder
    with pytest.raises(MedtlError, match="expects input"):
        enc(torch.randn(1, 3, 16, 16))  # RGB into a grey encoder
