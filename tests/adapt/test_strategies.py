import pytest
import torch
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from medtl.adapt.discriminators import ConvDomainDiscriminator
from medtl.adapt.strategies import ADAPTATION_STRATEGIES, DANN
from medtl.errors import MedtlError
from medtl.strategies.registry import default_hparams, get_strategy

SMALL = {  # tiny discriminators keep the tests fast
    "dann": {"disc_hidden": 16, "disc_dropout": 0.0},
    "cdan": {"disc_hidden": 16, "disc_dropout": 0.0},
    "cdan_e": {"disc_hidden": 16, "disc_dropout": 0.0},
}
NAMES = sorted(ADAPTATION_STRATEGIES)


class TinyEncoder(nn.Module):
    def __init__(self, spatial_dims: int, width: int = 8, pooled: bool = True):
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        layers = [conv(1, width, kernel_size=3, padding=1), nn.ReLU()]
        if pooled:
            layers += [Pool[Pool.ADAPTIVEAVG, spatial_dims](1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x):
        return self.body(x)


def toy_batches(spatial_dims: int, n: int = 8, labelled_target: int = 0, seed: int = 0):
    """Two classes (bright vs dark images); the target is the source with a contrast/offset shift."""
    g = torch.Generator().manual_seed(seed)
    shape = (6,) * spatial_dims
    y_s = torch.arange(n) % 2
    x_s = torch.randn(n, 1, *shape, generator=g) * 0.5 + (2 * y_s - 1).view(-1, *[1] * (spatial_dims + 1)).float()
    y_t = torch.arange(n) % 2
    x_t = 1.5 * (torch.randn(n, 1, *shape, generator=g) * 0.5 + (2 * y_t - 1).view(-1, *[1] * (spatial_dims + 1)).float()) + 0.7
    labels_t = torch.full((n,), -1)
    labels_t[:labelled_target] = y_t[:labelled_target]
    return {"image": x_s, "label": y_s}, {"image": x_t, "label": labels_t}


def make(name: str, spatial_dims: int, **kwargs):
    torch.manual_seed(0)
    enc = TinyEncoder(spatial_dims)
    return get_strategy(name)(enc, nn.Linear(enc.out_features, 2), SMALL.get(name, {}), **kwargs)


def train(strategy, source, target, steps: int = 12):
    opt = torch.optim.Adam(strategy.param_groups(), lr=0.02)
    losses = []
    for step in range(steps):
        loss, log = strategy.training_loss(source, target, step / (steps - 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        assert log["loss"] == pytest.approx(float(loss.detach()))
    return losses


def test_registry_and_defaults():
    for name in NAMES:
        cls = get_strategy(name)
        assert cls.needs_target and cls.name == name
        assert default_hparams(name) == cls.DEFAULTS
    assert get_strategy("cdan_e").DEFAULTS["entropy_conditioning"] is True
    with pytest.raises(MedtlError, match="unknown hyper"):
        get_strategy("dann")(TinyEncoder(2), nn.Linear(8, 2), {"nope": 1})


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_strategy_backpropagates_and_loss_decreases(name, spatial_dims):
    strategy = make(name, spatial_dims)
    source, target = toy_batches(spatial_dims)
    loss, log = strategy.training_loss(source, target, 0.0)
    loss.backward()
    assert all(p.grad is not None for p in strategy.encoder.parameters())
    if name != "joint":
        assert "align" in log
    strategy.zero_grad()
    losses = train(strategy, source, target)
    assert sum(losses[-3:]) / 3 < losses[0], losses
    assert strategy(target["image"]).shape == (8, 2)


@pytest.mark.parametrize("name", ["joint", "dann", "dan", "coral", "mcc"])
def test_heterogeneous_semi_supervised(name):
    """Setting (b): source task with its own head (3 classes), target head (2 classes), few target labels."""
    torch.manual_seed(0)
    enc = TinyEncoder(2)
    source_head = nn.Linear(8, 3)
    strategy = get_strategy(name)(enc, nn.Linear(8, 2), SMALL.get(name, {}), source_head=source_head)
    source, target = toy_batches(2, labelled_target=3)
    source["label"] = torch.arange(8) % 3
    loss, log = strategy.training_loss(source, target, 0.5)
    loss.backward()
    assert log["target_labelled"] == 3 and "target_ce" in log
    assert source_head.weight.grad is not None and strategy.head.weight.grad is not None
    assert strategy.forward_source(source["image"]).shape == (8, 3)
    assert strategy(target["image"]).shape == (8, 2)


def test_cdan_refuses_separate_source_head():
    with pytest.raises(MedtlError, match="label set"):
        get_strategy("cdan")(TinyEncoder(2), nn.Linear(8, 2), SMALL["cdan"], source_head=nn.Linear(8, 3))


def test_cdan_uses_randomized_map_for_wide_features():
    enc = TinyEncoder(2, width=64)
    s = get_strategy("cdan")(enc, nn.Sequential(nn.Linear(64, 80)), {**SMALL["cdan"], "max_map_dim": 4096, "randomized_dim": 32})
    assert s.num_classes == 80 and s.domain_loss.multilinear.output_dim == 32


def test_bad_input_is_refused():
    s = make("dann", 2)
    source, target = toy_batches(2)
    target["label"] = torch.tensor([0, 1, 2, -1, -1, -1, -1, -1])
    with pytest.raises(MedtlError, match="source label set"):
        s.training_loss(source, target, 0.0)
    with pytest.raises(MedtlError, match="target batch"):
        s.training_loss(source, None, 0.0)
    empty = {"image": source["image"][:0], "label": source["label"][:0]}
    with pytest.raises(MedtlError, match="empty"):
        s.training_loss(empty, toy_batches(2)[1], 0.0)
    bad_source = dict(source, label=torch.full((8,), 5))
    with pytest.raises(MedtlError, match="source labels"):
        s.training_loss(bad_source, toy_batches(2)[1], 0.0)


def test_grl_coefficient_follows_progress():
    s = make("dann", 2)
    source, target = toy_batches(2)
    _, log0 = s.training_loss(source, target, 0.0)
    _, log1 = s.training_loss(source, target, 1.0)
    assert log0["grl_coeff"] == 0.0 and log1["grl_coeff"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dann_with_feature_map_discriminator(spatial_dims):
    """Encoder giving feature maps + a MONAI-factory discriminator per location + a pooling head."""
    torch.manual_seed(0)
    enc = TinyEncoder(spatial_dims, pooled=False)
    head = nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](1), nn.Flatten(), nn.Linear(8, 2))
    disc = ConvDomainDiscriminator(spatial_dims, in_channels=8, hidden=4)
    s = DANN(enc, head, discriminator=disc)
    source, target = toy_batches(spatial_dims)
    loss, log = s.training_loss(source, target, 0.3)
    loss.backward()
    assert disc.body[0].weight.grad is not None and 0.0 <= log["domain_acc"] <= 1.0


def test_param_groups_scale_encoder_lr():
    s = get_strategy("coral")(TinyEncoder(2), nn.Linear(8, 2), {"lr": 0.1, "encoder_lr_mult": 0.1})
    groups = s.param_groups()
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.1])
    assert sum(len(g["params"]) for g in groups) == len(list(s.parameters()))


