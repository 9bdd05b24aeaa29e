import math

import numpy as np
import pytest
import torch
from torch import nn

from medtl.adapt.grl import GradientReversalLayer
from medtl.adapt.losses import (
    ConditionalDomainAdversarialLoss,
    CORALLoss,
    DomainAdversarialLoss,
    MinimumClassConfusionLoss,
    MultiLinearMap,
    MultipleKernelMMDLoss,
    RandomizedMultiLinearMap,
    conditioning_map,
    entropy_weights,
    mmd2,
)
from medtl.adapt.discriminators import DomainDiscriminator
from medtl.errors import MedtlError


def numpy_mmd2(x, y, multipliers, base=None, unbiased=False):
    """Direct, loop-based computation of the same estimator."""
    z = np.concatenate([x, y]).astype(np.float64)
    n, m, t = len(x), len(y), len(x) + len(y)
    d = np.array([[np.sum((z[i] - z[j]) ** 2) for j in range(t)] for i in range(t)])
    s = d.sum() / (t * (t - 1)) if base is None else base
    k = np.mean([np.exp(-d / (mult * s)) for mult in multipliers], axis=0)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    if unbiased:
        exx = sum(kxx[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        eyy = sum(kyy[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    else:
        exx, eyy = kxx.mean(), kyy.mean()
    return exx + eyy - 2 * kxy.mean()


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("base", [None, 3.0])
def test_mmd_equals_numpy(unbiased, base):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1.0, size=(5, 3))
    mults = (0.5, 1.0, 2.0)
    got = mmd2(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64), mults, base, unbiased)
    assert float(got) == pytest.approx(numpy_mmd2(x, y, mults, base, unbiased), rel=1e-6, abs=1e-9)


def test_mmd_near_zero_same_distribution_and_grows_with_shift():
    torch.manual_seed(0)
    loss = MultipleKernelMMDLoss(unbiased=True)
    x = torch.randn(200, 4)
    same = loss(x, torch.randn(200, 4))
    assert abs(float(same)) < 0.01
    values = [float(loss(x, torch.randn(200, 4) + shift)) for shift in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert values == sorted(values), values
    assert values[-1] > 20 * abs(values[0])


def test_mmd_refuses_width_mismatch_and_empty():
    with pytest.raises(MedtlError, match="width"):
        mmd2(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(MedtlError, match="row"):
        mmd2(torch.randn(0, 3), torch.randn(4, 3))


def test_coral_equals_numpy_formula():
    rng = np.random.default_rng(1)
    xs, xt = rng.normal(size=(9, 4)), rng.normal(size=(6, 4)) * 2 + 1
    cs, ct = np.cov(xs, rowvar=False), np.cov(xt, rowvar=False)
    expected = np.sum((cs - ct) ** 2) / (4 * 4**2)
    got = CORALLoss()(torch.tensor(xs), torch.tensor(xt))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(CORALLoss()(torch.tensor(xs), torch.tensor(xs))) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(MedtlError):
        CORALLoss()(torch.randn(1, 4), torch.randn(5, 4))


class _Const(nn.Module):
    def forward(self, x):
        return x.sum(1, keepdim=True) * 0.0


def test_domain_adversarial_loss_value_and_reversed_gradient():
    torch.manual_seed(0)
    assert float(DomainAdversarialLoss(_Const())(torch.randn(3, 2), torch.randn(5, 2))) == pytest.approx(math.log(2))
    disc = DomainDiscriminator(3, hidden=4, dropout=0.0)
    f_s, f_t = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    grl = GradientReversalLayer(max_coeff=0.8, schedule=False)
    DomainAdversarialLoss(disc, grl)(f_s, f_t).backward()
    g_rev = f_s.grad.clone()
    f_s.grad = None
    DomainAdversarialLoss(disc, GradientReversalLayer(max_coeff=-1.0, schedule=False))(f_s, f_t).backward()
    torch.testing.assert_close(g_rev, -0.8 * f_s.grad)


def test_multilinear_maps():
    rng = np.random.default_rng(2)
    f, g = rng.normal(size=(3, 4)), rng.random(size=(3, 2))
    out = MultiLinearMap()(torch.tensor(f), torch.tensor(g)).numpy()
    np.testing.assert_allclose(out, np.einsum("bk,bf->bkf", g, f).reshape(3, -1))
    rm = RandomizedMultiLinearMap(4, 2, output_dim=16).double()
    out = rm(torch.tensor(f), torch.tensor(g)).numpy()
    ref = (f @ rm.r_f.numpy()) * (g @ rm.r_g.numpy()) / 4.0
    np.testing.assert_allclose(out, ref, rtol=1e-10)
    assert {"r_f", "r_g"} <= set(rm.state_dict())
    assert isinstance(conditioning_map(10, 3)[0], MultiLinearMap)
    big, dim = conditioning_map(2048, 4, randomized_dim=32)
    assert isinstance(big, RandomizedMultiLinearMap) and dim == 32


def test_entropy_weights_favour_confident_rows():
    p = torch.tensor([[0.98, 0.02], [0.5, 0.5], [0.7, 0.3]])
    w = entropy_weights(p)
    assert float(w.sum()) == pytest.approx(3.0)
    assert w[0] > w[2] > w[1]


@pytest.mark.parametrize("entropy_conditioning", [False, True])
def test_cdan_loss_runs_and_refuses_label_mismatch(entropy_conditioning):
    torch.manual_seed(0)
    loss = ConditionalDomainAdversarialLoss(
        DomainDiscriminator(6, hidden=4), MultiLinearMap(), entropy_conditioning=entropy_conditioning
    )
    f_s, f_t = torch.randn(4, 3, requires_grad=True), torch.randn(5, 3)
    value = loss(torch.randn(4, 2), f_s, torch.randn(5, 2), f_t)
    value.backward()
    assert f_s.grad is not None and torch.isfinite(value)
    with pytest.raises(MedtlError, match="one label set"):
        loss(torch.randn(4, 2), f_s, torch.randn(5, 3), f_t)


def test_mcc_equals_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 3)) * 2
    t = 2.5
    p = np.exp(logits / t)
    p /= p.sum(1, keepdims=True)
    h = -(p * np.log(p)).sum(1)
    w = 1 + np.exp(-h)
    w = 6 * w / w.sum()
    c = (p * w[:, None]).T @ p
    c /= c.sum(1, keepdims=True)
    expected = (c.sum() - np.trace(c)) / 3
    got = MinimumClassConfusionLoss(t)(torch.tensor(logits))
    assert float(got) == pytest.approx(expected, rel=1e-6)
