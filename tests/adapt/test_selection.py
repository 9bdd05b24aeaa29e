import numpy as np
import pytest

from medtl.adapt.selection import (
    density_ratio,
    dev_risk,
    information_maximization,
    prediction_entropy,
    soft_neighborhood_density,
    source_accuracy,
)
from medtl.errors import MedtlError


def test_simple_selectors_against_formulas():
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 0, 0])
    assert source_accuracy(p, y) == pytest.approx(2 / 3)
    h = -(p * np.log(p)).sum(1)
    assert prediction_entropy(p) == pytest.approx(h.mean())
    pm = p.mean(0)
    assert information_maximization(p) == pytest.approx(-(pm * np.log(pm)).sum() - h.mean())


def test_snd_against_loop_and_cluster_preference():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=6)
    z = p / np.linalg.norm(p, axis=1, keepdims=True)
    t = 0.05
    ents = []
    for i in range(6):
        sims = np.array([z[i] @ z[j] / t for j in range(6) if j != i])
        q = np.exp(sims) / np.exp(sims).sum()
        ents.append(-(q * np.log(q)).sum())
    assert soft_neighborhood_density(p) == pytest.approx(np.mean(ents))
    clustered = np.array([[0.95, 0.05]] * 5 + [[0.05, 0.95]] * 5)
    scattered = np.stack([np.linspace(0.05, 0.95, 10), 1 - np.linspace(0.05, 0.95, 10)], 1)
    assert soft_neighborhood_density(clustered) > soft_neighborhood_density(scattered)


def test_dev_risk_control_variate():
    losses = np.array([0.2, 0.5, 1.0, 0.1])
    assert dev_risk(losses, np.ones(4)) == pytest.approx(losses.mean())  # no shift: plain mean
    w = np.array([0.5, 1.5, 1.2, 0.8])
    wl = w * losses
    eta = -np.cov(wl, w)[0, 1] / np.var(w, ddof=1)
    assert dev_risk(losses, w) == pytest.approx(wl.mean() + eta * w.mean() - eta)


def test_density_ratio_upweights_target_like_rows():
    rng = np.random.default_rng(1)
    src = np.r_[rng.normal(0, 1, size=(40, 2)), rng.normal(3, 1, size=(40, 2))]
    tgt = rng.normal(3, 1, size=(60, 2))
    w = density_ratio(src, tgt)
    assert w[40:].mean() > 5 * w[:40].mean()


def test_density_ratio_matches_the_true_ratio_and_averages_one_over_the_source():
    """The weights' mean over the source estimates E_s[p_t/p_s] = 1. At a fixed C=1, two draws of one
    distribution in 512 dimensions got weights averaging 140 (max 4856): DEV's control variate then ranked
    checkpoints by eta alone. The chosen regularisation keeps them near 1."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        same = density_ratio(rng.normal(size=(50, 512)), rng.normal(size=(177, 512)))
        assert 0.7 < same.mean() < 1.5 and same.max() < 10  # seed 0: 1.34, 6.6 (a C beat the base rate by chance)
    # source N(0, 1), target N(1, 1): the true ratio is exp(x - 1/2)
    rng = np.random.default_rng(0)
    xs, xt = rng.normal(0, 1, size=(400, 1)), rng.normal(1, 1, size=(400, 1))
    w, true = density_ratio(xs, xt), np.exp(xs[:, 0] - 0.5)
    assert np.corrcoef(np.log(w), np.log(true))[0, 1] > 0.99
    assert abs(np.median(w / true) - 1) < 0.2 and 0.8 < w.mean() < 1.25


def test_collapsed_predictions_get_the_maximal_snd():
    collapsed = np.full((10, 2), 0.5)  # the documented failure mode: one point = maximal SND
    assert soft_neighborhood_density(collapsed) == pytest.approx(np.log(9))


def test_bad_input():
    with pytest.raises(MedtlError, match="probabilit"):
        prediction_entropy(np.array([[2.0, 0.5]]))
    with pytest.raises(MedtlError, match="0..1"):
        source_accuracy(np.eye(2), np.array([0, 2]))
