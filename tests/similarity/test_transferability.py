import numpy as np
import pytest
from scipy.stats import multivariate_normal

from medtl.errors import MedtlError
from medtl.similarity.transferability import _logme_single, h_score, leep, logme


def naive_logme_fixed_point(f, y, iters):
    """LogME's fixed-point iteration written with full matrices (no SVD)."""
    n, d = f.shape
    alpha, beta = 1.0, 1.0
    sigma = np.linalg.eigvalsh(f.T @ f)
    for _ in range(iters):
        a = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a, f.T @ y)
        gamma = np.sum(beta * sigma / (alpha + beta * sigma))
        alpha, beta = gamma / (m @ m), (n - gamma) / np.sum((f @ m - y) ** 2)
    return alpha, beta


@pytest.mark.parametrize("n,d", [(30, 4), (14, 6)])
def test_logme_evidence_is_the_gaussian_marginal_likelihood(n, d):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    y = (f[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(float)  # labels related to the features
    ev, alpha, beta = _logme_single(f, y, max_iter=11, tol=0.0)  # same iterates as the naive version
    ref_alpha, ref_beta = naive_logme_fixed_point(f, y, iters=11)
    assert alpha == pytest.approx(ref_alpha, rel=1e-8) and beta == pytest.approx(ref_beta, rel=1e-8)
    cov = np.eye(n) / beta + f @ f.T / alpha
    assert ev == pytest.approx(multivariate_normal(np.zeros(n), cov).logpdf(y) / n, rel=1e-8)


def test_logme_with_fewer_cases_than_features_is_the_evidence_supremum():
    """A review: with no more images than features the iteration drove beta to the residual's 1e-12 floor (or to
    max_iter) and LogME was the evidence there, set by those constants (0.125, 0.355, 0.472 for floors 1e-9, 1e-12,
    1e-15 on one set of real features). The evidence rises with beta to a finite supremum: that is LogME."""
    rng = np.random.default_rng(0)
    n = 30
    f = np.maximum(rng.normal(size=(n, 512)), 0)  # ReLU-like features of 30 images, labels they can fit exactly
    y = (rng.random(n) < 0.5).astype(float)
    ev, alpha, beta = _logme_single(f, y)
    assert beta == np.inf
    k = f @ f.T  # reference: y ~ N(0, K / alpha + I / beta), as beta grows: N(0, K / alpha), best alpha in closed form
    best_alpha = n / (y @ np.linalg.solve(k, y))
    supremum = multivariate_normal(np.zeros(n), k / best_alpha).logpdf(y) / n
    assert ev == pytest.approx(supremum, rel=1e-8) and alpha == pytest.approx(best_alpha, rel=1e-8)
    grid = [multivariate_normal(np.zeros(n), np.eye(n) / b + k / a).logpdf(y) / n
            for a in best_alpha * np.logspace(-2, 2, 41) for b in np.logspace(-2, 12, 29)]
    assert max(grid) <= supremum + 1e-9 and max(grid) > supremum - 1e-3  # no finite pair beats it; large betas near
    # two cases with identical features and one label: the evidence grows without bound, and LogME says so
    copies = np.vstack([f, f[:1]])
    assert _logme_single(copies, np.r_[y, y[0]])[0] is None
    with pytest.raises(MedtlError, match="grows without bound"):
        logme(copies, np.r_[y, y[0]].astype(int))
    encoded = np.c_[y, rng.normal(size=(n, 2))]  # more images than features, one feature is the label (a review)
    with pytest.raises(MedtlError, match="a feature that encodes the label"):
        logme(encoded, y.astype(int))


def test_logme_averages_one_hot_columns():
    rng = np.random.default_rng(1)
    f, y = rng.normal(size=(25, 3)), np.arange(25) % 3
    onehot = np.eye(3)[y]
    expected = np.mean([_logme_single(f, onehot[:, k])[0] for k in range(3)])
    assert logme(f, y) == pytest.approx(expected)
    assert logme(f, np.array(["a", "b", "c"])[y]) == pytest.approx(expected)  # any label values


def separable_and_random(seed=2, n=60, d=8):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    good = rng.normal(size=(n, d)) * 0.3
    good[:, 0] += 3 * (2 * y - 1)
    return good, rng.normal(size=(n, d)), y


def test_scores_rank_separable_above_random():
    good, bad, y = separable_and_random()
    assert logme(good, y) > logme(bad, y)
    assert h_score(good, y) > h_score(bad, y)
    rng = np.random.default_rng(3)
    informative = np.where(y[:, None] == 1, [0.1, 0.2, 0.7], [0.7, 0.2, 0.1])
    uninformative = rng.dirichlet(np.ones(3), size=len(y))
    assert leep(informative, y) > leep(uninformative, y)


def test_leep_equals_loop_computation():
    theta = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.1, 0.3], [0.2, 0.2, 0.6]])
    y = np.array([0, 1, 1, 0, 1])
    n, z = theta.shape
    joint = np.zeros((2, z))
    for i in range(n):
        joint[y[i]] += theta[i] / n
    cond = joint / joint.sum(0)
    expected = np.mean([np.log(sum(cond[y[i], k] * theta[i, k] for k in range(z))) for i in range(n)])
    assert leep(theta, y) == pytest.approx(expected, rel=1e-12)
    assert leep(np.eye(2)[y], y) == pytest.approx(0.0, abs=1e-12)  # a perfect source-to-target map


