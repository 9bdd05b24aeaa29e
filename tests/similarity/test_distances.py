import numpy as np
import pytest
import torch

from medtl.adapt.losses import mmd2 as torch_mmd2
from medtl.errors import MedtlError
from medtl.similarity.distances import frechet_distance, linear_cka, mmd, mmd_test, proxy_a_distance


def loop_mmd2(x, y, multipliers=(0.25, 0.5, 1.0, 2.0, 4.0)):
    """Unbiased MMD^2 written out term by term."""
    z = np.concatenate([x, y])
    t = len(z)
    d = np.array([[np.sum((z[i] - z[j]) ** 2) for j in range(t)] for i in range(t)])
    s = d.sum() / (t * (t - 1))

    def k(a, b):
        dd = np.sum((a - b) ** 2)
        return np.mean([np.exp(-dd / (m * s)) for m in multipliers])

    n, m = len(x), len(y)
    exx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    eyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    exy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return exx + eyy - 2 * exy


def test_mmd_equals_direct_numpy_and_the_torch_loss():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)), rng.normal(1.0, 2.0, size=(8, 3))
    expected = loop_mmd2(x, y)
    assert mmd(x, y) == pytest.approx(expected, rel=1e-9)
    assert float(torch_mmd2(torch.tensor(x), torch.tensor(y), unbiased=True)) == pytest.approx(expected, rel=1e-9)


def test_mmd_near_zero_for_one_distribution_and_monotone_in_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 5))
    assert abs(mmd(x, rng.normal(size=(150, 5)))) < 0.01
    y0 = rng.normal(size=(150, 5))
    values = [mmd(x, y0 + s) for s in (0.0, 0.2, 0.5, 1.0, 2.0, 4.0)]
    assert values == sorted(values), values


def test_mmd_permutation_test():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 4))
    same = mmd_test(x, rng.normal(size=(50, 4)), n_permutations=99, seed=0)
    shifted = mmd_test(x, rng.normal(size=(50, 4)) + 0.8, n_permutations=99, seed=0)
    assert same["p_value"] > 0.05
    assert shifted["p_value"] == pytest.approx(1 / 100)
    assert shifted["mmd2"] > same["mmd2"]
    assert mmd_test(x, x + 0.8, n_permutations=20, seed=3) == mmd_test(x, x + 0.8, n_permutations=20, seed=3)
    sub = mmd_test(x, x + 0.8, n_permutations=5, max_rows=20)
    assert sub["n_source"] == 20 and sub["n_target"] == 20


def test_proxy_a_distance_extremes():
    rng = np.random.default_rng(3)
    same = proxy_a_distance(rng.normal(size=(200, 4)), rng.normal(size=(150, 4)))
    assert same["pad"] < 0.3 and same["error"] > 0.4
    far = proxy_a_distance(rng.normal(size=(100, 4)), rng.normal(size=(100, 4)) + 10)
    assert far["pad"] > 1.9 and far["pad"] <= 2.0


def test_frechet_against_eigen_formula():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 3))
    y = rng.normal(size=(30, 3)) @ np.diag([1.0, 2.0, 0.5]) + 1.0
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)))
    expected = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    a, b = rng.normal(2, 3, size=(50, 1)), rng.normal(-1, 0.5, size=(60, 1))
    v1, v2 = a.var(ddof=1), b.var(ddof=1)
    assert frechet_distance(a, b) == pytest.approx((a.mean() - b.mean()) ** 2 + (np.sqrt(v1) - np.sqrt(v2)) ** 2)


def test_linear_cka_matches_hsic_and_invariances():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 6))
    n = 20
    h = np.eye(n) - 1 / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    expected = np.trace(k @ l) / np.sqrt(np.trace(k @ k) * np.trace(l @ l))
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-9)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    assert linear_cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0)
    with pytest.raises(MedtlError, match="paired"):
        linear_cka(x, y[:10])


def test_bad_input():
    rng = np.random.default_rng(6)
    with pytest.raises(MedtlError, match="width"):
        mmd(rng.normal(size=(5, 3)), rng.normal(size=(5, 4)))
    with pytest.raises(MedtlError, match="empty domain"):
        proxy_a_distance(np.zeros((0, 3)), rng.normal(size=(5, 3)))
    with pytest.raises(MedtlError, match="NaN"):
        frechet_distance(np.full((3, 2), np.nan), rng.normal(size=(5, 2)))
