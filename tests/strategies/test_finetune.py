"""Each fine-tuning strategy's defining behaviour: what moves, at which learning rate, what is penalised."""

import pytest
import torch

from medtl.errors import MedtlError
from medtl.models import Head, build_encoder, lift
from medtl.strategies.registry import STRATEGIES, default_hparams, get_strategy

NAMES = ["scratch", "full", "feature_extraction", "gradual_unfreeze", "discriminative_lr", "lp_ft", "l2sp"]


def _batch(n=4, size=32):
    return {"image": torch.randn(n, 1, size, size), "label": torch.tensor([0, 1] * (n // 2))}


def _make(name, hparams=None, encoder=None):
    enc = encoder if encoder is not None else build_encoder("resnet10")
    return get_strategy(name)(enc, Head(enc.out_features, "binary"), hparams)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def _step(strategy, epoch=0, total=10, batch=None):
    """One epoch start + one optimiser step, as the trainer does it."""
    strategy.on_epoch_start(epoch, total)
    opt = torch.optim.SGD([{**g, "params": list(g["params"])} for g in strategy.param_groups()], lr=0.1)
    strategy.train()
    loss, parts = strategy.training_loss(batch or _batch(), None, 0.0)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return opt, parts


def test_registry_has_every_strategy_and_refuses_unknown_names():
    get_strategy("full")
    assert set(NAMES) <= set(STRATEGIES)
    with pytest.raises(MedtlError, match="unknown strategy"):
        get_strategy("fine_tune_everything")
    with pytest.raises(MedtlError, match="unknown hyper-parameter"):
        _make("full", {"learning_rate": 0.1})
    assert default_hparams("l2sp")["weight_decay"] == 0.0


def test_full_moves_every_parameter():
    s = _make("full")
    before = _snapshot(s)
    _step(s)
    params = {n for n, _ in s.named_parameters()}
    assert params <= _changed(before, s)


def test_scratch_reinitialises_the_encoder():
    enc = build_encoder("resnet10")
    with torch.no_grad():
        for p in enc.parameters():
            p.fill_(0.5)  # stands for pretrained weights
    s = _make("scratch", encoder=enc)
    assert not torch.equal(s.encoder.conv1.weight, torch.full_like(s.encoder.conv1.weight, 0.5))
    assert all(p.requires_grad for p in s.parameters())


def test_feature_extraction_moves_only_the_head():
    s = _make("feature_extraction")
    assert [g["name"] for g in s.param_groups()] == ["head"]
    before = _snapshot(s)
    _step(s)
    changed = _changed(before, s)
    assert changed == {"head.fc.weight", "head.fc.bias"}  # encoder weights and BN statistics untouched
    assert not s.encoder.training and s.head.training


def test_gradual_unfreeze_thaws_from_the_top():
    s = _make("gradual_unfreeze")
    names = ["conv1", "layer1", "layer2", "layer3", "layer4"]

    def moved(epoch):
        s2 = _make("gradual_unfreeze")
        s2.load_state_dict(s.state_dict())
        before = _snapshot(s2)
        _step(s2, epoch)
        ch = _changed(before, s2)
        return [n for n in names if any(k.startswith(f"encoder.{n}.") for k in ch)], any(k.startswith("head.") for k in ch)

    assert moved(0) == ([], True)
    assert moved(1) == (["layer4"], True)
    assert moved(2) == (["layer3", "layer4"], True)
    assert moved(7) == (names, True)
    slow = _make("gradual_unfreeze", {"epochs_per_stage": 2})
    slow.on_epoch_start(3, 10)
    assert slow.thawed == 1


def test_discriminative_learning_rates():
    s = _make("discriminative_lr", {"lr": 0.1, "decay": 0.5})
    groups = s.param_groups()
    assert [g["name"] for g in groups] == [f"encoder.stage{i}" for i in range(5)] + ["head"]
    assert [g["lr"] for g in groups] == pytest.approx([0.1 * 0.5**5, 0.1 * 0.5**4, 0.1 * 0.5**3, 0.1 * 0.25, 0.05, 0.1])
    opt, _ = _step(s)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]  # applied by the optimiser


def test_lp_ft_probes_then_fine_tunes():
    s = _make("lp_ft", {"lr": 1e-4, "lp_lr": 1e-2, "lp_fraction": 0.5})
    before = _snapshot(s)
    opt, _ = _step(s, epoch=0, total=4)
    assert s.phase == "lp" and all(not k.startswith("encoder.") for k in _changed(before, s))
    assert [g["lr"] for g in s.param_groups()] == [1e-4, 1e-2]
    before = _snapshot(s)
    _step(s, epoch=2, total=4)
    assert s.phase == "ft" and any(k.startswith("encoder.layer1") for k in _changed(before, s))
    assert [g["lr"] for g in s.param_groups()] == [1e-4, 1e-4]
    assert _make("lp_ft", {"lp_epochs": 3}).lp_epochs(10) == 3


def test_l2sp_penalty_is_zero_at_start_and_pulls_toward_the_start():
    s = _make("l2sp", {"alpha": 1.0, "beta": 0.0})
    sp, _ = s.penalty()
    assert sp.item() == 0.0
    _, parts = _step(s)
    assert parts["l2sp"] == 0.0 and parts["head_l2"] > 0
    sp_after, _ = s.penalty()
    assert sp_after.item() > 0
    # The penalty's gradient points back to the reference weights.
    s.zero_grad()
    (0.5 * s.penalty()[0]).backward()
    w, w0 = s.encoder.conv1.weight, s.reference.get("conv1.weight")
    torch.testing.assert_close(w.grad, (w - w0).detach())
    assert "reference.conv1__weight" in s.state_dict()  # kept for resume


def test_freeze_norm_keeps_running_statistics():
    s = _make("full", {"freeze_norm": True})
    before = _snapshot(s)
    _step(s)
    changed = _changed(before, s)
    assert not any("running_" in k or "num_batches" in k for k in changed)
    assert "encoder.conv1.weight" in changed and "encoder.bn1.weight" in changed  # affine still trains
    assert not s.encoder.bn1.training
    s2 = _make("full")
    before = _snapshot(s2)
    _step(s2)
    assert "encoder.bn1.running_mean" in _changed(before, s2)


@pytest.mark.parametrize("method, options", [("i3d", {}), ("acs", {}), ("2.5d", {"aggregate": "attention"})])
def test_strategies_compose_with_lifts(method, options):
    enc = lift(build_encoder("resnet10"), method, **options)
    s = _make("gradual_unfreeze", encoder=enc)
    assert len(s.stages()) == 5
    before = _snapshot(s)
    batch = {"image": torch.randn(2, 1, 8, 16, 16), "label": torch.tensor([0, 1])}
    _step(s, epoch=1, batch=batch)
    ch = _changed(before, s)
    assert any(k.startswith("encoder.") and "layer4" in k for k in ch)
    assert not any("layer3" in k for k in ch)
    if method == "2.5d":  # the attention pool learns with the top stage
        assert any("pool.score" in k for k in ch)


@pytest.mark.parametrize("name", NAMES)
def test_every_strategy_trains_one_step(name):
    s = _make(name)
    _, parts = _step(s)
    assert parts["task"] > 0
    s.eval()
    with torch.no_grad():
        assert s(_batch()["image"]).shape == (4, 2)


def test_every_strategy_moves_to_a_device_and_trains_through_fit(tmp_path):
    """Regression: a strategy method named like an nn.Module internal (e.g. ``_apply``) broke ``.to()``."""
    import torch
    from torch.utils.data import DataLoader

    from medtl.engine import fit
    from medtl.models import Head, build_encoder

    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(1, 16, 16, generator=g), "label": torch.tensor(i % 2)} for i in range(8)]
    for name in ("scratch", "full", "feature_extraction", "gradual_unfreeze", "discriminative_lr", "lp_ft", "l2sp"):
        enc = build_encoder("resnet10", spatial_dims=2)
        strategy = get_strategy(name)(enc, Head(enc.out_features, "binary"))
        strategy.to("cpu")
        result = fit(strategy, DataLoader(data, batch_size=4), run_dir=tmp_path / name, epochs=2, progress=False)
        assert len(result.history) == 2, name