def test_h_score_equals_direct_numpy():
    rng = np.random.default_rng(4)
    f, y = rng.normal(size=(12, 3)), np.array([0, 1, 2] * 4)
    g = np.stack([f[y == y[i]].mean(0) for i in range(12)])
    expected = np.trace(np.linalg.inv(np.cov(f, rowvar=False, bias=True)) @ np.cov(g, rowvar=False, bias=True))
    assert h_score(f, y, shrinkage=None) == pytest.approx(expected, rel=1e-8)


def test_bad_input():
    f = np.random.default_rng(5).normal(size=(6, 3))
    for fn in (logme, h_score):
        with pytest.raises(MedtlError, match="single class"):
            fn(f, np.zeros(6, int))
        with pytest.raises(MedtlError, match="one label per row"):
            fn(f, np.array([0, 1]))
    with pytest.raises(MedtlError, match="empty"):
        logme(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(MedtlError, match="softmax"):
        leep(f, np.arange(6) % 2)
    with pytest.raises(MedtlError, match="continuous"):
        h_score(f, np.linspace(0, 1, 6))


def numpy_regularised_h_score(f, y):
    """Ibrahim et al. 2022 written out: Ledoit-Wolf (2004) shrinkage from its per-case formula,
    then tr(inv((1 - a) S + a mu I) (1 - a) S_between), population covariances."""
    n, d = f.shape
    x = f - f.mean(0)
    s = x.T @ x / n
    mu = np.trace(s) / d
    delta = np.sum((s - mu * np.eye(d)) ** 2) / d
    beta = sum(np.sum((np.outer(r, r) - s) ** 2) for r in x) / n**2 / d
    a = min(beta, delta) / delta
    means = np.stack([x[y == c].mean(0) for c in np.unique(y)])
    between = sum(np.mean(y == c) * np.outer(m, m) for c, m in zip(np.unique(y), means))
    return np.trace(np.linalg.solve((1 - a) * s + a * mu * np.eye(d), (1 - a) * between)), a


@pytest.mark.parametrize("n,d,k", [(40, 60, 2), (90, 8, 3), (30, 200, 4)])
def test_default_h_score_is_the_regularised_h_score_of_ibrahim_et_al(n, d, k):
    rng = np.random.default_rng(n + d)
    y = np.arange(n) % k
    f = rng.normal(size=(n, d)) + 0.8 * np.eye(k)[y] @ rng.normal(size=(k, d))
    expected, a = numpy_regularised_h_score(f, y)
    assert 0.0 < a < 1.0  # shrinkage is active, so the (1 - a) factor is exercised
    assert h_score(f, y) == pytest.approx(expected, rel=1e-6)
    assert 0.0 <= h_score(f, y) <= k - 1


def test_h_score_stays_under_its_ceiling_and_ranks_a_strong_narrow_encoder_above_a_weak_wide_one(
        strong_and_weak_features):
    # Without (1 - a), the weak 256-d encoder scored 2.98 (above the ceiling of 1) and the strong
    # 16-d one 1.05: shrinkage a (0.98 vs 0.41) grows with width and inflated the wide encoder.
    _, y, strong, weak = strong_and_weak_features
    assert 0.0 <= h_score(weak, y) < h_score(strong, y) <= 1.0
    assert h_score(strong, y) == pytest.approx(numpy_regularised_h_score(strong, y)[0], rel=1e-6)
    assert h_score(weak, y) == pytest.approx(numpy_regularised_h_score(weak, y)[0], rel=1e-6)


def test_h_score_ceiling_for_wide_features():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 20)
    f = rng.normal(size=(40, 60)) + 0.8 * y[:, None] * (np.arange(60) < 5)
    # 40 cases, 60 features: the plain estimator is pinned at its ceiling, the regularised one is not
    noise = rng.normal(size=(40, 60))
    assert h_score(f, y, shrinkage=None) == pytest.approx(1.0) == pytest.approx(h_score(noise, y, shrinkage=None))
    assert 1.0 > h_score(f, y) > h_score(noise, y) >= 0.0
    with pytest.raises(MedtlError, match="shrinkage"):
        h_score(f, y, shrinkage="oas")
