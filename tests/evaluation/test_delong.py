"""DeLong's test against a direct O(n^2) computation of the structural components."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medtl.errors import MedtlError
from medtl.evaluation.delong import delong_covariance, delong_macro_test, delong_test


def _direct(y, a, b):
    """Textbook DeLong: psi over all positive-negative pairs, sample covariances, normal p-value."""
    y = np.asarray(y).astype(bool)
    comps = []
    for s in (a, b):
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        comps.append((psi.mean(axis=1), psi.mean(axis=0)))
    v10 = np.array([c[0] for c in comps])
    v01 = np.array([c[1] for c in comps])
    m, n = v10.shape[1], v01.shape[1]
    S = np.cov(v10) / m + np.cov(v01) / n
    auc = v10.mean(axis=1)
    var = S[0, 0] + S[1, 1] - 2 * S[0, 1]
    z = (auc[0] - auc[1]) / math.sqrt(var)
    return auc, S, z, math.erfc(abs(z) / math.sqrt(2))


@pytest.mark.parametrize("seed", range(4))
def test_delong_matches_direct_computation(seed):
    rng = np.random.default_rng(seed)
    n = 150
    y = rng.integers(0, 2, n)
    shared = rng.normal(size=n)
    a = np.round(1.0 * y + shared + rng.normal(0, 0.8, n), 1)  # rounded: ties included
    b = 0.6 * y + shared + rng.normal(0, 0.8, n)
    r = delong_test(y, a, b)
    auc, S, z, p = _direct(y, a, b)
    assert (r.auc_a, r.auc_b) == pytest.approx(tuple(auc), abs=1e-12)
    assert r.auc_a == pytest.approx(roc_auc_score(y, a))
    assert (r.var_a, r.var_b, r.covariance) == pytest.approx((S[0, 0], S[1, 1], S[0, 1]), rel=1e-10)
    assert r.z == pytest.approx(z, rel=1e-10)
    assert r.p_value == pytest.approx(p, rel=1e-8)
    _, cov = delong_covariance(y, np.vstack([a, b]))
    np.testing.assert_allclose(cov, S, rtol=1e-10)


def test_identical_scores_have_no_p_value_and_single_class_raises():
    y = np.array([0, 1, 0, 1, 1])
    s = np.array([0.1, 0.8, 0.3, 0.6, 0.9])
    r = delong_test(y, s, s)
    assert r.difference == 0 and r.p_value is None and r.note
    with pytest.raises(MedtlError, match="both"):
        delong_test(np.ones(5), s, s[::-1])


def test_delong_rejects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 400)
    good = y * 2.0 + rng.normal(size=400)
    bad = y * 0.3 + rng.normal(size=400)
    assert delong_test(y, good, bad).p_value < 1e-6
    same = y * 1.0 + rng.normal(size=400)
    same2 = same + rng.normal(0, 0.05, size=400)
    assert delong_test(y, same, same2).p_value > 0.01


def test_delong_refuses_nan_scores_instead_of_calling_them_identical():
    y = np.array([0, 1, 0, 1, 1, 0])
    a = np.array([0.1, 0.8, 0.3, 0.6, 0.9, 0.2])
    b = a.copy()
    b[2] = np.nan
    with pytest.raises(MedtlError, match=r"score_b: 1 of 6 values are NaN or infinite \(at index 2\)"):
        delong_test(y, a, b)
    with pytest.raises(MedtlError, match="score_a: .*NaN"):
        delong_test(y, b, a)
    with pytest.raises(MedtlError, match="y_true: binary labels"):
        delong_test(np.where(y == 1, 1, -1), a, a[::-1])
    with pytest.raises(MedtlError, match="score_b: has 5 cases"):
        delong_test(y, a, a[:5])


def test_delong_says_not_computable_when_a_class_has_one_case():
    y = np.array([0, 0, 0, 0, 1])
    a = np.array([0.1, 0.2, 0.3, 0.4, 0.9])
    b = np.array([0.4, 0.3, 0.2, 0.95, 0.5])
    r = delong_test(y, a, b)
    assert r.p_value is None and r.note.startswith("not computable") and "1 and 4" in r.note
    assert r.difference == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    # Identical scorings: the AUROCs are equal, nothing to test (and the note says that, not "not computable")
    r = delong_test(np.array([0, 1, 0, 1, 1]), a, a)
    assert r.p_value is None and "alike" in r.note


def _softmax_scores(rng, y, k, signal):
    logits = rng.normal(size=(len(y), k))
    logits[np.arange(len(y)), y] += signal
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macro_delong_with_two_classes_is_delong(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 80)
    a, b = rng.random(80) + 0.5 * y, rng.random(80) + 0.2 * y
    binary = delong_test(y == 1, a, b)
    macro = delong_macro_test(y, np.c_[1 - a / 2, a / 2], np.c_[1 - b / 2, b / 2])
    for field in ("auc_a", "auc_b", "var_a", "var_b", "covariance", "p_value"):
        assert getattr(macro, field) == pytest.approx(getattr(binary, field), rel=1e-10)


def test_macro_delong_aucs_are_sklearns_and_its_se_matches_a_paired_bootstrap():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 400)
    pa, pb = _softmax_scores(rng, y, 4, 1.2), _softmax_scores(rng, y, 4, 0.9)
    r = delong_macro_test(y, pa, pb)
    assert r.auc_a == pytest.approx(roc_auc_score(y, pa, multi_class="ovr", average="macro"), abs=1e-12)
    assert r.auc_b == pytest.approx(roc_auc_score(y, pb, multi_class="ovr", average="macro"), abs=1e-12)
    def macro(yy, p):  # sklearn's one-vs-rest macro mean, class by class (its multiclass path is slow)
        return np.mean([roc_auc_score(yy == c, p[:, c]) for c in range(p.shape[1])])

    diffs = []
    for _ in range(600):  # the same cases resampled for both scorings
        i = rng.integers(0, len(y), len(y))
        diffs.append(macro(y[i], pa[i]) - macro(y[i], pb[i]))
    assert r.se == pytest.approx(np.std(diffs), rel=0.15)


def test_macro_delong_holds_its_size_under_the_null_and_finds_a_real_difference():
    rng = np.random.default_rng(11)
    null_p, alt_p = [], []
    for _ in range(300):
        y = rng.integers(0, 4, 120)
        shared = _softmax_scores(rng, y, 4, 1.0)  # two equally good, correlated scorings
        pa = shared + 0.1 * rng.random(shared.shape)
        pb = shared + 0.1 * rng.random(shared.shape)
        null_p.append(delong_macro_test(y, pa, pb).p_value)
        alt_p.append(delong_macro_test(y, _softmax_scores(rng, y, 4, 2.0), _softmax_scores(rng, y, 4, 0.8)).p_value)
    assert 0.02 <= np.mean(np.array(null_p) < 0.05) <= 0.09
    assert np.mean(np.array(alt_p) < 0.05) > 0.9


def test_macro_delong_refuses_bad_input_and_explains_tiny_classes():
    y = np.array([0, 0, 1, 1, 2])
    p = np.full((5, 3), 1 / 3)
    with pytest.raises(MedtlError, match="class indices"):
        delong_macro_test(y + 1, p, p)
    with pytest.raises(MedtlError, match="every class"):
        delong_macro_test(np.array([0, 0, 1, 1, 1]), p, p)
    rng = np.random.default_rng(0)
    r = delong_macro_test(y, rng.random((5, 3)), rng.random((5, 3)))
    assert r.p_value is None and "two cases of every class" in r.note


def test_holm_adjusts_every_tested_comparison_step_down():
    """Holm (1979) by hand, m = 4 tested: sorted p 0.01, 0.03, 0.04, 0.6 times 4, 3, 2, 1 -> 0.04, 0.09,
    0.08, 0.6 -> running maximum 0.04, 0.09, 0.09, 0.6; the untested pair gets none."""
    from medtl.evaluation.evaluate import holm

    comps = holm([{"p_value": 0.01}, {"p_value": 0.04}, {"p_value": None}, {"p_value": 0.03}, {"p_value": 0.6}])
    assert [c.get("p_holm") for c in comps] == [pytest.approx(0.04), pytest.approx(0.09), None, pytest.approx(0.09),
                                                pytest.approx(0.6)]


def _obuchowski(y, a, b, clusters):
    """Obuchowski (1997) written out independently: per cluster, the sums of the positives' V10 and the
    negatives' V01 (pairwise comparisons, ties 1/2); S10 over the I10 clusters holding a positive, S01 over
    the I01 holding a negative, S11 over all I clusters; Var = S10/m + S01/n + 2 S11/(m n), for the difference."""
    y, clusters = np.asarray(y, bool), np.asarray(clusters)
    units = sorted(set(clusters.tolist()))
    m, n = y.sum(), (~y).sum()
    pos_units = [u for u in units if ((clusters == u) & y).any()]
    neg_units = [u for u in units if ((clusters == u) & ~y).any()]
    i10, i01, i = len(pos_units), len(neg_units), len(units)
    comps = []
    for s in (np.asarray(a, float), np.asarray(b, float)):
        pos, neg = s[y], s[~y]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        v10, v01 = np.zeros(len(y)), np.zeros(len(y))
        v10[y], v01[~y] = psi.mean(1), psi.mean(0)
        auc = psi.mean()
        c10 = {u: v10[(clusters == u) & y].sum() - ((clusters == u) & y).sum() * auc for u in units}
        c01 = {u: v01[(clusters == u) & ~y].sum() - ((clusters == u) & ~y).sum() * auc for u in units}
        comps.append((c10, c01))

    def s10(p, q):
        return i10 / ((i10 - 1) * m) * sum(comps[p][0][u] * comps[q][0][u] for u in pos_units)

    def s01(p, q):
        return i01 / ((i01 - 1) * n) * sum(comps[p][1][u] * comps[q][1][u] for u in neg_units)

    def s11(p, q):
        return i / (i - 1) * sum(comps[p][0][u] * comps[q][1][u] + comps[p][1][u] * comps[q][0][u]
                                 for u in units) / 2

    def cov(p, q):
        return s10(p, q) / m + s01(p, q) / n + 2 * s11(p, q) / (m * n)

    return cov(0, 0) + cov(1, 1) - 2 * cov(0, 1)


def test_clustered_delong_is_obuchowskis_and_copies_do_not_shrink_it():
    rng = np.random.default_rng(3)
    n = 60
    y = np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)]
    a, b = rng.normal(y * 1.0, 1), rng.normal(y * 0.6, 1)
    clusters = rng.integers(0, 25, n)  # 25 patients, some with several images
    r = delong_test(y, a, b, clusters=clusters)
    assert r.se ** 2 == pytest.approx(_obuchowski(y, a, b, clusters), rel=1e-10)
    assert r.n_clusters == len(set(clusters.tolist()))
    assert delong_test(y, a, b, clusters=np.arange(n)) == delong_test(y, a, b)  # one case each: DeLong's own
    # every case four times over: plain DeLong takes the copies for new cases and halves the SE;
    # clustered by the original case, the SE stays about the original's
    rep = np.repeat(np.arange(n), 4)
    plain, grouped, original = delong_test(y[rep], a[rep], b[rep]), delong_test(y[rep], a[rep], b[rep], rep), \
        delong_test(y, a, b)
    assert plain.se == pytest.approx(original.se / 2, rel=0.05)
    assert grouped.se == pytest.approx(original.se, rel=1e-9)  # Obuchowski's on copies is DeLong's on originals
    # one positive case: no variance, clusters or not; a case without a cluster is its own
    one = np.r_[True, np.zeros(20, bool)]
    lone = delong_test(one, rng.normal(size=21), rng.normal(size=21), clusters=[0] + [k // 2 for k in range(20)])
    assert lone.p_value is None and "two positive" in lone.note
    tiny = delong_macro_test(np.array([0, 1, 1, 1, 1, 2, 2, 2, 2, 2]), rng.random((10, 3)), rng.random((10, 3)),
                             clusters=[0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    assert tiny.p_value is None  # a class of one case: no variance, clustered or not
    loose = delong_test(y, a, b, clusters=[None] * (n - 2) + ["p1", "p1"])
    assert loose.n_clusters == n - 1 and loose.se == pytest.approx(original.se, rel=0.05)  # not one big cluster


@pytest.mark.parametrize("seed", [0, 1])
def test_clustered_macro_delong_is_obuchowskis_with_two_classes_and_deLongs_with_one_case_a_cluster(seed):
    """A review: with no cluster the macro test took each class as its own sample (DeLong's strata); with any
    cluster it summed every case's influence as one sample, so grouping one pair of 43 images moved the SE from
    0.0677 to 0.0701, partly by changing formula. The clustered form keeps the classes as strata: with two classes
    it is the binary test's Obuchowski (written out independently above), clusters holding both classes included;
    with every case its own cluster it is the unclustered macro test exactly."""
    import medtl.evaluation.delong as D

    rng = np.random.default_rng(seed)
    n = 70
    y = rng.integers(0, 2, n)
    a, b = rng.normal(y * 1.0, 1), rng.normal(y * 0.6, 1)
    pa, pb = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
    clusters = rng.integers(0, 30, n)  # patients with images of either class
    macro = delong_macro_test(y, np.c_[1 - pa, pa], np.c_[1 - pb, pb], clusters=clusters)
    assert macro.se ** 2 == pytest.approx(_obuchowski(y == 1, pa, pb, clusters), rel=1e-9)
    # every case its own cluster: DeLong's stratified covariance, sum over classes of n_c times the covariance of
    # the class's influences (the unclustered macro test's)
    classes = rng.integers(0, 4, 120)
    influence = rng.normal(size=(2, 120)) + classes  # class means that differ: centred within each class
    stratified = sum(np.cov(influence[:, classes == c]) * (classes == c).sum() for c in range(4))
    np.testing.assert_allclose(D._clustered_covariance(influence, classes, np.arange(120)), stratified, rtol=1e-10)


def test_a_class_within_one_cluster_is_said_to_lack_clusters_not_cases():
    """The diff review: a class of 3 images of one patient got "needs at least two cases of every class (have
    [10, 10, 3])": it has 3 cases; what it lacks is a second cluster."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(10, int), np.ones(10, int), np.full(3, 2)]
    clusters = [f"p{i}" for i in range(20)] + ["one"] * 3
    r = delong_macro_test(y, rng.dirichlet(np.ones(3), 23), rng.dirichlet(np.ones(3), 23), clusters=clusters)
    assert r.p_value is None and "each class in at least two clusters" in r.note
