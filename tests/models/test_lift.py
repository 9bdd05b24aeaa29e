import pytest
import torch
import torch.nn.functional as F

from medtl.errors import MedtlError
from medtl.models import ACSConv, SliceEncoder, acs, build_encoder, inflate, layer_groups, lift
from medtl.models.lift import acs_split, inflate_conv


@pytest.fixture(scope="module")
def resnet2d():
    torch.manual_seed(0)
    enc = build_encoder("resnet10")
    # Non-trivial norm statistics, so eval mode is not an identity on them.
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return enc.eval()


def _constant_along(x2d: torch.Tensor, depth: int, axis: int = 0) -> torch.Tensor:
    return x2d.unsqueeze(2 + axis).repeat_interleave(depth, dim=2 + axis)


# --- I3D -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["repeat", "centre"])
@pytest.mark.parametrize("depth_stride", [True, False])
def test_i3d_on_depth_constant_volume_equals_2d_features(resnet2d, init, depth_stride):
    enc3d = inflate(resnet2d, init=init, depth_stride=depth_stride).eval()
    depth = 7 if depth_stride else 3  # odd depth: the strided layers meet the border slices
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        f2 = resnet2d(x)
        f3 = enc3d(_constant_along(x, depth))
    torch.testing.assert_close(f3, f2, rtol=1e-4, atol=1e-5)


def test_i3d_property_holds_in_train_mode_and_with_other_depth_kernel_and_axis(resnet2d):
    # Batch statistics over (B, D, H, W) of a depth-constant volume equal those over (B, H, W).
    # float64: batch norm on tiny late feature maps amplifies float32 rounding.
    enc2 = build_encoder("resnet10").double().train()
    enc3 = inflate(enc2, depth_kernel=3, depth_axis=2).train()
    assert enc3.bn1.weight.dtype == torch.float64
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        f2 = enc2(x)
        f3 = enc3(_constant_along(x, 3, axis=2))
    torch.testing.assert_close(f3, f2, rtol=1e-9, atol=1e-9)


def test_i3d_densenet_property():
    enc2 = build_encoder("densenet121").eval()
    enc3 = inflate(enc2, depth_stride=False).eval()  # transitions' 2x2 pools need no depth to shrink
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc3(_constant_along(x, 2)), enc2(x), rtol=1e-4, atol=1e-5)


def test_inflated_kernels():
    conv = torch.nn.Conv2d(2, 4, 3, padding=1)
    rep = inflate_conv(conv, depth_kernel=5, init="repeat")
    assert rep.weight.shape == (4, 2, 5, 3, 3)
    torch.testing.assert_close(rep.weight.sum(2), conv.weight)  # repeated / d sums back to the 2D kernel
    cen = inflate_conv(conv, depth_kernel=3, init="centre")
    assert torch.equal(cen.weight[:, :, 1], conv.weight) and cen.weight[:, :, [0, 2]].abs().sum() == 0
    torch.testing.assert_close(rep.bias, conv.bias)
    enc3 = inflate(build_encoder("resnet10"))
    assert enc3.conv1.weight.shape == (64, 1, 7, 7, 7) and enc3.spatial_dims == 3
    assert isinstance(enc3.bn1, torch.nn.BatchNorm3d) and isinstance(enc3.maxpool, torch.nn.MaxPool3d)


# --- ACS -----------------------------------------------------------------------------------------


def test_acs_shapes_and_weight_reuse(resnet2d):
    enc = acs(resnet2d).eval()
    with torch.no_grad():
        assert enc(torch.randn(2, 1, 8, 16, 16)).shape == (2, 512)
    # Same names and shapes as the 2D encoder: a 2D state dict loads strictly, unchanged.
    sd2 = resnet2d.state_dict()
    assert {k: v.shape for k, v in enc.state_dict().items()} == {k: v.shape for k, v in sd2.items()}
    fresh = acs(build_encoder("resnet10"))
    fresh.load_state_dict(sd2, strict=True)
    assert torch.equal(fresh.conv1.weight, resnet2d.conv1.weight)
    assert isinstance(enc.conv1, ACSConv) and enc.conv1.split == acs_split(64) == (22, 21, 21)
    assert isinstance(enc.bn1, torch.nn.BatchNorm3d) and isinstance(enc.avgpool, torch.nn.AdaptiveAvgPool3d)