@pytest.mark.parametrize(
    "name,lift_kind",
    [("dann", "2d"), ("dann", "2.5d"), ("dann", "i3d"), ("dann", "3d"), ("cdan_e", "2d"), ("coral", "3d")],
)
def test_project_encoders_and_heads(name, lift_kind):
    """The project's own encoders (2D, 2.5D slices, I3D-inflated, native 3D) with a binary Head."""
    from medtl.models import build_encoder, build_head, lift

    torch.manual_seed(0)
    if lift_kind == "3d":
        enc = build_encoder("resnet10", spatial_dims=3)
    else:
        enc = build_encoder("resnet10", spatial_dims=2)
        if lift_kind != "2d":
            enc = lift(enc, lift_kind)
    shape = (1, 16, 16) if lift_kind == "2d" else (1, 4, 16, 16)
    strategy = get_strategy(name)(enc, build_head(enc.out_features, "binary"), SMALL.get(name, {}))
    source = {"image": torch.randn(3, *shape), "label": torch.tensor([0, 1, 1])}
    target = {"image": torch.randn(3, *shape) + 1.0}
    loss, log = strategy.training_loss(source, target, 0.5)
    loss.backward()
    assert torch.isfinite(loss) and "align" in log
    assert any(p.grad is not None for p in strategy.encoder.parameters())
