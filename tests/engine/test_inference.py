"""The inference core (medtl.engine.inference): its outputs equal a plain loop's, and it leaves the model as it was."""

import pytest
import torch

from medtl.engine.inference import OUTPUTS, Outputs, forward_batch, precision_dtype, run_model
from medtl.errors import MedtlError
from medtl.models import Head, build_encoder
from medtl.models.checkpoint import Model


def _batches(n=7, batch=3, labelled=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 16, 16, generator=g)
    out = []
    for i in range(0, n, batch):
        b = {"image": x[i:i + batch], "case_id": [f"c{j}" for j in range(i, min(n, i + batch))]}
        if labelled:
            b["label"] = torch.arange(i, min(n, i + batch)) % 2
        out.append(b)
    return out


def _model():
    torch.manual_seed(0)
    enc = build_encoder("resnet10")
    return Model(enc, Head(enc.out_features, "binary"))


def test_outputs_equal_a_plain_loop():
    model, batches = _model(), _batches()
    model.eval()
    with torch.no_grad():
        feats = torch.cat([model.encoder(b["image"]) for b in batches])
        logits = torch.cat([model.head(model.encoder(b["image"])) for b in batches])
    model.train()
    out = run_model(model, batches, ("features", "logits", "probs"))
    assert torch.equal(out.cat("features"), feats)
    assert torch.equal(out.cat("logits"), logits)
    assert torch.equal(out.cat("probs"), logits.softmax(1))
    assert out.cat("labels").tolist() == [i % 2 for i in range(7)]
    assert out.fields["case_id"] == [f"c{i}" for i in range(7)]
    assert out.n_batches == 3
    # logits alone: the model's own forward, the same numbers
    assert torch.equal(run_model(model, batches).cat("logits"), logits)
    # an encoder alone gives its features
    assert torch.equal(run_model(model.encoder, batches, ("features",)).cat("features"), feats)


def test_loss_terms_give_the_mean_validation_loss():
    model, batches = _model(), _batches()
    out = run_model(model, batches, ("loss", "logits"))
    logits, labels = out.cat("logits"), out.cat("labels")
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert len(out.loss_terms) == 3 and out.n_loss == 7
    assert sum(out.loss_terms) / out.n_loss == pytest.approx(expected, rel=1e-5)
    # no labels: no loss, logits still come back
    unlabelled = run_model(model, _batches(labelled=False), ("loss", "logits"))
    assert unlabelled.loss_terms == [] and unlabelled.cat("logits").shape == (7, 2)
    assert unlabelled.cat("labels") is None


def test_modes_device_and_layout_are_restored():
    model = _model()
    model.train()
    model.encoder.bn1.eval()  # a frozen part inside a training model stays frozen
    modes = {name: m.training for name, m in model.named_modules()}
    plain = run_model(model, _batches(), ("features",) + ("logits",))
    fast = run_model(model, _batches(), ("features", "logits"), channels_last=True)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(p.is_contiguous() for p in model.parameters())
    torch.testing.assert_close(fast.cat("features"), plain.cat("features"), rtol=1e-4, atol=1e-5)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_channels_last_weights_have_explicit_strides():
    """Weights whose shape makes the layout ambiguous (the one-channel stem, 1x1 shortcuts) get channels-last
    strides too: ``contiguous(memory_format=...)`` leaves them as they are, and oneDNN then runs the whole
    stem in the plain layout (measured 1.6x slower per bf16 training step)."""
    from medtl.engine.inference import _placed, to_channels_last

    model = _model()
    stem, shortcut = model.encoder.conv1.weight, model.encoder.layer2[0].downsample[0].weight
    assert stem.shape[1] == 1 and shortcut.shape[2:] == (1, 1)
    plain_strides = {n: p.stride() for n, p in model.named_parameters()}
    with _placed(model, torch.device("cpu"), channels_last=True):
        for p in model.parameters():
            if p.dim() == 4:
                assert p.stride() == torch.empty_like(p, memory_format=torch.channels_last).stride()
        assert stem.stride() == (49, 1, 7, 1) and shortcut.stride()[2:] == (64, 64)
    assert {n: p.stride() for n, p in model.named_parameters()} == plain_strides  # restored exactly
    changed = to_channels_last(model)
    assert any(p is stem for p in changed) and any(p is shortcut for p in changed)
    assert to_channels_last(model) == []  # already channels-last: nothing to change


def test_autocast_follows_the_precision_policy():
    cpu = torch.device("cpu")
    assert precision_dtype("auto", cpu) is None and precision_dtype("off", cpu) is None
    assert precision_dtype("bf16", cpu) is torch.bfloat16 and precision_dtype("fp16", cpu) is torch.float16
    with pytest.raises(MedtlError, match="unknown precision"):
        precision_dtype("fp8", cpu)
    model = _model()
    full = run_model(model, _batches()).cat("logits")
    half = run_model(model, _batches(), amp_dtype=torch.bfloat16).cat("logits")
    assert half.dtype == torch.float32  # outputs are float32 whatever the compute precision
    # autocast runs in channels-last memory unless told otherwise; the layout changes no number by much
    contiguous = run_model(model, _batches(), amp_dtype=torch.bfloat16, channels_last=False).cat("logits")
    torch.testing.assert_close(half, contiguous, rtol=0.05, atol=0.05)
    assert all(p.is_contiguous() for p in model.parameters())  # the weights' layout is restored
    assert not torch.equal(half, full)
    torch.testing.assert_close(half, full, rtol=0.1, atol=0.1)


def test_forward_batch_and_errors():
    model = _model().eval()
    batch = _batches()[0]
    out = forward_batch(model, {"image": batch["image"]}, ("probs",))
    assert out["n"] == 3 and set(out) == {"n", "probs"}
    with torch.no_grad():
        assert torch.equal(out["probs"], model(batch["image"]).softmax(1))
    with pytest.raises(MedtlError, match="unknown inference output"):
        forward_batch(model, batch, ("embedding",))
    with pytest.raises(MedtlError, match=r"expected \(B, F\)"):
        run_model(torch.nn.Identity(), _batches(), ("features",))
    with pytest.raises(MedtlError, match="batches of dicts"):
        run_model(model, [torch.zeros(1, 1, 16, 16)])
    assert set(OUTPUTS) == {"features", "logits", "probs", "loss"}


def test_cat_needs_every_batch():
    out = Outputs()
    out.add({"label": torch.tensor([1])}, {"n": 1})
    out.add({}, {"n": 1})
    assert out.cat("labels") is None and len(out.labels) == 1