def test_acs_axial_group_is_the_2d_convolution_on_each_slice():
    conv = torch.nn.Conv2d(3, 9, 3, padding=1)
    a = ACSConv.from_conv2d(conv)
    x = torch.randn(2, 3, 5, 8, 8)
    out = a(x)
    assert out.shape == (2, 9, 5, 8, 8)
    n_axial = a.split[0]
    for d in range(5):
        torch.testing.assert_close(out[:, :n_axial, d], conv(x[:, :, d])[:, :n_axial], rtol=1e-5, atol=1e-5)
    # Coronal group: the kernel acts on the (D, W) plane: check against conv2d on that plane.
    lo, hi = n_axial, n_axial + a.split[1]
    for h in range(8):
        ref = F.conv2d(x[:, :, :, h, :], conv.weight[lo:hi], conv.bias[lo:hi], padding=1)
        torch.testing.assert_close(out[:, lo:hi, :, h, :], ref, rtol=1e-5, atol=1e-5)


def test_acs_gradients_reach_every_view():
    a = ACSConv.from_conv2d(torch.nn.Conv2d(2, 6, 3, padding=1, stride=2))
    out = a(torch.randn(1, 2, 7, 9, 11))
    assert out.shape == (1, 6, 4, 5, 6)
    out.square().sum().backward()
    for lo, n in zip([0, 2, 4], a.split):
        assert a.weight.grad[lo : lo + n].abs().sum() > 0
    enc = acs(build_encoder("resnet10"))
    enc(torch.randn(2, 1, 8, 8, 8)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


# --- 2.5D ----------------------------------------------------------------------------------------


def test_slices_equal_the_2d_encoder_per_slice(resnet2d):
    enc = lift(resnet2d, "2.5d")
    vol = torch.randn(2, 1, 4, 16, 16)
    with torch.no_grad():
        per_slice = enc.slice_features(vol)
        for d in range(4):
            torch.testing.assert_close(per_slice[:, d], resnet2d(vol[:, :, d]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(enc(vol), per_slice.mean(1))
    assert enc.encoder is resnet2d  # shared weights, not a copy


def test_slice_stride_axis_and_attention():
    enc2 = build_encoder("resnet10").eval()
    enc = SliceEncoder(enc2, aggregate="attention", slice_stride=2, slice_axis=2)
    vol = torch.randn(2, 1, 16, 16, 6)
    assert enc.slice_features(vol).shape == (2, 3, 512)
    with torch.no_grad():
        torch.testing.assert_close(enc.slice_features(vol)[:, 1], enc2(vol[..., 2]), rtol=1e-5, atol=1e-5)
    out = enc(vol)
    assert out.shape == (2, 512)
    out.sum().backward()
    assert enc.pool.score[0].weight.grad is not None and enc2.conv1.weight.grad is not None
    assert any(enc.pool is m or enc.pool in list(m.modules()) for m in layer_groups(enc))


# --- by name, config, errors -----------------------------------------------------------------------


@pytest.mark.parametrize("method, options", [("i3d", {"init": "centre"}), ("acs", {}),
                                             ("2.5d", {"aggregate": "attention"})])
def test_lifted_config_rebuilds(method, options):
    enc = lift(build_encoder("resnet10"), method, **options)
    again = build_encoder(enc.config)
    assert again.config == enc.config and again.spatial_dims == 3
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in enc.state_dict().items()}


def test_lift_errors(resnet2d):
    with pytest.raises(MedtlError, match="unknown lift"):
        lift(resnet2d, "r2plus1d")
    with pytest.raises(MedtlError, match="unknown option"):
        lift(resnet2d, "acs", depth_kernel=3)
    with pytest.raises(MedtlError, match="needs a 2D encoder"):
        lift(build_encoder("resnet10", spatial_dims=3), "i3d")
    with pytest.raises(MedtlError, match="needs a 2D encoder"):
        lift(lift(resnet2d, "acs"), "2.5d")
    with pytest.raises(MedtlError, match="type-A"):
        inflate(build_encoder("resnet18", shortcut="A"), depth_stride=False)
    with pytest.raises(MedtlError, match="init"):
        inflate(resnet2d, init="zeros")
    with pytest.raises(MedtlError, match="expects"):
        lift(resnet2d, "2.5d")(torch.randn(1, 1, 16, 16))
    with pytest.raises(MedtlError, match="too small"):  # a thin stack through depth-strided 2x2 pools
        inflate(build_encoder("densenet121")).eval()(torch.randn(1, 1, 2, 32, 32))


def test_type_a_shortcut_inflates_with_depth_stride():
    enc2 = build_encoder("resnet18", shortcut="A").eval()
    enc = inflate(enc2).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(enc(_constant_along(x, 3)), enc2(x), rtol=1e-4, atol=1e-5)
